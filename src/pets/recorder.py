"""The project's recorder: one process per project that writes the stages' journals
(pets.journal) to MLflow, so that stage processes never import MLflow.

It is started by the first stage that opens a journal (or by snakemake as it starts), holds
`.pets/recorder.lock` while it runs, reads every journal as it grows (a run's epochs show in
MLflow while it trains), and ends once no journal has been left for `IDLE` seconds. Each journal
becomes one MLflow run, a child of its pipeline's parent run (one per `snakemake` or `dvc repro`
invocation), with the stage's own times; a journal whose stage died without closing it becomes
a KILLED run. What was recorded of each journal is noted beside it (`<journal>.state`), so a
recorder that is itself killed resumes where it was, and a journal is deleted once recorded.

`wait_recorded` waits until every finished stage has been recorded: snakemake calls it as it
ends, `pets runs` and `pets ui` before they read the runs. No stage imports this module (nor
MLflow): a stage's code is what it imports (pets.dag), and recording is not part of what a
stage makes.

    python -m pets.recorder PROJECT      # what pets.journal starts (in the background)
"""

from __future__ import annotations

import base64
import contextlib
import gc
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pets.files import atomic_path, remove
from pets.journal import files_of, pending, read_events, recorder_lock, recorder_running
from pets.processes import alive
from pets.tracking import TERMINAL, client_for_uri, experiment_id, store_root, tracking_lock

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

IDLE = 20.0  # seconds without journals before the recorder ends
POLL = 0.1  # seconds between looks at the journals
GIVE_UP = 50  # failed tries at one journal (a locked database is retried) before it is set aside


def _state_file(journal: Path) -> Path:
    return journal.with_suffix(".state")


