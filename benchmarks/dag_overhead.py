"""Benchmark: what an exact rerun costs when nothing changed.

Builds a copy of the project on a generated Pets-like data set, runs the whole DAG once with
Snakemake (quick CPU settings; Snakemake records what it built in dvc.lock as it ends), then
times `snakemake --cores 4` and `dvc repro` with nothing to do (the target: under 2.5 s each on a
2-core machine; `dvc repro` includes its first stage, `inputs`, which always runs), and
`snakemake -n` after one param change (planning a partial rerun).

    python benchmarks/dag_overhead.py [--per-class 10] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml
from common import QUICK, TINY, copy_project, merge, report, run, timed  # benchmarks/common.py

from pets.synthetic import make_pets, pack

TARGET = 2.5


def main() -> None:
    """Run the benchmark; print the table and write benchmarks/results/dag_overhead.json."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-class", type=int, default=10, help="photos per breed (37 breeds)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="4 breeds x 6 photos, 1 repeat (CI)")
    args = parser.parse_args()
    classes = 37
    if args.quick:
        classes, args.per_class, args.repeats = 4, 6, 1
    with tempfile.TemporaryDirectory(prefix="pets-bench-") as tmp:
        root = Path(tmp)
        make_pets(root / "oxford-iiit-pet", args.per_class, classes=classes, seed=0)
        archive = pack(root / "oxford-iiit-pet", root / "oxford-iiit-pet.tgz")
        settings = merge(QUICK, TINY) if args.quick else QUICK
        project = copy_project(
            root / "project", merge(settings, {"data": {"url": str(archive), "md5": None}})
        )
        print(f"running the whole DAG once on {classes * args.per_class} photos ...", flush=True)
        # --quick (CI) stops after the data stages: the point there is that the script runs.
        target = ["preview"] if args.quick else []
        first = timed(lambda: run(["snakemake", "--cores", "4", *target], project), 1)
        snake = timed(lambda: run(["snakemake", "--cores", "4", *target], project), args.repeats)
        dvc = timed(lambda: run(["dvc", "repro", *target], project), args.repeats)
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["interpret"]["min_val"] = 3
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        plan = timed(
            lambda: run(["snakemake", "-n", "--cores", "4", *target], project), args.repeats
        )
    rows = [
        {
            "command": "snakemake --cores 4 (nothing to do)",
            **snake,
            "target": TARGET,
            "ratio": snake["median"] / TARGET,
        },
        {
            "command": "dvc repro (nothing to do)",
            **dvc,
            "target": TARGET,
            "ratio": dvc["median"] / TARGET,
        },
        {"command": "snakemake -n after interpret.min_val", **plan, "target": None, "ratio": None},
    ]
    report(
        "dag_overhead",
        rows,
        {
            "photos": classes * args.per_class,
            "first_run_s": first["median"],
            "repeats": args.repeats,
        },
    )


if __name__ == "__main__":
    main()
