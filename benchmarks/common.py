"""What the benchmarks share: a temporary copy of the project on generated photos, timing,
and writing results (a table on stdout, JSON under benchmarks/results/)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("PETS_BENCH_RESULTS", REPO / "benchmarks" / "results"))
# Settings that make the DAG quick on a CPU while exercising every stage.
QUICK = {
    "tracking": {"enabled": False},
    "cache": {"size": 96},
    "preview": {"size": 64},
    "train_frozen": {"weights": "none", "size": 64, "bs": 16, "epochs": 1},
    "lr_find": {"bs": 16, "num_it": 20},
    "finetune": {"bs": 16, "epochs": 1},
    "train_resnet50": {"weights": "none", "size": 64, "bs": 16, "epochs": 1},
    "get_preds": {"bs": 32},
}


# For --quick runs on a handful of photos (CI).
TINY = {
    "cache": {"size": 64},
    "preview": {"size": 48},
    "train_frozen": {"size": 48, "bs": 4},
    "lr_find": {"bs": 4, "num_it": 12},
    "finetune": {"bs": 4},
    "train_resnet50": {"size": 48, "bs": 4},
    "get_preds": {"bs": 4},
    "interpret": {"k": 4, "bootstrap": 200},
}


def merge(base: dict, overrides: dict) -> dict:
    """Deep-merge `overrides` into a copy of `base`."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def tool_env() -> dict[str, str]:
    """This interpreter's bin folder first on PATH, so `python`, `snakemake`, `dvc` are ours."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a command in `cwd`; stop the benchmark with its output if it fails."""
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=tool_env())
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def copy_project(dest: Path, overrides: dict) -> Path:
    """The project's files (as a fresh clone has them) in `dest`, a git repo with one commit,
    params.yaml merged with `overrides`."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in listed:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    params = merge(yaml.safe_load((dest / "params.yaml").read_text()), overrides)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "benchmark"],
    ):
        subprocess.run(["git", *args], cwd=dest, check=True, capture_output=True)
    return dest


def timed(action: Callable[[], object], repeats: int) -> dict[str, float]:
    """Wall seconds of `repeats` calls: median, min and max."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds)}


def machine() -> dict[str, object]:
    """Where the numbers were measured."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def report(name: str, rows: list[dict[str, object]], extra: dict[str, object]) -> Path:
    """Print `rows` as a table and write them, with `extra` and the machine, as JSON."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    widths = {c: max(len(c), *(len(_fmt(row.get(c))) for row in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(widths[c]) for c in columns))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(
        json.dumps(
            {
                "rows": rows,
                **extra,
                "machine": machine(),
                "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwritten to {path}")
    return path


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return "" if value is None else str(value)


def write_export(folder: Path) -> Path:
    """An export folder: resnet34 with the lesson's head for 37 classes at size 224."""
    import torch

    from pets.export import SPEC_FORMAT, save_weights
    from pets.model import create_body, create_cnn
    from pets.synthetic import BREEDS
    from pets.transforms import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(0)
    spec = {
        "format": SPEC_FORMAT,
        "arch": "resnet34",
        "classes": list(BREEDS),
        "size": 224,
        "presize": 448,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "head": {"features": 512, "hidden": 512, "dropout": [0.25, 0.5]},
        "weights": "none",
        "split": "6",  # resnet34's second layer group starts at its layer3
    }
    save_weights(create_cnn(create_body("resnet34", "none"), 37), spec, folder)
    return folder
