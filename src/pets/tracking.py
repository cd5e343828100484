"""Where runs go and what a stage's run holds: one parent run per pipeline invocation (a
`snakemake` or `dvc repro` command), one child run per stage that ran, and the lineage tags on
each. A stage writes its run as a journal (pets.journal); the project's recorder
(pets.recorder) writes journals to MLflow, so no stage process imports MLflow."""

from __future__ import annotations

import ast
import base64
import contextlib
import importlib.util
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

import pets
from pets.config import Params, flatten, stage_params
from pets.datasets import reads_split
from pets.experiments import experiment_tags, origin
from pets.fingerprints import file_tags
from pets.journal import Journal, now_ms
from pets.paths import MANIFEST, SPLIT
from pets.processes import PIPELINE_HOST_ENV, pipeline_key, pipeline_pid, process_tags
from pets.timings import CLOCK

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

TERMINAL = ("FAILED", "KILLED")
# MLflow 3's UI shows an experiment as GenAI (traces) unless it is marked as model training.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


class Tracker:
    """Where a stage reports what it did. This base class records nothing: tracking is off."""

    tracked = False  # whether anything is recorded

    def log_params(self, params: dict[str, Any]) -> None:
        """Record parameters (flat keys)."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Record metrics, at `step` (the epoch) when given."""

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        """Attach a file (a figure, a table) to the run."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """Record tags (lineage: code, data, software, device)."""

    def register_model(self, folder: Path, files: list[str], example: bytes) -> None:
        """Register the export `folder` (its `files`; `example`: one photo's bytes) as a new
        version of the project's MLflow model."""


class JournalTracker(Tracker):
    """A stage's run as a journal (pets.journal): each call appends one line, and the project's
    recorder (pets.recorder) writes it to MLflow, so the stage never imports MLflow. Metrics at
    a step (an epoch) show in MLflow while the stage runs; `project` and `params`: what the
    export stage needs to register its model."""

    tracked = True

    def __init__(self, journal: Journal, project: Path, params: Params) -> None:
        self.journal = journal
        self.project, self.params = project, params

    def log_params(self, params: dict[str, Any]) -> None:
        self._log(params=params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._log(metrics={key: float(value) for key, value in metrics.items()}, step=step)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._log(tags={key: str(value) for key, value in tags.items()})

    def _log(self, **event: Any) -> None:
        with CLOCK.count("logging"):
            self.journal.write({"kind": "log", "time": now_ms(), **event})

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        with CLOCK.count("logging"):
            kept = self.journal.keep_files(path.parent, [path.name])
            self.journal.write(
                {"kind": "artifact", "file": f"{kept}/{path.name}", "folder": folder}
            )

    def register_model(self, folder: Path, files: list[str], example: bytes) -> None:
        with CLOCK.count("logging"):
            self.journal.write(
                {
                    "kind": "register",
                    "folder": self.journal.keep_files(folder, files),
                    "export": str(folder.resolve()),
                    "project": str(self.project.resolve()),
                    "name": self.params.tracking.model_name,
                    "copy_weights": self.params.tracking.log_models,
                    "example": base64.b64encode(example).decode("ascii"),
                }
            )


def redacted(flat: dict[str, Any]) -> dict[str, Any]:
    """Flat params with credentials and signed-URL tokens cut out of `data.url`."""
    from pets.archive import redact_url

    if isinstance(flat.get("data.url"), str):
        return {**flat, "data.url": redact_url(flat["data.url"])}
    return flat


def store_root(project: Path) -> Path:
    """Where the project's runs live (`mlflow.db`, `mlruns/`, the tracking lock): the project
    itself, or for a queued DVC experiment the project it was queued in (DVC deletes its
    temporary copy afterwards, and the runs with it)."""
    return (origin(project) or project).resolve()


def tracking_uri(project: Path) -> str:
    """`$MLFLOW_TRACKING_URI`, else the SQLite file `mlflow.db` at the project root as an
    absolute URI (so it does not move with the working directory)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store_root(project) / 'mlflow.db'}"


@contextlib.contextmanager
def mlflow_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API (`mlflow.search_runs`, `Model.log`) pointed at `uri` for the block;
    `$MLFLOW_TRACKING_URI` put back afterwards (`set_tracking_uri` also sets it, for child
    processes: a server started later, or the next test, would inherit this store)."""
    import mlflow

    variable = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)  # nothing in pets sets it otherwise; None unsets it
        if variable is not None:
            os.environ["MLFLOW_TRACKING_URI"] = variable


def enabled(params: Params) -> bool:
    """Whether stages log to MLflow: `tracking.enabled`, unless `PETS_TRACKING=0` is set."""
    return params.tracking.enabled and os.environ.get("PETS_TRACKING", "1") != "0"


def quiet_mlflow() -> None:
    """Keep MLflow's and alembic's info lines out of a stage's log (call after importing mlflow:
    importing it configures its own loggers)."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def client_for_uri(uri: str) -> MlflowClient:
    """An MLflow client on the tracking store at `uri`."""
    from mlflow.tracking import MlflowClient

    quiet_mlflow()
    return MlflowClient(uri)


def client_for(project: Path) -> MlflowClient:
    """An MLflow client on the project's tracking store (made under the tracking lock: a new
    client creates or migrates the SQLite schema, which two processes must not do at once)."""
    with tracking_lock(project):
        return client_for_uri(tracking_uri(project))


def experiment_id(client: MlflowClient, name: str, project: Path) -> str:
    """The id of experiment `name`, created with artifacts under the project's `mlruns/`."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.tags.get(EXPERIMENT_KIND) != MODEL_TRAINING:  # made by an older pets
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
        return found.experiment_id
    try:
        return client.create_experiment(
            name,
            artifact_location=(store_root(project) / "mlruns").as_uri(),
            tags={EXPERIMENT_KIND: MODEL_TRAINING},
        )
    except MlflowException:  # another stage created it first
        return client.get_experiment_by_name(name).experiment_id


