"""Benchmark: what each stage costs before and after its work.

Builds a copy of the project on a generated Pets-like data set (tiny CPU settings, tracking on),
then measures, from each stage process's own clock (pets.timings, `$PETS_TIMINGS`):
- the whole DAG through `snakemake` with tracking on, then again (`--forceall`) with
  `PETS_TRACKING=0`: wall seconds, and the sum over its jobs of start-up, work and recording;
- each stage run by hand as a process (`python workflow/scripts/<stage>.py`, one model for the
  per-model stages), with tracking on and off, turn about: wall seconds, split into start-up
  (interpreter, imports, params, lock, to the first line of the stage's work, imports inside
  `main` included), work, and recording (its journal and the fingerprints of its files), and
  how long after the stage ended its run was in MLflow (`recorded_after_s`: the project's
  recorder writes it; its CPU seconds are reported apart, as `recorder_cpu_s`).

Targets (issue 17): start-up plus recording under 1.5 s per stage; tracking adding under 0.5 s
to any stage; `export` (resnet50) under 15 s; the whole tiny DAG under 120 s on a 2-core CPU.

    python benchmarks/fixed_costs.py [--classes 37] [--per-class 6] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import QUICK, TINY, copy_project, merge, report, tool_env  # benchmarks/common.py

from pets.synthetic import make_pets, pack

FIXED_TARGET = 1.5  # start-up + recording, seconds
TRACKING_TARGET = 0.5  # what tracking adds to a stage, seconds
EXPORT_TARGET = 15.0  # export of resnet50, wall seconds
DAG_TARGET = 120.0  # the whole tiny DAG, wall seconds
# Stages run by hand, with the model of the per-model ones; --quick: the data stages only.
STAGES = [
    ("download", None),
    ("labels", None),
    ("cache", None),
    ("preview", None),
    ("train_frozen", None),
    ("lr_find", None),
    ("finetune", None),
    ("train_resnet50", None),
    ("get_preds", "stage-1"),
    ("interpret", "stage-1"),
    ("report", None),
    ("export", None),
]
QUICK_STAGES = [("labels", None), ("preview", None)]
SPLIT = ("startup_s", "work_s", "recording_s", "fingerprints_s")


def cpu_seconds() -> float:
    """User plus system CPU seconds of this process's finished children (and theirs): on a
    shared machine they say what a stage costs better than its wall seconds."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def run(command: list[str], cwd: Path, **env: str) -> tuple[float, float]:
    """Run a command; its wall and CPU seconds. Stops the benchmark with its output if it
    fails."""
    import subprocess

    start, cpu = time.perf_counter(), cpu_seconds()
    done = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, env={**tool_env(), **env}
    )
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, cpu_seconds() - cpu


RECORDERS: dict[int, float] = {}  # recorder pid -> its CPU seconds when last seen


def recorder_cpu(project: Path) -> float:
    """CPU seconds of the project's recorder processes (pets.recorder: they write the stages'
    runs to MLflow in the background, outside the stage processes), summed over every one
    seen so far; sampled, so a recorder that ended unseen since its last sample is missed."""
    import psutil

    for process in psutil.process_iter(["pid", "cmdline"]):
        words = process.info["cmdline"] or []
        if "pets.recorder" in words and str(project.resolve()) in words:
            with contextlib.suppress(psutil.Error):
                used = process.cpu_times()
                RECORDERS[process.info["pid"]] = used.user + used.system
    return sum(RECORDERS.values())


def recorded(project: Path, seconds: float = 300.0) -> float:
    """Seconds until the recorder has written every journal (the runs of the stages that
    ended) to MLflow."""
    from pets.journal import pending

    start = time.perf_counter()
    while pending(project) and time.perf_counter() - start < seconds:
        recorder_cpu(project)
        time.sleep(0.02)
    return time.perf_counter() - start


def read_split(folder: Path, key: str) -> dict[str, float]:
    """The split a stage process wrote (pets.timings)."""
    return json.loads((folder / f"{key}.json").read_text())


def dag(project: Path, folder: Path, target: list[str], tracking: bool) -> dict[str, object]:
    """The whole DAG (or `target`) through snakemake: wall seconds and the sum of its jobs'
    splits."""
    folder.mkdir(parents=True)
    cores = str(os.cpu_count() or 2)
    load = os.getloadavg()[0]  # others' work on a shared machine stretches the wall seconds
    seconds, cpu = run(
        ["snakemake", "--cores", cores, "--forceall", *target],
        project,
        PETS_TIMINGS=str(folder),
        PETS_TRACKING="1" if tracking else "0",
    )
    jobs = [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]
    # Snakemake waits for the recorder as it ends: MLflow holds every run by now.
    return {
        "command": f"snakemake --forceall{' ' + ' '.join(target) if target else ''}",
        "tracking": tracking,
        "wall_s": seconds,
        "cpu_s": cpu,
        "recorder_cpu_s": recorder_cpu(project),
        "load_before": load,
        "jobs": len(jobs),
        **{f"sum_{name}": sum(job[name] for job in jobs) for name in SPLIT},
        "target_s": DAG_TARGET,
    }


