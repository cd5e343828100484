"""Benchmark: one training epoch on this CPU, ours against fastai 2.8 and a minimal torch loop.

All three do the same work on the same photos (a generated Pets-like set at Pets' sizes, the
same train/valid split): resnet34 with the lesson's head, frozen body, size 224, the same batch
size, the lesson's augmentations, one-cycle AdamW, a validation pass each epoch; then inference
over the validation photos (fastai's `get_preds`). Each runs in its own process, one after the
other; the epoch after the first is compared (the first includes one-time set-up), and our
one-time decode into the pixel cache is reported on its own line.

fastai runs in its own environment (never a project dependency):

    python -m venv .bench-venv
    .bench-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 fastai==2.8.12
    python benchmarks/cpu_epoch.py --fastai-python .bench-venv/bin/python

Targets: our epoch <= 0.8 x fastai's and <= 1.1 x the minimal loop's; our inference <= fastai's.
`--quick` is a tiny run for CI (no fastai unless --fastai-python is given).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import report  # benchmarks/common.py

HERE = Path(__file__).resolve().parent


def ours(args: argparse.Namespace) -> dict:
    """Our pipeline: decode once into the pixel cache, then epochs from it (channels_last)."""
    import numpy as np
    import torch

    from pets.cache import PixelCache, build_cache
    from pets.compute import pick_compute
    from pets.config import AugmentParams
    from pets.data import Loader, Subset
    from pets.labels import read_split
    from pets.model import create_body, create_cnn, freeze
    from pets.train import fit_one_cycle, predict
    from pets.transforms import IMAGENET_MEAN, IMAGENET_STD

    torch.set_num_threads(os.cpu_count() or 1)
    split = read_split(args.split)
    start = time.perf_counter()
    build_cache(
        args.data,
        split["path"].tolist(),
        args.cache_size,
        args.work / "cache",
        threads=os.cpu_count() or 1,
    )
    cache_seconds = time.perf_counter() - start
    cache = PixelCache(args.work / "cache")
    classes = sorted(split["label"].unique())
    subsets = []
    for valid in (False, True):
        part = split[split["is_valid"] == valid]
        targets = part["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
        subsets.append(
            Subset(cache.rows_for(part["path"].tolist()), targets, part["path"].tolist())
        )
    compute = pick_compute("cpu", "auto")
    common = {
        "size": args.size,
        "device": compute.device,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "seed": 2,
        "channels_last": True,
    }
    train = Loader(cache, subsets[0], bs=args.bs, augment_params=AugmentParams(), **common)
    valid = Loader(cache, subsets[1], bs=args.bs, augment_params=None, **common)
    torch.manual_seed(0)
    body = create_body(args.arch, "none")
    model = create_cnn(body, len(classes))
    freeze(model, body.split)
    model = model.to(memory_format=torch.channels_last)
    rows = fit_one_cycle(model, body.split, train, valid, args.epochs, [3e-3], 0.01, compute)
    start = time.perf_counter()
    predict(model, valid, compute)
    return {
        "epochs": [row.time for row in rows],
        "predict": time.perf_counter() - start,
        "train_images": len(train) * args.bs,
        "cache_build": cache_seconds,
    }


def minimal(args: argparse.Namespace) -> dict:
    """A minimal hand-written loop: a Dataset that opens each JPEG every epoch, torchvision
    transforms, a DataLoader with a worker per core, the same model and optimiser."""
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torchvision.transforms import v2

    from pets.labels import read_split
    from pets.model import create_body, create_cnn, freeze
    from pets.train import adamw, one_cycle, param_groups

    torch.set_num_threads(os.cpu_count() or 1)
    split = read_split(args.split)
    classes = sorted(split["label"].unique())
    index = {c: i for i, c in enumerate(classes)}
    normal = v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    train_tf = v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(args.size, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            normal,
        ]
    )
    valid_tf = v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(args.size, antialias=True),
            v2.CenterCrop(args.size),
            v2.ToDtype(torch.float32, scale=True),
            normal,
        ]
    )

    class Photos(torch.utils.data.Dataset):
        def __init__(self, part, transform):
            self.items = [
                (args.data / p, index[label])
                for p, label in zip(part["path"], part["label"], strict=True)
            ]
            self.transform = transform

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, i):
            path, target = self.items[i]
            return self.transform(Image.open(path).convert("RGB")), target

    workers = os.cpu_count() or 1
    train = torch.utils.data.DataLoader(
        Photos(split[~split["is_valid"]], train_tf),
        batch_size=args.bs,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
    )
    valid = torch.utils.data.DataLoader(
        Photos(split[split["is_valid"]], valid_tf), batch_size=args.bs, num_workers=workers
    )
    torch.manual_seed(0)
    body = create_body(args.arch, "none")
    model = create_cnn(body, len(classes))
    freeze(model, body.split)
    optimizer = adamw(param_groups(model, body.split, [3e-4, 3e-4, 3e-3], 0.01))
    scheduler = one_cycle(optimizer, args.epochs * len(train))
    times = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        model.train()
        for images, targets in train:
            F.cross_entropy(model(images), targets).backward()
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
        model.eval()
        with torch.inference_mode():
            for images, _ in valid:
                model(images)
        times.append(time.perf_counter() - start)
    return {"epochs": times, "train_images": len(train) * args.bs}


def main() -> None:
    """Run the contenders one after the other and compare them."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-class", type=int, default=10, help="photos per breed (37 breeds)")
    parser.add_argument("--arch", default="resnet34")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--bs", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cache-size", type=int, default=448)
    parser.add_argument("--fastai-python", type=Path, help="python of an env with fastai 2.8")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--role", choices=("ours", "minimal"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--split", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        result = {"ours": ours, "minimal": minimal}[args.role](args)
        print("RESULT " + json.dumps(result), flush=True)
        return
    if args.quick:
        args.per_class, args.arch, args.size, args.bs, args.cache_size = 4, "resnet18", 64, 8, 96
    run_all(args)