def prepare(project: Path, params: Params) -> None:
    """Start the project's recorder before the first stage needs it (snakemake does as it
    starts), so MLflow is imported while the first jobs run."""
    if enabled(params):
        from pets.journal import ensure_recorder

        store = store_root(project)
        (store / ".pets").mkdir(exist_ok=True)
        ensure_recorder(store)


def tracking_lock(project: Path) -> FileLock:
    """The lock around creating experiments and parent runs in the project's store (the
    store's, not a DVC copy's: queued experiments, each in its own copy, share it)."""
    state = store_root(project) / ".pets"
    state.mkdir(exist_ok=True)
    return FileLock(state / "tracking.lock", timeout=300)


def _git(project: Path, *args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=project, capture_output=True, text=True, timeout=20, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def package_versions(name: str) -> dict[str, str]:
    """`__version__` and `cuda` of torch or torchvision as their own `version.py` states them,
    read without importing the package (importing torch costs more than a small stage's work);
    from the module itself when the stage already imported it."""
    module = sys.modules.get(name)
    if module is not None:
        found = getattr(module, "version", None)
        return {"__version__": module.__version__, "cuda": str(getattr(found, "cuda", None))}
    values: dict[str, str] = {}
    with contextlib.suppress(OSError, SyntaxError, ValueError, ImportError, IndexError):
        spec = importlib.util.find_spec(name)  # a top-level name: finds, imports nothing
        folder = spec.submodule_search_locations[0] if spec else None
        if folder:
            tree = ast.parse((Path(folder) / "version.py").read_text())
            for node in tree.body:
                target = node.target if isinstance(node, ast.AnnAssign) else None
                if isinstance(node, ast.Assign) and len(node.targets) == 1:
                    target = node.targets[0]
                if isinstance(target, ast.Name) and node.value is not None:
                    with contextlib.suppress(ValueError):
                        values[target.id] = str(ast.literal_eval(node.value))
    return values


def device_name(params: Params) -> str:
    """The GPU a stage ran on, or the CPU's model and core count. A stage that never imported
    torch ran on the CPU: asking CUDA would cost it the torch import."""
    torch = sys.modules.get("torch")
    if torch is not None and params.device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} ({os.cpu_count()} cores)"


