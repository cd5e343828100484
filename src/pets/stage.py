"""What every stage script shares: its command line, params loading, one-line errors and exit
codes, and its MLflow run."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from pets import distributed
from pets.config import Params, load_params
from pets.errors import PetsError
from pets.tracking import Tracker, stage_run


def stage_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose help is the stage's docstring, with `--params`."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="params file (default: %(default)s)",
    )
    return parser


# Stages that train, and so run data-parallel under `launch.processes` > 1.
DATA_PARALLEL = ("train_frozen", "lr_find", "finetune", "train_resnet50")


def stage_arguments(args: argparse.Namespace) -> dict:
    """The command line's inputs and outputs as keyword arguments of the stage's `main`
    (`--params` aside; `--threads 0` resolved to every core)."""
    arguments = {key: value for key, value in vars(args).items() if key != "params"}
    if "threads" in arguments:
        arguments["threads"] = worker_threads(arguments["threads"])
    return arguments


def worker_threads(requested: int) -> int:
    """`--threads`: the number given, or with 0 every core this process may use (shared
    among the data-parallel processes on this machine)."""
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Snakemake and DVC stop jobs with SIGTERM: unwind like Ctrl-C so the run is marked KILLED
    # and temporary files are removed.
    raise KeyboardInterrupt(f"signal {signum}")


def run_stage(
    stage: str,
    params_path: Path,
    body: Callable[[Params, Tracker], None],
    inputs: list[Path] | None = None,
    outputs: list[Path] | None = None,
) -> None:
    """Load and validate params, open the stage's MLflow run (with the fingerprints of its
    `inputs` and `outputs`), run `body`; a `PetsError` becomes one line on stderr and exit
    status 1, an interrupt exit status 130."""
    signal.signal(signal.SIGTERM, _terminate)
    # Logs are files: flush each line, so stdout and stderr interleave in the order they
    # happened and `tail -f logs/...` shows the epoch table as it grows.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    try:
        params = load_params(params_path)
        if stage in DATA_PARALLEL and params.launch.processes > 1 and distributed.size() == 1:
            if params.device != "cpu":
                distributed.check_gpus(params.launch.processes)
            distributed.relaunch(params.launch.processes)
        project = params_path.resolve().parent
        start = time.perf_counter()
        if distributed.is_main():
            with stage_run(stage, params, project, inputs, outputs) as tracker:
                body(params, tracker)
            print(f"{stage}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        else:  # one MLflow run, one set of outputs and one log, from process 0
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                body(params, Tracker())
        distributed.stop()
    except PetsError as exc:
        print(f"{stage}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{stage}: interrupted", file=sys.stderr)
        sys.exit(130)


def data_arguments(
    parser: argparse.ArgumentParser, checkpoint: str | None = None
) -> argparse.ArgumentParser:
    """The data inputs of every stage that runs a model (split, classes, pixel cache), and
    `--checkpoint` defaulting to `models/<checkpoint>.pth` when the stage reads one."""
    if checkpoint:
        parser.add_argument("--checkpoint", type=Path, default=Path(f"models/{checkpoint}.pth"))
    parser.add_argument("--split", type=Path, default=Path("data/split.csv"))
    parser.add_argument("--classes", type=Path, default=Path("data/classes.json"))
    parser.add_argument("--cache", type=Path, default=Path("data/cache"), help="pixel cache")
    return parser


def training_arguments(parser: argparse.ArgumentParser, model: str) -> argparse.ArgumentParser:
    """The inputs and outputs every training stage takes; `model` names its outputs."""
    data_arguments(parser)
    parser.add_argument("--model", type=Path, default=Path(f"models/{model}.pth"))
    parser.add_argument("--metrics", type=Path, default=Path(f"metrics/{model}.json"))
    parser.add_argument(
        "--history",
        type=Path,
        default=Path(f"reports/{model}/history.csv"),
        help="the epoch table as CSV",
    )
    parser.add_argument(
        "--model-info",
        type=Path,
        default=Path(f"reports/{model}/model.json"),
        help="what the model is: arch, weights, size, learning rates",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads for tensor maths; 0: every core"
    )
    return parser