def run_all(args: argparse.Namespace) -> None:
    """Make the data, run each contender in its own process, print the comparison."""
    from pets.config import LabelsParams
    from pets.files import write_csv
    from pets.labels import label_dataset
    from pets.synthetic import make_pets

    with tempfile.TemporaryDirectory(prefix="pets-cpu-epoch-") as tmp:
        work = Path(tmp)
        make_pets(work / "pets", args.per_class, classes=37, seed=0, threads=os.cpu_count() or 1)
        split = label_dataset(LabelsParams(), work / "pets", seed=2).split
        write_csv(work / "split.csv", split)
        shared = [
            "--data",
            str(work / "pets"),
            "--split",
            str(work / "split.csv"),
            "--work",
            str(work),
            "--arch",
            args.arch,
            "--size",
            str(args.size),
            "--bs",
            str(args.bs),
            "--epochs",
            str(args.epochs),
            "--cache-size",
            str(args.cache_size),
        ]
        results = {}
        for role in ("ours", "minimal"):
            results[role] = _contender([sys.executable, __file__, "--role", role, *shared])
        if args.fastai_python:
            results["fastai"] = _contender(
                [str(args.fastai_python), str(HERE / "fastai_epoch.py"), *shared]
            )
    rows = []
    mine = results["ours"]["epochs"][-1]
    for name, result in results.items():
        epoch = result["epochs"][-1]
        rows.append(
            {
                "pipeline": name,
                "first_epoch_s": result["epochs"][0],
                "epoch_s": epoch,
                "train_img_s": result["train_images"] / epoch,
                "ours_over_this": mine / epoch,
                "predict_s": result.get("predict"),
                "target": {"fastai": 0.8, "minimal": 1.1}.get(name),
            }
        )
    rows.append(
        {
            "pipeline": "ours: one-time decode into the pixel cache",
            "first_epoch_s": results["ours"]["cache_build"],
        }
    )
    extra = {
        "photos": 37 * args.per_class,
        "arch": args.arch,
        "size": args.size,
        "bs": args.bs,
        "epochs": args.epochs,
        "frozen": True,
    }
    if "fastai" in results:
        extra["predict_ours_over_fastai"] = (
            results["ours"]["predict"] / results["fastai"]["predict"]
        )
    report("cpu_epoch", rows, extra)


def _contender(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"{' '.join(command[:3])} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


if __name__ == "__main__":
    main()
