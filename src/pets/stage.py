"""What every stage shares: its spec (the one declaration the Snakefile, dvc.yaml and its command
line are derived from), the command line itself, params loading, one-line errors and exit codes,
and its MLflow run."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from pets import distributed, paths, timings
from pets.config import Params, load_params
from pets.errors import PetsError
from pets.paths import MODELS, for_model

if TYPE_CHECKING:
    from pets.tracking import Tracker

# `${section.key}` in a path: a value of params.yaml (DVC's own interpolation syntax).
PARAM_REFERENCE = re.compile(r"\$\{([a-z_][a-z0-9_.]*)\}")


@dataclass(frozen=True)
class StageSpec:
    """One stage, declared once: what it reads and writes, which params, where it runs.

    `inputs` and `outputs` map an option name to a path (see `pets.paths`); the options that the
    stage's `main` takes are passed on its command line, the others are tracked only (files
    `main` finds from a folder it is given). A path with `{model}` is one per trained model: the
    stage's own model when it runs `per_model`, else every model. `${key}` is a params value."""

    name: str
    params: tuple[str, ...]  # params.yaml sections and shared keys it reads
    inputs: Mapping[str, str] = field(default_factory=dict)
    outputs: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)  # fixed settings, not files
    per_model: bool = False  # one job per trained model (`--name`, DVC's foreach)
    trains: bool = False  # runs data-parallel under launch.processes, one GPU per process
    gpu: bool = False  # runs a model: takes a GPU when there is one
    threads: int = 0  # cores the job keeps busy; 0: every core
    folders: frozenset[str] = frozenset()  # outputs that are folders
    uncached: Mapping[str, str] = field(default_factory=dict)  # outputs DVC does not store: why
    figures: Mapping[str, str] = field(default_factory=dict)  # outputs in Snakemake's report
    metrics: frozenset[str] = frozenset()  # outputs `dvc metrics` shows
    plots: frozenset[str] = frozenset()  # epoch tables `dvc plots` draws
    # The user's own files the stage reads (an archive, a label function's module, weights):
    # tracked by content through the stage's inputs record (pets.dag).
    sources: Callable[[Params], list[Path]] | None = None

    @property
    def script(self) -> str:
        """The stage's command-line shim."""
        return f"workflow/scripts/{self.name}.py"

    def key(self, model: str | None = None) -> str:
        """The stage's name as DVC and MLflow know it: `get_preds@stage-1` per model."""
        return f"{self.name}@{model}" if self.per_model and model else self.name


def training_outputs(model: str) -> dict[str, str]:
    """What a training stage writes for `model`: checkpoint, metrics, epoch table, model card."""
    return {
        "model": for_model(paths.CHECKPOINT, model),
        "metrics": for_model(paths.METRICS, model),
        "history": for_model(paths.HISTORY, model),
        "model_info": for_model(paths.MODEL_INFO, model),
    }


def weights_file(weights: str) -> list[Path]:
    """A training section's `weights` when it names a file (tracked by its content)."""
    return [] if weights in ("imagenet", "none") else [Path(weights)]


def resolve(template: str, params: Params | None, model: str | None = None) -> str:
    """A spec path with `{model}` and `${key}` filled in."""
    if model is not None:
        template = for_model(template, model)
    if params is not None:

        def value(match: re.Match[str]) -> str:
            found: Any = params
            for part in match.group(1).split("."):
                found = getattr(found, part)
            return str(found)

        template = PARAM_REFERENCE.sub(value, template)
    return template


def expand(template: str, params: Params | None, model: str | None) -> list[str]:
    """The paths a spec path stands for: one, or one per trained model."""
    if "{model}" in template and model is None:
        return [resolve(template, params, name) for name in MODELS]
    return [resolve(template, params, model)]


def passed(spec: StageSpec, main: Callable[..., None]) -> set[str]:
    """The spec's inputs and outputs that `main` takes as arguments."""
    return set(inspect.signature(main).parameters) & {*spec.inputs, *spec.outputs}


def option(name: str) -> str:
    """`model_info` -> `--model-info`."""
    return "--" + name.replace("_", "-")


def stage_parser(spec: StageSpec, main: Callable[..., None], doc: str | None) -> Any:
    """The stage's argument parser: `--params`, `--name` per model, every input and output that
    `main` takes (defaults from the spec) and its fixed options; the help is its docstring."""
    parser = argparse.ArgumentParser(
        prog=spec.script, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="params file (default: %(default)s)",
    )
    if spec.per_model:
        parser.add_argument(
            "--name", choices=MODELS, default=MODELS[0], help="the model (default: %(default)s)"
        )
    for name, template in {**spec.inputs, **spec.outputs}.items():
        if name in passed(spec, main):
            parser.add_argument(option(name), type=Path, help=f"default: {template}")
    for name, value in spec.options.items():
        many = isinstance(value, list | tuple)
        parser.add_argument(
            option(name),
            nargs="+" if many else None,
            type=type(value[0] if many else value),
            default=list(value) if many else value,
            help="default: %(default)s",
        )
    if "threads" in inspect.signature(main).parameters:
        parser.add_argument(
            "--threads", type=int, default=0, help="CPU threads; 0: every core (default)"
        )
    return parser