def by_hand(
    project: Path,
    folder: Path,
    stage: str,
    model: str | None,
    repeats: int,
    source: Path | None = None,
) -> dict:
    """Stage `stage` run by hand, tracking on and off turn about: medians of each; with the
    package from `source` (another checkout's src/) when given."""
    code = {"PYTHONPATH": str(source)} if source else {}
    command = [sys.executable, f"workflow/scripts/{stage}.py", "--params", "params.yaml"]
    key = stage
    if model:
        command += ["--name", model]
        key = f"{stage}@{model}"
    seen: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for repeat in range(repeats):
        for tracking in (True, False):
            where = folder / f"{'on' if tracking else 'off'}-{repeat}"
            wall, cpu = run(
                command,
                project,
                PETS_TIMINGS=str(where),
                PETS_TRACKING="1" if tracking else "0",
                **code,
            )
            after = recorded(project) if tracking else 0.0
            seen[tracking].append(
                {"wall_s": wall, "cpu_s": cpu, "recorded_after_s": after, **read_split(where, key)}
            )

    def median(tracking: bool, name: str) -> float:
        return statistics.median(split[name] for split in seen[tracking])

    on = {name: median(True, name) for name in ("wall_s", "cpu_s", "recorded_after_s", *SPLIT)}
    off_wall = median(False, "wall_s")
    fixed = on["startup_s"] + on["recording_s"]
    return {
        "stage": key,
        "code": "compared" if source else "this",
        **on,
        "fixed_s": fixed,
        "wall_off_s": off_wall,
        "cpu_off_s": median(False, "cpu_s"),
        "startup_off_s": median(False, "startup_s"),
        "tracking_adds_s": on["wall_s"] - off_wall,
        "tracking_adds_cpu_s": on["cpu_s"] - median(False, "cpu_s"),
        "fixed_ok": fixed < FIXED_TARGET,
        "tracking_ok": on["wall_s"] - off_wall < TRACKING_TARGET,
        **({"export_ok": on["wall_s"] < EXPORT_TARGET} if stage == "export" else {}),
    }


def main() -> None:
    """Run the benchmark; print the tables and write benchmarks/results/fixed_costs.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--classes", type=int, default=37, help="breeds")
    parser.add_argument("--per-class", type=int, default=6, help="photos per breed")
    parser.add_argument("--repeats", type=int, default=3, help="by-hand runs per stage and mode")
    parser.add_argument(
        "--quick", action="store_true", help="4 breeds x 6 photos, data stages, 1 repeat (CI)"
    )
    parser.add_argument("--stages", nargs="+", help="only these stages by hand")
    parser.add_argument(
        "--compare",
        type=Path,
        help="another checkout's src/ (say, before a change): each stage by hand runs with it "
        "too, turn about, on the same project",
    )
    parser.add_argument(
        "--dag", choices=("both", "on"), default="both", help="DAG runs: tracking on and off"
    )
    args = parser.parse_args()
    classes, stages = args.classes, STAGES
    if args.quick:
        classes, args.per_class, args.repeats, stages = 4, 6, 1, QUICK_STAGES
    if args.stages:
        stages = [(name, model) for name, model in STAGES if name in args.stages]
    with tempfile.TemporaryDirectory(prefix="pets-bench-") as tmp:
        root = Path(tmp)
        make_pets(root / "oxford-iiit-pet", args.per_class, classes=classes, seed=0)
        archive = pack(root / "oxford-iiit-pet", root / "oxford-iiit-pet.tgz")
        settings = merge(
            merge(QUICK, TINY),
            {"data": {"url": str(archive), "md5": None}, "tracking": {"enabled": True}},
        )
        project = copy_project(root / "project", settings)
        target = ["preview"] if args.quick else []
        photos = classes * args.per_class
        print(f"the DAG on {photos} photos, tracking on, then off ...", flush=True)
        dags = [dag(project, root / "timings" / "dag-on", target, tracking=True)]
        if args.dag == "both":
            dags.append(dag(project, root / "timings" / "dag-off", target, tracking=False))
        rows = []
        for stage, model in stages:
            print(f"{stage} by hand ...", flush=True)
            where = root / "timings" / stage
            rows.append(by_hand(project, where / "this", stage, model, args.repeats))
            if args.compare:
                rows.append(
                    by_hand(project, where / "compared", stage, model, args.repeats, args.compare)
                )
    for row in dags:
        print(
            f"{row['command']} (tracking {'on' if row['tracking'] else 'off'}): "
            f"{row['wall_s']:.1f} s wall, {row['cpu_s']:.1f} s CPU + the recorder's "
            f"{row['recorder_cpu_s']:.1f} s so far (load average "
            f"{row['load_before']:.1f} before), {row['jobs']} jobs: start-up "
            f"{row['sum_startup_s']:.1f} s, work {row['sum_work_s']:.1f} s, recording "
            f"{row['sum_recording_s']:.1f} s (summed over jobs; target {DAG_TARGET:.0f} s wall)"
        )
    print()
    report(
        "fixed_costs",
        rows,
        {
            "dag": dags,
            "photos": photos,
            "repeats": args.repeats,
            "load_average": os.getloadavg(),
            "compared": str(args.compare) if args.compare else None,
        },
    )


if __name__ == "__main__":
    main()