def _load_state(journal: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        found = json.loads(_state_file(journal).read_text())
        if isinstance(found, dict):
            return found
    return {"offset": 0}


def _save_state(journal: Path, state: dict[str, Any]) -> None:
    with atomic_path(_state_file(journal)) as temporary:
        temporary.write_text(json.dumps(state))


def _forget(journal: Path) -> None:
    """Delete a recorded journal with its state and files."""
    remove(files_of(journal))
    _state_file(journal).unlink(missing_ok=True)
    journal.unlink(missing_ok=True)


def _opening(journal: Path, state: dict[str, Any]) -> dict[str, Any] | None:
    """A journal's `open` event: from its state once recorded, else its first line."""
    if "open" in state:
        return state["open"]
    events, _ = read_events(journal, 0)
    return events[0] if events and events[0].get("kind") == "open" else None


def _writer_gone(opening: dict[str, Any]) -> bool:
    writer = opening.get("writer") or {}
    if writer.get("host") not in (None, platform.node()):
        return False  # a cluster job on another host: only its own close ends it
    return not alive(str(writer.get("pid", "")), str(writer.get("start", "")) or None)


class Recorder:
    """Writes journals to MLflow: one client per tracking URI, kept for the process's life."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.clients: dict[str, MlflowClient] = {}
        self.failures: dict[Path, int] = {}

    def client(self, uri: str) -> MlflowClient:
        """The MLflow client of `uri`, made once."""
        if uri not in self.clients:
            with tracking_lock(self.store):  # a new client may create the database's tables
                self.clients[uri] = client_for_uri(uri)
            # MLflow's imports leave ~10^6 objects that every full collection would walk again.
            gc.freeze()
        return self.clients[uri]

    def record_all(self) -> int:
        """One pass over the pending journals; returns how many are left."""
        journals = pending(self.store)
        states = {journal: _load_state(journal) for journal in journals}
        openings = [_opening(journal, state) for journal, state in states.items()]
        # Runs with journals still to record are not dead, whatever their process: a `dvc
        # repro` may have ended well before its last stage is recorded.
        busy = {o["pipeline"] for o in openings if o and o.get("pipeline")}
        busy |= {s[key] for s in states.values() for key in ("run", "parent") if s.get(key)}
        left = 0
        for journal in journals:
            try:
                done = self.record(journal, busy)
            except Exception as exc:  # one bad journal must not stop the others
                self.failures[journal] = self.failures.get(journal, 0) + 1
                print(f"{journal.name}: {traceback.format_exc()}", file=sys.stderr, flush=True)
                if self.failures[journal] >= GIVE_UP:
                    self.set_aside(journal, f"{type(exc).__name__}: {exc}")
                    continue
                done = False
            left += not done
        return left

    def set_aside(self, journal: Path, error: str) -> None:
        """Give up on a journal that fails again and again: its run ends as the stage ended it
        (FAILED if it had not), tagged with the error, and the journal is kept as `.failed`."""
        print(f"{journal.name}: set aside after {GIVE_UP} tries", file=sys.stderr, flush=True)
        state = _load_state(journal)
        with contextlib.suppress(Exception):
            if "run" in state:
                client = self.client(state["open"]["uri"])
                events, _ = read_events(journal, 0)
                closing = next((e for e in events if e.get("kind") == "close"), {})
                client.set_tag(state["run"], "pets.recording_error", error[:1000])
                client.set_terminated(
                    state["run"], closing.get("status", "FAILED"), end_time=closing.get("time")
                )
        journal.rename(journal.with_suffix(".failed"))

    def record(self, journal: Path, busy: set[str]) -> bool:
        """Write what is new in one journal; True once it is recorded in full (and deleted)."""
        state = _load_state(journal)
        if "open" not in state:
            events, _ = read_events(journal, 0)
            if not events:
                if journal.stat().st_mtime < time.time() - 600:
                    _forget(journal)  # an empty journal of a stage that died while opening it
                    return True
                return False
            # Noted at once: a run created twice would show the stage twice.
            state = {**self.open_run(events[0], busy), "open": events[0], "offset": 0}
            _save_state(journal, state)
        opening = state["open"]
        # Asked before reading: a writer gone by now has written all it ever will, so a journal
        # read after that without a close is a stage that was killed.
        gone = _writer_gone(opening)
        events, offset = read_events(journal, state["offset"])
        if state["offset"] == 0:
            events = events[1:]  # the open line, recorded with the run
        client = self.client(opening["uri"])
        closing = self.apply(client, state, journal, events)
        state["offset"] = offset
        if closing is None and gone:
            closing = {"status": "KILLED", "tags": {}, "time": int(journal.stat().st_mtime * 1000)}
        if closing is None:
            _save_state(journal, state)
            return False
        self.close_run(client, state, opening, closing)
        _forget(journal)
        return True

    def open_run(self, opening: dict[str, Any], busy: set[str]) -> dict[str, Any]:
        """Create the stage's run (and its pipeline's parent, the first time); the ids made."""
        client = self.client(opening["uri"])
        tags = dict(opening["tags"])
        with tracking_lock(self.store):
            experiment = experiment_id(client, opening["experiment"], self.store)
            running = running_runs(client, experiment)
            close_dead_runs(client, experiment, running, busy)
            parent = None
            if opening.get("parent"):
                parent = find_or_create_parent(
                    client, experiment, opening["pipeline"], opening["parent"], self.store, running
                )
                tags["mlflow.parentRunId"] = parent
            run = client.create_run(
                experiment, start_time=opening["time"], run_name=opening["stage"], tags=tags
            )
        run_id = run.info.run_id
        if opening.get("dataset"):
            log_dataset(client, opening["dataset"], (run_id, parent))
        send(client, run_id, params=opening.get("params") or {})
        return {"run": run_id, "parent": parent, "experiment": experiment}

    def apply(
        self, client: MlflowClient, state: dict[str, Any], journal: Path, events: list[dict]
    ) -> dict[str, Any] | None:
        """Send a journal's new events in one batch (then its files); its `close`, if seen."""
        params: dict[str, Any] = {}
        tags: dict[str, str] = {}
        metrics: list[tuple[str, float, int, int]] = []
        files: list[dict[str, Any]] = []
        closing = None
        for event in events:
            kind = event.get("kind")
            if kind == "log":
                params.update(event.get("params") or {})
                tags.update(event.get("tags") or {})
                step = event.get("step") or 0
                for key, value in (event.get("metrics") or {}).items():
                    metrics.append((key, float(value), event["time"], step))
            elif kind in ("artifact", "register"):
                files.append(event)
            elif kind == "close":
                closing = event
        run_id = state["run"]
        send(client, run_id, params=params, tags=tags, metrics=metrics)
        for event in files:
            where = files_of(journal)
            if event["kind"] == "artifact":
                client.log_artifact(run_id, str(where / event["file"]), event.get("folder"))
            else:
                register(client, run_id, where, event)
        return closing

    def close_run(
        self,
        client: MlflowClient,
        state: dict[str, Any],
        opening: dict[str, Any],
        closing: dict[str, Any],
    ) -> None:
        """End the run as the stage ended it, and its parent when no stage of it is left."""
        status = closing["status"]
        send(client, state["run"], tags=closing.get("tags") or {})
        client.set_terminated(state["run"], status, end_time=closing["time"])
        if state.get("parent"):
            with tracking_lock(self.store):
                finish_parent(
                    client,
                    state["parent"],
                    state["experiment"],
                    (status, closing["time"]),
                    self._others(opening),
                )

    def _others(self, opening: dict[str, Any]) -> bool:
        """Whether another journal of `opening`'s pipeline waits to be recorded."""
        mine = 0
        for journal in pending(self.store):
            found = _opening(journal, _load_state(journal))
            mine += bool(found and found.get("pipeline") == opening["pipeline"])
        return mine > 1


