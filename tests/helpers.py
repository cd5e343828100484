"""Helpers for tests: tiny data sets and project copies (imported by conftest and tests)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from pets.synthetic import make_pets, pack

REPO = Path(__file__).resolve().parents[1]
SMALL_SIZES = ((120, 90), (90, 120), (120, 80))
# Params that make the whole DAG run in seconds on a CPU, offline: small images, one epoch,
# untrained bodies.
TINY = {
    "tracking": {"enabled": False},
    "cache": {"size": 64},
    "preview": {"size": 48},
    "train_frozen": {"weights": "none", "size": 48, "bs": 4, "epochs": 1},
    "lr_find": {"bs": 4, "num_it": 12},
    "finetune": {"bs": 4, "epochs": 1},
    "train_resnet50": {"weights": "none", "size": 48, "bs": 4, "epochs": 1},
    "get_preds": {"bs": 4},
    "interpret": {"k": 4, "bootstrap": 200},
}


def small_pets(root: Path, layout: str, classes: int = 4, per_class: int = 6) -> Path:
    """Write a tiny data set of real JPEGs in `layout` and pack it as oxford-iiit-pet.tgz."""
    folder = root / "oxford-iiit-pet"
    make_pets(folder, per_class, classes=classes, seed=1, layout=layout, sizes=SMALL_SIZES)
    return pack(folder, root / "oxford-iiit-pet.tgz")


def merge(base: dict, overrides: dict) -> dict:
    """Deep-merge `overrides` into a copy of `base`."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def project_files() -> list[str]:
    """The project's files as a fresh clone has them (tracked, plus new unignored ones)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    return [name for name in listed if name and (REPO / name).is_file()]


def make_project(dest: Path, *overrides: dict) -> Path:
    """Copy the project to `dest` (a git repo with one commit, DVC initialised), with
    params.yaml deep-merged with `overrides`."""
    for name in project_files():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for override in overrides:
        params = merge(params, override)
    write_params(dest, params)
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"],
    ):
        subprocess.run(["git", *args], cwd=dest, check=True, capture_output=True)
    return dest


def write_params(project: Path, params: dict) -> None:
    """Replace the project's params.yaml."""
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def read_params(project: Path) -> dict:
    """The project's params.yaml as a dict."""
    return yaml.safe_load((project / "params.yaml").read_text())


def tool_env(**extra: str) -> dict[str, str]:
    """The environment for Snakemake/DVC subprocesses: this interpreter's bin first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run_tool(
    project: Path, *args: str, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run `snakemake ...` or `dvc ...` in `project`; on failure show its output."""
    done = subprocess.run(
        list(args), cwd=project, capture_output=True, text=True, env=tool_env(**env)
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({done.returncode}):\n"
            f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )
    return done


def mlflow_client(project: Path) -> Any:
    """An MLflow client on the project's store once the recorder has written the run of every
    stage that ended (stages write journals; pets.recorder turns them into runs)."""
    from pets.recorder import wait_recorded
    from pets.tracking import client_for

    assert wait_recorded(project, 120), "the recorder did not write the runs within 120 s"
    return client_for(project)


def run_script(project: Path, stage: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run workflow/scripts/<stage>.py in `project` as the DAG does."""
    return subprocess.run(
        [sys.executable, f"workflow/scripts/{stage}.py", *args],
        cwd=project,
        capture_output=True,
        text=True,
        env=tool_env(),
    )


def export_spec(classes: list[str]) -> dict:
    """A model.json for resnet18 with the lesson's head for `classes` at size 48."""
    from pets.export import SPEC_FORMAT
    from pets.transforms import IMAGENET_MEAN, IMAGENET_STD

    return {
        "format": SPEC_FORMAT,
        "arch": "resnet18",
        "classes": list(classes),
        "size": 48,
        "presize": 64,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "head": {"features": 512, "hidden": 512, "dropout": [0.25, 0.5]},
        "weights": "none",
        "split": "6",
    }


def write_export(folder: Path, classes: list[str], seed: int = 0) -> Path:
    """An export folder: `export_spec(classes)` with seeded random weights (for tests where
    what is served matters, not how good it is)."""
    import torch

    from pets.export import save_weights
    from pets.model import create_body, create_cnn

    torch.manual_seed(seed)
    model = create_cnn(create_body("resnet18", "none"), len(classes))
    save_weights(model, export_spec(classes), folder)
    return folder


def first_address(process: subprocess.Popen, seconds: float, pattern: str = r"\S*") -> str | None:
    """The http://127.0.0.1:PORT/... address on the first line a server `process` prints
    (`pattern` for what follows the port's slash), or None if none comes within `seconds`."""
    import re
    import threading

    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(seconds)
    found = re.search(rf"(http://127\.0\.0\.1:\d+/{pattern})", lines[0] if lines else "")
    return found.group(1) if found else None
