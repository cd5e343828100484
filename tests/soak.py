"""Soak test, not part of `pytest`: the tiny DAG run over and over, killed at random moments
(SIGKILL or SIGTERM, to the whole process group) with random bad files dropped into the data
set, alternating Snakemake and DVC. After every round each declared output is either absent or
complete and valid; at the end the DAG runs to completion and its metrics must equal those of a
clean, uninterrupted run, byte for byte.

    python -m tests.soak --rounds 20 [--seed 0]      # from the project folder

Prints rounds, kills, bad files, trainings resumed, invalid outputs and outputs lost (both must
be 0) and exits non-zero if either is not.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from tests.helpers import TINY, make_project, merge, small_pets, tool_env

MODELS = ("stage-1", "stage-2", "resnet50")
# Every declared output (valid() tells whether one is whole).
OUTPUTS = [
    "data/dataset.json",
    "data/split.csv",
    "data/classes.json",
    "reports/data_quality.json",
    "data/cache",
    "reports/show_batch.png",
    "models/stage-1.pth",
    "metrics/stage-1.json",
    "reports/stage-1/history.csv",
    "reports/stage-1/model.json",
    "reports/lr_find.csv",
    "reports/lr_find.png",
    "metrics/lr_find.json",
    "models/stage-2.pth",
    "metrics/stage-2.json",
    "models/resnet50.pth",
    "metrics/resnet50.json",
    "reports/index.html",
    "reports/flips.csv",
    *[
        f"reports/{m}/{name}"
        for m in MODELS
        for name in ("predictions.csv", "top_losses.png", "confusion_matrix.png", "per_class.csv")
    ],
    *[f"metrics/interpret/{m}.json" for m in MODELS],
]


def valid(path: Path) -> bool:
    """Whether an existing output is complete."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".csv":
            pd.read_csv(path)
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.verify()
        elif path.suffix == ".pth":
            torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".html":
            return path.read_text().rstrip().endswith("</html>")
        elif path.name == "cache":
            from pets.cache import PixelCache

            cache = PixelCache(path)
            cache.read([len(cache) - 1])
        return True
    except Exception:
        return False


def bad_files(images: Path, rng: random.Random) -> int:
    """Drop 1-3 broken 'photos' named like Pets photos into the data set."""
    real = sorted(images.glob("*.jpg"))
    count = rng.randint(1, 3)
    for index in range(count):
        kind = rng.choice(["empty", "truncated", "text", "tiny"])
        target = images / f"{real[0].stem.split('_')[0]}_{900 + rng.randint(0, 99)}{index}.jpg"
        if kind == "empty":
            target.write_bytes(b"")
        elif kind == "truncated":
            data = real[rng.randrange(len(real))].read_bytes()
            target.write_bytes(data[: len(data) // 3])
        elif kind == "text":
            target.write_text("not a photo\n")
        else:
            Image.new("RGB", (1, 1)).save(target, format="PNG")
    return count


FORCED = ("labels", "cache", "train_frozen", "lr_find", "finetune", "train_resnet50")


def run(
    project: Path, tool: str, kill_after: float | None, log: Path, force: str | None = None
) -> tuple[int, bool]:
    """Run the DAG (redoing `force` and what follows it), its output to `log`; kill its
    process group after `kill_after` seconds. Returns (exit code, killed)."""
    if tool == "snakemake":
        command = ["snakemake", "--cores", "2", *(["--forcerun", force] if force else [])]
    else:
        command = ["dvc", "repro", *(["--force", "--downstream", force] if force else [])]
    with open(log, "w") as output:
        process = subprocess.Popen(
            command,
            cwd=project,
            env=tool_env(),
            start_new_session=True,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        if kill_after is None:
            return process.wait(), False
        try:
            return process.wait(timeout=kill_after), False
        except subprocess.TimeoutExpired:
            how = random.choice([signal.SIGKILL, signal.SIGKILL, signal.SIGTERM])
            os.killpg(process.pid, how)
            process.wait()
            time.sleep(0.5)  # let children that got SIGTERM finish unwinding
            return process.returncode, True


def metrics(project: Path) -> dict[str, bytes]:
    """Every metrics file's bytes."""
    return {
        str(p.relative_to(project)): p.read_bytes() for p in (project / "metrics").rglob("*.json")
    }


def main() -> None:
    """Run the soak and print its figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    random.seed(args.seed)
    figures = {
        "rounds": 0,
        "kills": 0,
        "bad_files": 0,
        "resumed_trainings": 0,
        "invalid_outputs": 0,
        "outputs_lost": 0,
    }
    with tempfile.TemporaryDirectory(prefix="pets-soak-") as tmp:
        root = Path(tmp)
        archive = small_pets(root, "pets")
        settings = merge(
            TINY,
            {
                "data": {"url": str(archive), "md5": None},
                "tracking": {"enabled": True},
                "train_frozen": {"epochs": 3},
                "train_resnet50": {"epochs": 3},
            },
        )
        clean = make_project(root / "clean", settings)
        soak = make_project(root / "soak", settings)
        start = time.monotonic()
        assert run(clean, "snakemake", None, root / "clean.log")[0] == 0, "the clean run failed"
        full = time.monotonic() - start
        print(f"clean run: {full:.0f} s", flush=True)
        for round_number in range(args.rounds):
            tool = "snakemake" if round_number % 2 == 0 else "dvc"
            images = soak / "data" / "dataset" / "images"
            if images.is_dir() and rng.random() < 0.5:
                figures["bad_files"] += bad_files(images, rng)
            log = root / f"round-{round_number}.log"
            force = rng.choice(FORCED)  # every round has work to interrupt
            code, killed = run(soak, tool, rng.uniform(3, full), log, force)
            figures["resumed_trainings"] += log.read_text().count("resuming after epoch")
            figures["rounds"] += 1
            figures["kills"] += killed
            broken = [o for o in OUTPUTS if (soak / o).exists() and not valid(soak / o)]
            figures["invalid_outputs"] += len(broken)
            print(
                f"round {round_number + 1:2d}: {tool:9s} from {force:14s} "
                f"{'killed' if killed else f'exit {code}'}"
                f"{'; invalid: ' + ', '.join(broken) if broken else ''}",
                flush=True,
            )
        code, _ = run(soak, "snakemake", None, root / "final.log")
        missing = [o for o in OUTPUTS if not (soak / o).exists() or not valid(soak / o)]
        figures["outputs_lost"] = len(missing)
        figures["resumed_trainings"] += (root / "final.log").read_text().count("resuming after")
        same = metrics(soak) == metrics(clean)
        figures["final_run_exit"] = code
        figures["final_metrics_equal_clean_run"] = same
    print(json.dumps(figures, indent=2))
    if figures["invalid_outputs"] or figures["outputs_lost"] or not same or code:
        sys.exit(1)


if __name__ == "__main__":
    main()