def send(
    client: MlflowClient,
    run_id: str,
    params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    metrics: list[tuple[str, float, int, int]] | None = None,
) -> None:
    """Params, tags and metrics in as few calls as MLflow allows (100 of each per batch)."""
    from mlflow.entities import Metric, Param, RunTag

    items = [Param(key, str(value)[:6000]) for key, value in (params or {}).items()]
    labels = [RunTag(key, str(value)) for key, value in (tags or {}).items()]
    values = [Metric(key, value, when, step) for key, value, when, step in metrics or []]
    for start in range(0, max(len(items), len(labels), len(values)), 100):
        client.log_batch(
            run_id,
            params=items[start : start + 100],
            tags=labels[start : start + 100],
            metrics=values[start : start + 100],
        )


def running_runs(client: MlflowClient, experiment: str) -> list[Any]:
    """The experiment's runs still RUNNING (a handful: the stages running now and their
    pipeline), by status alone: MLflow turns each tag in a filter into a join over every tag of
    every run, which grows with the project's history."""
    return client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'")


def close_dead_runs(
    client: MlflowClient,
    experiment: str,
    running: list[Any] | None = None,
    busy: set[str] | None = None,
) -> int:
    """Mark KILLED the runs still RUNNING on this host whose process is gone (a pipeline killed
    with SIGKILL cannot say so itself), except those `busy`: pipeline keys and run ids with
    journals still to record. Returns how many. `running`: the RUNNING runs when already
    fetched; those closed are taken out of it."""
    runs = running_runs(client, experiment) if running is None else running
    busy = busy or set()
    dead = [
        run
        for run in runs
        if run.data.tags.get("pets.host") == platform.node()
        and run.info.run_id not in busy
        and not (
            run.data.tags.get("pets.kind") == "pipeline"
            and run.data.tags.get("pets.pipeline") in busy
        )
        and not alive(run.data.tags.get("pets.pid"), run.data.tags.get("pets.pid_start"))
    ]
    for run in dead:
        client.set_terminated(run.info.run_id, "KILLED")
        runs.remove(run)
    return len(dead)


PARENTS = "parents.json"  # under .pets/: pipeline key -> its parent run's id (the last few)
KEPT_PARENTS = 20


def _parents_file(store: Path) -> Path:
    return store / ".pets" / PARENTS


def _remembered_parent(store: Path, key: str) -> str | None:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        found = json.loads(_parents_file(store).read_text()).get(key)
        return found if isinstance(found, str) else None
    return None


def _remember_parent(store: Path, key: str, run_id: str) -> None:
    """Note the parent run of pipeline `key` (under the tracking lock): later stages find it by
    id instead of searching every run's tags (which grows with the project's history)."""
    known: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(_parents_file(store).read_text())
        if isinstance(loaded, dict):
            known = {k: v for k, v in loaded.items() if k != key}
    known[key] = run_id
    with contextlib.suppress(OSError), atomic_path(_parents_file(store)) as temporary:
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


def find_or_create_parent(
    client: MlflowClient,
    experiment: str,
    key: str,
    parent: dict[str, Any],
    store: Path,
    running: list[Any],
) -> str:
    """The id of pipeline `key`'s parent run, made from `parent` (name, tags, params, start
    time) by its first stage; a FINISHED parent runs again when another stage of it opens."""
    remembered = _remembered_parent(store, key)
    found = _find_parent(client, experiment, key, remembered, running)
    if found is not None:
        if found.status == "FINISHED":
            client.update_run(found.run_id, status="RUNNING")
        if remembered != found.run_id:
            _remember_parent(store, key, found.run_id)
        return found.run_id
    run = client.create_run(
        experiment, start_time=parent["time"], run_name=parent["name"], tags=parent["tags"]
    )
    send(client, run.info.run_id, params=parent["params"])
    _remember_parent(store, key, run.info.run_id)
    return run.info.run_id


def finish_parent(
    client: MlflowClient,
    parent: str,
    experiment: str,
    ended: tuple[str, int],
    waiting: bool,
) -> None:
    """After a stage of it `ended` (status, time): a failed stage fails the pipeline, and the
    last one (no stage of it RUNNING, none `waiting` to be recorded) ends it FINISHED."""
    status, when = ended
    running = running_runs(client, experiment)
    if not any(run.info.run_id == parent for run in running):
        # Already ended: FINISHED stays unless this stage failed; a failed pipeline stays failed.
        if status in TERMINAL and client.get_run(parent).info.status not in TERMINAL:
            client.set_terminated(parent, status, end_time=when)
        return
    children = [r for r in running if r.data.tags.get("mlflow.parentRunId") == parent]
    if status in TERMINAL or not (children or waiting):
        client.set_terminated(parent, status, end_time=when)