def command(spec: StageSpec, main: Callable[..., None], path: Callable[[str, str], str]) -> str:
    """The stage's command line as the DAG runs it; `path(option, template)` writes each path
    (Snakemake's `{input.x}`, DVC's literal path)."""
    words = ["python", spec.script, "--params", "params.yaml"]
    if spec.per_model:
        words += ["--name", path("name", "{model}")]
    takes = passed(spec, main)
    for name, template in {**spec.inputs, **spec.outputs}.items():
        if name in takes:
            words += [option(name), path(name, template)]
    for name, value in spec.options.items():
        words += [option(name), *(map(str, value) if isinstance(value, list | tuple) else [value])]
    return " ".join(str(word) for word in words)


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


def stage_cli(
    spec: StageSpec,
    main: Callable[..., None],
    doc: str | None,
    argv: list[str] | None = None,
) -> None:
    """Parse the stage's command line and run `main` under `run_stage`."""
    args = stage_parser(spec, main, doc).parse_args(argv)
    model = getattr(args, "name", None)
    takes = passed(spec, main)

    def body(params: Params, tracker: Tracker) -> None:
        arguments = {
            name: value for name, value in vars(args).items() if name not in ("params", "name")
        }
        for name in takes:  # a path not given on the command line comes from the spec
            if arguments.get(name) is None:
                arguments[name] = Path(
                    resolve({**spec.inputs, **spec.outputs}[name], params, model)
                )
        if "threads" in arguments:
            arguments["threads"] = worker_threads(arguments["threads"])
        if spec.per_model and "name" in inspect.signature(main).parameters:
            arguments["name"] = model
        main(params, tracker=tracker, **arguments)

    def tracked(params: Params, names: Mapping[str, str]) -> list[Path]:
        given = vars(args)
        return [
            Path(path)
            for name, template in names.items()
            for path in (
                [given[name]] if given.get(name) is not None else expand(template, params, model)
            )
        ]

    run_stage(
        spec,
        args.params,
        body,
        model=model,
        inputs=lambda params: (
            tracked(params, spec.inputs) + (spec.sources(params) if spec.sources else [])
        ),
        outputs=lambda params: tracked(params, spec.outputs),
    )


def run_stage(
    spec: StageSpec,
    params_path: Path,
    body: Callable[[Params, Tracker], None],
    *,
    model: str | None = None,
    inputs: Callable[[Params], list[Path]] | None = None,
    outputs: Callable[[Params], list[Path]] | None = None,
) -> None:
    """Load and validate params, hold the project for the stage's pipeline, open the stage's
    MLflow run (with the fingerprints of its `inputs` and `outputs`), run `body`; a `PetsError`
    becomes one line on stderr and exit status 1, an interrupt exit status 130."""
    timings.start()
    from pets.pipeline import hold_stage, record_finished
    from pets.tracking import Tracker, stage_run

    signal.signal(signal.SIGTERM, _terminate)
    # Logs are files: flush each line, so stdout and stderr interleave in the order they
    # happened and `tail -f logs/...` shows the epoch table as it grows.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    key = spec.key(model)
    try:
        params = load_params(params_path)
        if spec.trains and params.launch.processes > 1 and distributed.size() == 1:
            if params.device != "cpu":
                distributed.check_gpus(params.launch.processes)
            distributed.relaunch(params.launch.processes)
        project = params_path.resolve().parent
        start = time.perf_counter()
        if distributed.is_main():
            with hold_stage(project, key):
                clock = timings.CLOCK
                clock.mark("opened")
                status = "FAILED"
                try:
                    with stage_run(
                        key,
                        params,
                        project,
                        inputs(params) if inputs else [],
                        outputs(params) if outputs else [],
                    ) as tracker:
                        clock.mark("work")
                        try:
                            body(params, tracker)
                        finally:
                            clock.mark("worked")
                    status = "FINISHED"
                finally:
                    clock.mark("closed")
                    timings.write(key, status)
                record_finished(project, key)
            # `done in` is the stage's own timer (process start excluded); the split from the
            # process's start: benchmarks/fixed_costs.py.
            print(
                f"{key}: done in {time.perf_counter() - start:.1f} s ({timings.summary()})",
                file=sys.stderr,
            )
        else:  # one MLflow run, one set of outputs and one log, from process 0
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                body(params, Tracker())
        distributed.stop()
    except PetsError as exc:
        print(f"{spec.name}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{spec.name}: interrupted", file=sys.stderr)
        sys.exit(130)
