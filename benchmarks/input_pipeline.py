"""Benchmark: does the input pipeline feed each training stage at its model-step ceiling?

For each training stage's configuration, in one process:
- ceiling: training steps on one batch already on the device (same model, batch size, image
  size, precision and memory layout): what the model alone can do;
- pipeline: an epoch of the stage's own loop (`train_one_epoch` on the stage's `Loader`) reading
  a pixel cache of Pets' size (7,390 photos at `cache.size` 448), resident on the GPU when it
  fits, and once more streamed from the cache file (the path for caches too big for the GPU);
and prints pipeline / ceiling (target: at least 0.90). With --compile (CUDA), it also measures
`torch.compile(mode="reduce-overhead")` (CUDA graphs) on each frozen stage's step: compile
seconds, steady speed, and the images after which compiling pays off.

    python benchmarks/input_pipeline.py            # the lesson's configurations
    python benchmarks/input_pipeline.py --quick    # tiny, for a CPU (CI runs this)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from common import report  # benchmarks/common.py

from pets.cache import INDEX, PIXELS, PixelCache
from pets.compute import pick_compute
from pets.config import AugmentParams
from pets.data import DeviceCanvases, Loader, Subset
from pets.model import create_body, create_cnn, freeze
from pets.train import SmoothedLoss, adamw, one_cycle, param_groups, train_one_epoch
from pets.transforms import IMAGENET_MEAN, IMAGENET_STD

STAGES = {
    "train_frozen": {"arch": "resnet34", "size": 224, "bs": 64, "frozen": True},
    "finetune": {"arch": "resnet34", "size": 224, "bs": 64, "frozen": False},
    "train_resnet50": {"arch": "resnet50", "size": 320, "bs": 32, "frozen": True},
}
QUICK = {
    "train_frozen": {"arch": "resnet18", "size": 48, "bs": 8, "frozen": True},
    "finetune": {"arch": "resnet18", "size": 48, "bs": 8, "frozen": False},
}
PETS_SIZES = ((500, 375), (500, 333), (375, 500), (500, 400))


def synthetic_cache(folder: Path, photos: int, size: int) -> PixelCache:
    """A pixel cache of `photos` canvases with Pets' aspect ratios (content does not matter to
    speed: a pattern), written with plain writes so this process's memory stays small."""
    folder.mkdir(parents=True)
    heights, widths = [], []
    with open(folder / PIXELS, "wb") as handle:
        header = {"descr": "|u1", "fortran_order": False, "shape": (photos, size, size, 3)}
        np.lib.format.write_array_header_2_0(handle, header)
        canvas = np.zeros((size, size, 3), np.uint8)
        for row in range(photos):
            width, height = PETS_SIZES[row % len(PETS_SIZES)]
            scale = size / max(width, height)
            h, w = round(height * scale), round(width * scale)
            canvas[:] = 0
            canvas[:h, :w] = (row * 37) % 251
            handle.write(canvas.tobytes())
            heights.append(h)
            widths.append(w)
    pd.DataFrame(
        {"path": [f"images/p_{i}.jpg" for i in range(photos)], "height": heights, "width": widths}
    ).to_csv(folder / INDEX, index=False)
    return PixelCache(folder)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(config: dict, classes: int, compute):
    """The stage's model (untrained body, lesson's head), frozen or not, and its optimizer."""
    torch.manual_seed(0)
    body = create_body(config["arch"], "none")
    model = create_cnn(body, classes)
    if config["frozen"]:
        freeze(model, body.split)
    model = model.to(compute.device, memory_format=torch.channels_last)
    fused = compute.device.type == "cuda"
    optimizer = adamw(param_groups(model, body.split, [1e-4] * 3, 0.01), fused=fused)
    return model, optimizer


