"""Everything MLflow: where runs go, one parent run per pipeline invocation (a `snakemake` or
`dvc repro` command), one child run per stage that ran, and the lineage tags on each."""

from __future__ import annotations

import ast
import contextlib
import gc
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
from pets.paths import MANIFEST, SPLIT
from pets.processes import PIPELINE_HOST_ENV, alive, pipeline_key, pipeline_pid, process_tags
from pets.timings import CLOCK

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

TERMINAL = ("FAILED", "KILLED")
# MLflow 3's UI shows an experiment as GenAI (traces) unless it is marked as model training.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


class Tracker:
    """Where a stage reports what it did. This base class records nothing: tracking is off."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        """Record parameters (flat keys)."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Record metrics, at `step` (the epoch) when given."""

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        """Attach a file (a figure, a table) to the run."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """Record tags (lineage: code, data, software, device)."""


class MlflowTracker(Tracker):
    """A stage's MLflow run, written through one client (the seconds its calls take are counted
    as the stage's recording: pets.timings). Params, tags and metrics without a step are kept
    until `flush` (the stage's closing batch sends them with its output fingerprints: one
    call, not one per kind); metrics at a step (an epoch) go at once, so a run shows its
    epochs while it trains. `project` and `params`: what the export stage needs to register
    its model (pets.registry)."""

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        project: Path | None = None,
        params: Params | None = None,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.project, self.params = project, params
        self._params: dict[str, Any] = {}
        self._tags: dict[str, str] = {}
        self._metrics: list[tuple[str, float, int]] = []

    def log_params(self, params: dict[str, Any]) -> None:
        self._params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        items = [(key, float(value), now) for key, value in metrics.items()]
        if step is None:
            self._metrics += items
        else:
            self._send(metrics=items, step=step)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        with CLOCK.count("logging"):
            self.client.log_artifact(self.run_id, str(path), folder)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._tags.update(tags)

    def log_batch(
        self, params: dict[str, Any] | None = None, tags: dict[str, str] | None = None
    ) -> None:
        """Record params and tags now, with whatever is kept: one call per 100 of each
        (MLflow's limit per batch), not one per kind."""
        self._params.update(params or {})
        self._tags.update(tags or {})
        self.flush()

    def flush(self) -> None:
        """Send the params, tags and metrics kept so far."""
        metrics, self._metrics = self._metrics, []
        params, self._params = self._params, {}
        tags, self._tags = self._tags, {}
        self._send(params=params, tags=tags, metrics=metrics)

    def _send(
        self,
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        metrics: list[tuple[str, float, int]] | None = None,
        step: int = 0,
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        items = [Param(key, str(value)[:6000]) for key, value in (params or {}).items()]
        labels = [RunTag(key, str(value)) for key, value in (tags or {}).items()]
        values = [Metric(key, value, when, step) for key, value, when in metrics or []]
        with CLOCK.count("logging"):
            for start in range(0, max(len(items), len(labels), len(values)), 100):
                self.client.log_batch(
                    self.run_id,
                    params=items[start : start + 100],
                    tags=labels[start : start + 100],
                    metrics=values[start : start + 100],
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


def client_for(project: Path) -> MlflowClient:
    """An MLflow client on the project's tracking store."""
    from mlflow.tracking import MlflowClient

    quiet_mlflow()
    return MlflowClient(tracking_uri(project))


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
    """Create the tracking database and experiment once, before parallel jobs start."""
    if enabled(params):
        with _lock(project):
            experiment_id(client_for(project), params.tracking.experiment, project)


def running_runs(client: MlflowClient, experiment: str) -> list[Any]:
    """The experiment's runs still RUNNING (a handful: the stages running now and their
    pipeline), by status alone: MLflow turns each tag in a filter into a join over every tag of
    every run, which grows with the project's history."""
    return client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'")


def close_dead_runs(client: MlflowClient, experiment: str, running: list[Any] | None = None) -> int:
    """Mark KILLED the runs still RUNNING on this host whose process is gone (a stage or a
    pipeline killed with SIGKILL cannot say so itself); returns how many. `running`: the
    experiment's RUNNING runs when already fetched (`running_runs`); those closed are taken
    out of it."""
    runs = running_runs(client, experiment) if running is None else running
    dead = [
        run
        for run in runs
        if run.data.tags.get("pets.host") == platform.node()
        and not alive(run.data.tags.get("pets.pid"), run.data.tags.get("pets.pid_start"))
    ]
    for run in dead:
        client.set_terminated(run.info.run_id, "KILLED")
        runs.remove(run)
    return len(dead)


def _lock(project: Path) -> FileLock:
    # The store's lock, not the copy's: queued experiments run side by side (`-j N`), each in
    # its own copy, all writing to the project's mlflow.db.
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


PARENTS = "parents.json"  # under .pets/: pipeline key -> its parent run's id (the last few)
KEPT_PARENTS = 20


def _parents_file(project: Path) -> Path:
    return project / ".pets" / PARENTS


def _remembered_parent(project: Path, key: str) -> str | None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        found = json.loads(_parents_file(project).read_text()).get(key)
        return found if isinstance(found, str) else None
    return None


def _remember_parent(project: Path, key: str, run_id: str) -> None:
    """Note the parent run of pipeline `key` (called under the tracking lock): the pipeline's
    next stages find it by id instead of searching every run's tags (searching cost a stage
    0.12 s of CPU on a fresh project, more as runs pile up)."""
    from pets.files import atomic_path

    known: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(_parents_file(project).read_text())
        if isinstance(loaded, dict):
            known = {k: v for k, v in loaded.items() if k != key}
    known[key] = run_id
    with contextlib.suppress(OSError), atomic_path(_parents_file(project)) as temporary:
        temporary.write_text(json.dumps(dict(list(known.items())[-KEPT_PARENTS:])))


def _find_parent(
    client: MlflowClient, experiment: str, key: str, remembered: str | None, running: list[Any]
) -> Any | None:
    """The parent run of pipeline `key` (its `RunInfo`), or None: among the `running` runs by
    its `remembered` id, else by that id, else by searching the pipeline's tags."""
    from mlflow.exceptions import MlflowException

    for run in running:
        if run.info.run_id == remembered:
            return run.info
    if remembered:
        with contextlib.suppress(MlflowException):
            run = client.get_run(remembered)
            tags = run.data.tags
            if (
                run.info.experiment_id == experiment
                and tags.get("pets.pipeline") == key
                and tags.get("pets.kind") == "pipeline"
            ):
                return run.info
    runs = client.search_runs(
        [experiment],
        filter_string=f"tags.`pets.pipeline` = '{key}' and tags.`pets.kind` = 'pipeline'",
        max_results=1,
    )
    return runs[0].info if runs else None


def _find_or_create_parent(
    client: MlflowClient,
    experiment: str,
    key: str,
    params: Params,
    project: Path,
    running: list[Any],
) -> str:
    remembered = _remembered_parent(project, key)
    found = _find_parent(client, experiment, key, remembered, running)
    if found is not None:
        if found.status == "FINISHED":  # a stage of it ran before: running again
            client.update_run(found.run_id, status="RUNNING")
        if remembered != found.run_id:
            _remember_parent(project, key, found.run_id)
        return found.run_id
    tool = key.split("-")[0]
    experiment_run = experiment_tags()
    if "dvc.exp_name" in experiment_run:  # `dvc exp <name> <time>`: one per experiment
        tool = f"dvc exp {experiment_run['dvc.exp_name']}"
    name = f"{tool} {time.strftime('%Y-%m-%d %H:%M:%S')}"
    run = client.create_run(
        experiment,
        run_name=name,
        tags={
            "pets.pipeline": key,
            "pets.kind": "pipeline",
            **process_tags(pipeline_pid(), os.environ.get(PIPELINE_HOST_ENV)),
            **experiment_run,
        },
    )
    tracker = MlflowTracker(client, run.info.run_id)
    tracker.log_batch(redacted(flatten(params.model_dump(mode="json", exclude={"tracking"}))))
    _remember_parent(project, key, run.info.run_id)
    return run.info.run_id


def _finish_parent(client: MlflowClient, parent: str, experiment: str, status: str) -> None:
    running = running_runs(client, experiment)
    if not any(run.info.run_id == parent for run in running):
        # Already ended: FINISHED stays unless this stage failed; one failed stage marks the
        # whole pipeline failed, and a failed pipeline stays failed.
        if status in TERMINAL and client.get_run(parent).info.status not in TERMINAL:
            client.set_terminated(parent, status)
        return
    children = [r for r in running if r.data.tags.get("mlflow.parentRunId") == parent]
    if status in TERMINAL or not children:  # stages still running keep the pipeline RUNNING
        client.set_terminated(parent, status)


TRAINING_STAGES = ("train_frozen", "lr_find", "finetune", "train_resnet50")


def _log_dataset(
    client: MlflowClient,
    project: Path,
    params: Params,
    split_md5: str,
    stage: str,
    runs: tuple[str, str | None],
) -> None:
    """The split as an MLflow dataset input of the stage's run and of its pipeline's parent
    (MLflow keeps one record per data set and run, however many stages log it)."""
    from pets.datasets import dataset_input

    context = "training" if stage.split("@")[0] in TRAINING_STAGES else "evaluation"
    with CLOCK.count("logging"):
        # The parent trains on it whichever of its stages logs it first.
        made: dict[str, Any] = {}  # one input per context: a training stage's serves both
        for run_id, used in zip(runs, (context, "training"), strict=True):
            if run_id:
                if used not in made:
                    made[used] = dataset_input(project, params.data.url, split_md5, used)
                client.log_inputs(run_id, datasets=[made[used]])


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
    its `outputs` (model files are logged as files only with `tracking.log_models`); a plain
    `Tracker` (records nothing) when tracking is off."""
    if not enabled(params):
        yield Tracker()
        return
    client = client_for(project)
    # MLflow's imports leave ~10^6 objects that the next full collection would walk (0.11 s of
    # CPU, measured, within the run's first calls): they live as long as the process anyway.
    gc.freeze()
    key = pipeline_key()
    # What the stage reads, known before its run opens: the run is created with all of its
    # opening tags, and its params follow in one batch (visible while it runs).
    tags = {"pets.stage": stage, "pets.kind": "stage", "pets.pipeline": key or "by hand"}
    # Per-model stages run once per model: `interpret@stage-1`, as DVC names them.
    if "@" in stage:
        tags["pets.model"] = stage.split("@", 1)[1]
    tags.update(process_tags(os.getpid()))
    tags.update(lineage_tags(project, params))
    tags.update(experiment_tags())
    tags.update(file_tags("input", inputs or [], project))
    with _lock(project):
        experiment = experiment_id(client, params.tracking.experiment, project)
        running = running_runs(client, experiment)
        close_dead_runs(client, experiment, running)
        parent_id = (
            _find_or_create_parent(client, experiment, key, params, project, running)
            if key
            else None
        )
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        run = client.create_run(experiment, run_name=stage, tags=tags)
    tracker = MlflowTracker(client, run.info.run_id, project, params)
    status = "FAILED"
    closing: dict[str, str] = {}
    try:
        split_md5 = tags.get(f"input.{SPLIT}")
        if split_md5 and reads_split(project, inputs or []):
            _log_dataset(client, project, params, split_md5, stage, (run.info.run_id, parent_id))
        tracker.log_batch(params=redacted(flatten(stage_params(params, stage.split("@")[0]))))
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
        try:  # what it made, where it ran, and what the stage kept back, in one batch
            tracker.log_batch(tags={**closing, "device": device_name(params)})
        finally:
            client.set_terminated(run.info.run_id, status)
            if parent_id:
                with _lock(project):
                    _finish_parent(client, parent_id, experiment, status)
