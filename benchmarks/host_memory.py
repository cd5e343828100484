"""Benchmark: a training stage's peak host memory, against the size of its pixel cache.

Writes a Pets-sized pixel cache (7,390 photos at `cache.size` 448: 4.4 GB), then, in a fresh
process, trains the frozen resnet34 at size 224, bs 64 for some batches from it, the way the
stage reads it (positioned reads into one batch, never a memory map; on a GPU the cache is also
uploaded once, through one pinned staging buffer), and reports that process's peak resident
memory (target: under 4 GB whatever the cache's size).

    python benchmarks/host_memory.py [--batches 20]
    python benchmarks/host_memory.py --quick       # CI
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from common import report  # benchmarks/common.py

TARGET_GB = 4.0


def peak_resident_gb() -> float:
    """This process's peak resident memory: VmHWM (ru_maxrss would include the parent's peak
    at fork, which Linux carries across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def train(cache_folder: Path, batches: int, size: int, bs: int, arch: str) -> dict:
    """Train from the cache for `batches` batches; return this process's peak memory."""
    import numpy as np
    import torch

    from pets.cache import PixelCache
    from pets.compute import pick_compute
    from pets.config import AugmentParams
    from pets.data import DeviceCanvases, Loader, Subset
    from pets.model import create_body, create_cnn, freeze
    from pets.train import (
        SmoothedLoss,
        adamw,
        one_cycle,
        param_groups,
        train_one_epoch,
    )
    from pets.transforms import IMAGENET_MEAN, IMAGENET_STD

    compute = pick_compute("auto", "auto")
    cache = PixelCache(cache_folder)
    rows = np.arange(min(len(cache), batches * bs))
    subset = Subset(rows, rows % 37, [str(r) for r in rows])
    resident = (
        DeviceCanvases(cache, compute.device)
        if DeviceCanvases.fits(cache, compute.device)
        else None
    )
    loader = Loader(
        cache,
        subset,
        bs=bs,
        size=size,
        device=compute.device,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        augment_params=AugmentParams(),
        seed=2,
        resident=resident,
        channels_last=True,
    )
    body = create_body(arch, "none")
    model = create_cnn(body, 37)
    freeze(model, body.split)
    model = model.to(compute.device, memory_format=torch.channels_last)
    optimizer = adamw(
        param_groups(model, body.split, [1e-4] * 3, 0.01), fused=compute.device.type == "cuda"
    )
    train_one_epoch(
        model,
        loader,
        optimizer,
        one_cycle(optimizer, len(loader)),
        SmoothedLoss(),
        compute,
        "memory",
    )
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes
    return {
        "peak_rss_gb": peak_kb / 2**20,
        "device": str(compute.device),
        "resident_on_gpu": resident is not None,
        "batches": len(loader),
    }


def main() -> None:
    """Write the cache, train from it in a child process, report its peak memory."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=7390)
    parser.add_argument("--cache-size", type=int, default=448)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="a small cache and model (CI)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size, bs, arch = (48, 8, "resnet18") if args.quick else (224, 64, "resnet34")
    if args.child:
        print("RESULT " + json.dumps(train(args.child, args.batches, size, bs, arch)))
        return
    if args.quick:
        args.photos, args.cache_size, args.batches = 64, 64, 4
    from input_pipeline import synthetic_cache

    with tempfile.TemporaryDirectory(prefix="pets-memory-") as tmp:
        folder = Path(tmp) / "cache"
        synthetic_cache(folder, args.photos, args.cache_size)
        cache_gb = (folder / "pixels.npy").stat().st_size / 2**30
        command = [
            sys.executable,
            __file__,
            "--child",
            str(folder),
            "--batches",
            str(args.batches),
        ] + (["--quick"] if args.quick else [])
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        if done.returncode or not lines:
            sys.exit(f"training failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        result = json.loads(lines[-1].removeprefix("RESULT "))
    rows = [
        {
            "stage": "train_frozen",
            "model": arch,
            "size": size,
            "bs": bs,
            "cache_gb": cache_gb,
            **result,
            "target_gb": TARGET_GB,
            "ratio": result["peak_rss_gb"] / TARGET_GB,
        }
    ]
    report("host_memory", rows, {"photos": args.photos, "cache_size": args.cache_size})


if __name__ == "__main__":
    main()