def ceiling(model, optimizer, config: dict, classes: int, compute, steps: int) -> float:
    """Images per second of training steps on one batch already on the device."""
    device, bs, size = compute.device, config["bs"], config["size"]
    images = torch.randn(bs, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    targets = torch.randint(0, classes, (bs,), device=device)
    model.train()

    def step() -> None:
        with compute.autocast():
            loss = F.cross_entropy(model(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(max(3, steps // 5)):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * bs / (time.perf_counter() - start)


def pipeline(model, optimizer, loader: Loader, compute) -> float:
    """Images per second of one epoch of the stage's own training loop on `loader`."""
    scheduler = one_cycle(optimizer, 2 * len(loader))
    smoothed = SmoothedLoss()
    train_one_epoch(model, loader, optimizer, scheduler, smoothed, compute, "warm-up")
    _sync(compute.device)
    start = time.perf_counter()
    train_one_epoch(model, loader, optimizer, scheduler, smoothed, compute, "timed")
    _sync(compute.device)
    return len(loader) * loader.bs / (time.perf_counter() - start)


def compiled_speed(
    model, optimizer, config: dict, classes: int, compute, steps: int
) -> tuple[float, float]:
    """(compile seconds, steady images/s) of the step under torch.compile with CUDA graphs."""
    compiled = torch.compile(model, mode="reduce-overhead")
    device, bs, size = compute.device, config["bs"], config["size"]
    images = torch.randn(bs, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    targets = torch.randint(0, classes, (bs,), device=device)

    def step() -> None:
        with compute.autocast():
            loss = F.cross_entropy(compiled(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    start = time.perf_counter()
    for _ in range(3):  # compiling, recording the graphs, first replay
        step()
    _sync(device)
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return compile_seconds, steps * bs / (time.perf_counter() - start)


def main() -> None:
    """Measure every stage configuration; print the table, write input_pipeline.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a CPU")
    parser.add_argument("--photos", type=int, default=7390, help="photos in the cache")
    parser.add_argument("--cache-size", type=int, default=448)
    parser.add_argument("--steps", type=int, default=50, help="timed ceiling steps")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument(
        "--compile-stages",
        nargs="+",
        default=["train_frozen"],
        help="frozen stages to compile (resnet50's compile takes minutes)",
    )
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    stages = QUICK if args.quick else STAGES
    photos = 96 if args.quick else args.photos
    cache_size = 64 if args.quick else args.cache_size
    steps = 5 if args.quick else args.steps
    compute = pick_compute(args.device, "auto")
    classes = 37
    rows = []
    with tempfile.TemporaryDirectory(prefix="pets-pipeline-") as tmp:
        cache = synthetic_cache(Path(tmp) / "cache", photos, cache_size)
        train_rows = np.arange(int(photos * 0.8))
        subset = Subset(
            train_rows, np.arange(len(train_rows)) % classes, [f"p_{i}" for i in train_rows]
        )
        start = time.perf_counter()
        resident = DeviceCanvases(cache, compute.device) if compute.device.type == "cuda" else None
        upload = time.perf_counter() - start
        for stage, config in stages.items():
            model, optimizer = build(config, classes, compute)
            top = ceiling(model, optimizer, config, classes, compute, steps)
            for path, canvases in (("resident", resident), ("streamed", None)):
                if path == "resident" and canvases is None:
                    continue
                loader = Loader(
                    cache,
                    subset,
                    bs=config["bs"],
                    size=config["size"],
                    device=compute.device,
                    mean=IMAGENET_MEAN,
                    std=IMAGENET_STD,
                    augment_params=AugmentParams(),
                    seed=2,
                    resident=canvases,
                    channels_last=True,
                )
                fed = pipeline(model, optimizer, loader, compute)
                rows.append(
                    {
                        "stage": stage,
                        "model": config["arch"],
                        "size": config["size"],
                        "bs": config["bs"],
                        "frozen": config["frozen"],
                        "cache": path,
                        "ceiling_img_s": top,
                        "pipeline_img_s": fed,
                        "ratio": fed / top,
                    }
                )
                print(rows[-1], flush=True)
            if args.compile and compute.device.type == "cuda" and stage in args.compile_stages:
                seconds, fast = compiled_speed(model, optimizer, config, classes, compute, steps)
                gain = 1 / top - 1 / fast
                rows.append(
                    {
                        "stage": stage,
                        "model": config["arch"],
                        "size": config["size"],
                        "bs": config["bs"],
                        "frozen": True,
                        "cache": "compiled step",
                        "ceiling_img_s": top,
                        "pipeline_img_s": fast,
                        "ratio": fast / top,
                        "compile_s": seconds,
                        "break_even_images": seconds / gain if gain > 0 else None,
                    }
                )
                print(rows[-1], flush=True)
            del model, optimizer
            if compute.device.type == "cuda":
                torch.cuda.empty_cache()
    report(
        "input_pipeline",
        rows,
        {
            "photos": photos,
            "cache_size": cache_size,
            "device": str(compute.device),
            "precision": compute.precision,
            "cache_upload_s": upload,
            "target_ratio": 0.9,
        },
    )


if __name__ == "__main__":
    main()