def log_dataset(
    client: MlflowClient, dataset: dict[str, Any], runs: tuple[str, str | None]
) -> None:
    """The split as an MLflow dataset input of the stage's run (in the stage's context) and of
    its parent (training: the pipeline trains on it whichever stage logs it first)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    made = Dataset(**dataset["dataset"])
    for run_id, context in zip(runs, (dataset["context"], "training"), strict=True):
        if run_id:
            used = DatasetInput(made, tags=[InputTag("mlflow.data.context", context)])
            client.log_inputs(run_id, datasets=[used])


def register(client: MlflowClient, run_id: str, files: Path, event: dict[str, Any]) -> None:
    """A `register` event: the export the stage kept in the journal's folder, logged and
    registered as a new version of the project's model (pets.registry)."""
    from pets.registry import LINEAGE, log_exported

    opened = client.get_run(run_id).data.tags
    tags = {key: opened[key] for key in LINEAGE if key in opened}
    version = log_exported(
        client,
        run_id,
        files / event["folder"],
        Path(event["project"]),
        export=Path(event["export"]),
        name=event["name"],
        copy_weights=event["copy_weights"],
        example=base64.b64decode(event["example"]),
        tags={**tags, "pets.run": run_id},
    )
    client.set_tag(run_id, "pets.model_version", f"{event['name']}/{version}")


def record_pending(store: Path, seconds: float = 300.0) -> bool:
    """Record every finished journal here and now (no recorder process; Windows); True when
    none is left but those of stages still running."""
    recorder = Recorder(store)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if recorder.record_all() == len(_unfinished(store)):
            return True
        time.sleep(POLL)
    return False


def _unfinished(store: Path) -> list[Path]:
    """Journals of stages still running (not closed, their writer alive)."""
    found = []
    for journal in pending(store):
        opening = _opening(journal, _load_state(journal))
        if opening is None or _writer_gone(opening):
            continue
        events, _ = read_events(journal, _load_state(journal)["offset"])
        if not any(event.get("kind") == "close" for event in events):
            found.append(journal)
    return found


def wait_recorded(project: Path, seconds: float = 300.0) -> bool:
    """Wait until every stage of `project` that ended has its run in MLflow (the recorder
    writes journals a moment after their stages write them); False, with a warning, if it
    takes over `seconds`."""
    store = store_root(project)
    return drain(store, seconds) if pending(store) else True


def drain(store: Path, seconds: float = 300.0) -> bool:
    """Wait until the recorder has written every journal but those of stages still running
    (starting it if it is not running); False, with a warning, if that takes over `seconds`."""
    from pets.journal import ensure_recorder

    deadline = time.monotonic() + seconds
    while len(pending(store)) > len(_unfinished(store)):
        if time.monotonic() > deadline:
            print(
                f"warning: MLflow runs are still being recorded (see {store}/.pets/recorder.log)",
                file=sys.stderr,
            )
            return False
        ensure_recorder(store)
        time.sleep(POLL)
    return True


LOCK_RETRY = 0.3  # seconds: far longer than a check holds the lock, far shorter than a run


def serve(store: Path, idle: float = IDLE) -> None:
    """The recorder's loop: hold the recorder lock, record journals as they come, and end after
    `idle` seconds with none (or at once if another recorder holds the lock)."""
    import fcntl

    lock = recorder_lock(store)
    with open(lock, "a") as handle:
        # A stage's check (`recorder_running`) holds the lock for an instant: a recorder that
        # starts in that instant tries again for a moment rather than end with nothing running.
        deadline = time.monotonic() + LOCK_RETRY
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)
        recorder = Recorder(store)
        quiet_since = time.monotonic()
        while True:
            if pending(store):
                recorder.record_all()
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > idle or not lock.parent.is_dir():
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
                # A stage that found the lock held before we let go started no recorder: its
                # journal is on disk by now, so look once more before ending.
                if not pending(store) or not lock.parent.is_dir() or recorder_running(store):
                    return
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return
            time.sleep(POLL)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    now = arguments[:1] == ["--now"]  # record what is pending and end (no flock: Windows)
    if len(arguments) != 1 + now or arguments[-1] in ("-h", "--help"):
        sys.exit("usage: python -m pets.recorder [--now] PROJECT  (the stages start it)")
    store = Path(arguments[-1]).resolve()
    if now:
        record_pending(store)
    else:
        os.nice(5)  # the stages' work comes first
        serve(store)
