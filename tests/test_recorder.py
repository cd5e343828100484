"""Stages write their runs as journals and never import MLflow; the project's recorder writes
the journals to MLflow: live while a stage runs, with the stage's own times, KILLED when a
stage dies unclosed, exactly once even when the recorder itself is killed and started again."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from pets.config import parse_params
from pets.journal import journal_folder, pending, recorder_lock, recorder_running
from pets.recorder import Recorder, serve
from pets.tracking import stage_run
from tests.helpers import mlflow_client, tool_env

# A stage that logs `epochs` epochs, then waits for the file `go` before it ends.
STAGE = """
import json, sys, time
from pathlib import Path
from pets.config import parse_params
from pets.tracking import stage_run
project, epochs = Path(sys.argv[1]), int(sys.argv[2])
params = parse_params({"tracking": {"experiment": "rec"}})
with stage_run("train_frozen", params, project) as tracker:
    tracker.log_params({"extra": 1})
    for epoch in range(epochs):
        tracker.log_metrics({"valid_loss": 1.0 / (epoch + 1)}, step=epoch)
    print(json.dumps({"mlflow": "mlflow" in sys.modules}), flush=True)
    while not (project / "go").exists():
        time.sleep(0.02)
    tracker.log_metrics({"final_valid_loss": 0.25})
"""


def _stage(project: Path, epochs: int, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", STAGE, str(project), str(epochs)],
        stdout=subprocess.PIPE,
        text=True,
        env=tool_env(**env),
    )


def _wait(condition, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _stage_runs(project: Path) -> list:
    client = mlflow_client(project)
    experiment = client.get_experiment_by_name("rec")
    found = client.search_runs([experiment.experiment_id]) if experiment else []
    return [run for run in found if run.data.tags.get("pets.kind") == "stage"]


def test_a_stage_never_imports_mlflow_and_its_epochs_show_while_it_runs(tmp_path: Path) -> None:
    stage = _stage(tmp_path, 3, PETS_PIPELINE="snakemake-1-1")
    assert json.loads(stage.stdout.readline()) == {"mlflow": False}
    client = None
    try:
        from pets.tracking import client_for

        def shown() -> bool:
            nonlocal client
            client = client or client_for(tmp_path)
            experiment = client.get_experiment_by_name("rec")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            return any(
                r.info.status == "RUNNING" and len(r.data.metrics) and r.info.run_name != "rec"
                for r in runs
            )

        _wait(shown, "the running stage's epochs in MLflow")
    finally:
        (tmp_path / "go").touch()
        assert stage.wait(60) == 0
    (run,) = _stage_runs(tmp_path)
    assert run.info.status == "FINISHED" and run.data.params["extra"] == "1"
    history = mlflow_client(tmp_path).get_metric_history(run.info.run_id, "valid_loss")
    assert [m.step for m in history] == [0, 1, 2]
    assert run.data.metrics["final_valid_loss"] == 0.25
    assert run.info.end_time - run.info.start_time < 60_000
    assert not pending(tmp_path)  # recorded, then deleted


@contextlib.contextmanager
def _recorder_held(project: Path) -> Iterator[None]:
    """Hold the project's recorder lock, as a running recorder does: stages start none, and
    the test records by hand, step by step."""
    lock = recorder_lock(project)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


def test_a_killed_recorder_records_nothing_twice(tmp_path: Path) -> None:
    params = parse_params({"tracking": {"experiment": "rec"}})
    with _recorder_held(tmp_path):
        with stage_run("labels", params, tmp_path) as tracker:
            tracker.log_metrics({"valid_loss": 0.5}, step=0)
            (journal,) = pending(tmp_path)
            assert Recorder(tmp_path).record_all() == 1  # open, so left for later
            state = journal.with_suffix(".state")
            noted = state.read_text()
            tracker.log_metrics({"valid_loss": 0.4}, step=1)
            Recorder(tmp_path).record_all()
            state.write_text(noted)  # killed after sending, before noting what it sent
            assert Recorder(tmp_path).record_all() == 1
        assert Recorder(tmp_path).record_all() == 0
    (run,) = _stage_runs(tmp_path)
    history = mlflow_client(tmp_path).get_metric_history(run.info.run_id, "valid_loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.5), (1, 0.4)]
    assert run.info.status == "FINISHED"


def test_a_stage_that_dies_unclosed_is_killed(tmp_path: Path) -> None:
    with _recorder_held(tmp_path):
        dying = STAGE.replace("    while not", "    import os; os._exit(9)\n    while not")
        done = subprocess.run(
            [sys.executable, "-c", dying, str(tmp_path), "2"], env=tool_env(), text=True
        )
        assert done.returncode == 9
        assert Recorder(tmp_path).record_all() == 0
    (run,) = _stage_runs(tmp_path)
    assert run.info.status == "KILLED"
    history = mlflow_client(tmp_path).get_metric_history(run.info.run_id, "valid_loss")
    assert [m.step for m in history] == [0, 1]  # what it wrote before it died


def test_one_recorder_per_project_ending_when_idle(tmp_path: Path) -> None:
    (tmp_path / ".pets").mkdir()
    # Idle for 3 s: the checks below must see it before it ends, on a machine busy with other
    # tests (0.5 s was once missed).
    first = threading.Thread(target=serve, args=(tmp_path, 3.0))
    first.start()
    _wait(lambda: recorder_running(tmp_path), "the recorder to hold its lock")
    started = time.monotonic()
    serve(tmp_path, 0.5)  # a second one ends at once
    assert time.monotonic() - started < 1
    first.join(30)
    assert not first.is_alive() and not recorder_running(tmp_path)
    assert journal_folder(tmp_path) == tmp_path / ".pets" / "journal"


def test_stopping_the_pipeline_does_not_stop_the_recording(tmp_path: Path) -> None:
    # The recorder runs in its own session: Ctrl-C or a SIGTERM to the pipeline's process
    # group, which stops the stages, leaves it to record them.
    stage = subprocess.Popen(
        [sys.executable, "-c", STAGE, str(tmp_path), "1"],
        stdout=subprocess.PIPE,
        text=True,
        env=tool_env(),
        start_new_session=True,
    )
    stage.stdout.readline()
    os.killpg(stage.pid, signal.SIGTERM)
    stage.wait(60)
    (run,) = _stage_runs(tmp_path)
    assert run.info.status == "KILLED"


def test_an_export_registered_through_the_journal_is_the_export_as_it_was(tmp_path: Path) -> None:
    from pets.export import SPEC, WEIGHTS
    from pets.files import md5_file
    from tests.helpers import write_export

    params = parse_params({"tracking": {"experiment": "rec", "model_name": "mine"}})
    export = write_export(tmp_path / "models" / "export", ["a", "b"], seed=1)
    md5 = md5_file(export / WEIGHTS)
    with _recorder_held(tmp_path):
        with stage_run("export", params, tmp_path) as tracker:
            tracker.register_model(export, [SPEC, WEIGHTS], b"not a photo")
        write_export(export, ["a", "b"], seed=2)  # the next export, before it is recorded
        assert Recorder(tmp_path).record_all() == 0
    client = mlflow_client(tmp_path)
    (version,) = client.search_model_versions("name='mine'")
    (run,) = _stage_runs(tmp_path)
    assert version.run_id == run.info.run_id and version.tags["weights.md5"] == md5
    assert run.data.tags["pets.model_version"] == "mine/1"
    assert not list((tmp_path / ".pets" / "journal").iterdir())  # its linked files went too