def lineage_tags(project: Path, params: Params) -> dict[str, str]:
    """Code, data, software and seed lineage for a run (the device is known once the stage has
    run: `device_name`)."""
    torch = package_versions("torch")
    commit = _git(project, "rev-parse", "HEAD")
    dirty = _git(project, "status", "--porcelain", "--untracked-files=no") if commit else ""
    tags = {
        "git.commit": commit or "unknown",
        "git.dirty": str(bool(dirty)).lower(),
        "mlflow.source.git.commit": commit or "unknown",
        "pets.version": pets.__version__,
        "python": platform.python_version(),
        "torch": torch.get("__version__", "unknown"),
        "torchvision": package_versions("torchvision").get("__version__", "unknown"),
        "cuda": torch.get("cuda", "None").replace("None", "none"),
        "host": platform.node(),
        "seed": str(params.seed),
    }
    manifest = project / MANIFEST
    with contextlib.suppress(OSError, ValueError, KeyError):
        tags["data.archive_md5"] = json.loads(manifest.read_text())["md5"]
    return tags


TRAINING_STAGES = ("train_frozen", "lr_find", "finetune", "train_resnet50")


def dataset_event(project: Path, params: Params, split_md5: str, stage: str) -> dict[str, Any]:
    """The split as the recorder logs it, an MLflow dataset input of the run (pets.datasets),
    in the stage's context: training for the training stages, evaluation for the others."""
    from pets.datasets import dataset_fields

    context = "training" if stage.split("@")[0] in TRAINING_STAGES else "evaluation"
    return {"dataset": dataset_fields(project, params.data.url, split_md5), "context": context}


def parent_opening(key: str, params: Params) -> dict[str, Any]:
    """What the recorder creates pipeline `key`'s parent run from, if this stage is its first
    to be recorded: name, tags, the whole params.yaml (tracking aside), start time."""
    tool = key.split("-")[0]
    experiment_run = experiment_tags()
    if "dvc.exp_name" in experiment_run:  # `dvc exp <name> <time>`: one per experiment
        tool = f"dvc exp {experiment_run['dvc.exp_name']}"
    return {
        "name": f"{tool} {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "time": now_ms(),
        "tags": {
            "pets.pipeline": key,
            "pets.kind": "pipeline",
            **process_tags(pipeline_pid(), os.environ.get(PIPELINE_HOST_ENV)),
            **experiment_run,
        },
        "params": redacted(flatten(params.model_dump(mode="json", exclude={"tracking"}))),
    }


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Params,
    project: Path,
    inputs: list[Path] | None = None,
    outputs: list[Path] | None = None,
) -> Iterator[Tracker]:
    """One MLflow run for one stage, a child of its pipeline's parent run, ended FINISHED,
    FAILED or KILLED, tagged with the fingerprints of its `inputs` and, when it succeeds, of
    its `outputs` (model files are logged as files only with `tracking.log_models`), written
    through the stage's journal; a plain `Tracker` (records nothing) when tracking is off."""
    if not enabled(params):
        yield Tracker()
        return
    key = pipeline_key()
    # What the stage reads, known before its run opens: the run is created with all of its
    # opening tags and params (visible while it runs).
    tags = {"pets.stage": stage, "pets.kind": "stage", "pets.pipeline": key or "by hand"}
    # Per-model stages run once per model: `interpret@stage-1`, as DVC names them.
    if "@" in stage:
        tags["pets.model"] = stage.split("@", 1)[1]
    tags.update(process_tags(os.getpid()))
    tags.update(lineage_tags(project, params))
    tags.update(experiment_tags())
    tags.update(file_tags("input", inputs or [], project))
    split_md5 = tags.get(f"input.{SPLIT}")
    with CLOCK.count("logging"):
        journal = Journal.create(
            store_root(project),
            {
                "uri": tracking_uri(project),
                "experiment": params.tracking.experiment,
                "stage": stage,
                "pipeline": key,
                "tags": tags,
                "params": redacted(flatten(stage_params(params, stage.split("@")[0]))),
                "parent": parent_opening(key, params) if key else None,
                "dataset": dataset_event(project, params, split_md5, stage)
                if split_md5 and reads_split(project, inputs or [])
                else None,
                "writer": {"pid": tags.get("pets.pid"), "start": tags.get("pets.pid_start")},
            },
        )
    tracker = JournalTracker(journal, project, params)
    status = "FAILED"
    closing: dict[str, str] = {}
    try:
        yield tracker
        closing = file_tags("output", outputs or [], project)
        for path in outputs or []:
            if params.tracking.log_models and path.suffix == ".pth":
                tracker.log_artifact(path, "models")
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        # What it made and where it ran, with the end: one line.
        with CLOCK.count("logging"):
            journal.close(status, {**closing, "device": device_name(params)})
