"""A stage's run as a journal: JSON lines a stage appends as it works, which the project's
recorder (pets.recorder) writes to MLflow.

Importing MLflow and opening its SQLite store cost a stage process about 1.5 s of CPU, more than
the work of most stages; a journal line costs microseconds. So a stage writes its run to
`.pets/journal/<time>-<pid>.jsonl` under the store's project, and one recorder process per
project, started by the first stage that needs it and ending when idle, turns each journal into
an MLflow run (with the times the stage wrote, not the times it was recorded), marks KILLED the
runs of stages that died before closing their journal, and deletes each journal once recorded.

Events, one per line, each with its `kind`: `open` (everything the run is created with), `log`
(params, tags and metrics, at a step or not), `artifact` (a file, linked or copied at once into
the journal's folder, so a later rewrite of the output does not change what is recorded),
`register` (the export folder to register as a model version) and `close` (status, the
closing tags, the end time)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

JOURNALS = Path(".pets") / "journal"
SUFFIX = ".jsonl"

try:
    import fcntl
except ImportError:  # Windows: no recorder process; each stage records its run as it closes
    fcntl = None  # type: ignore[assignment]


def journal_folder(store: Path) -> Path:
    """Where the journals of the runs of `store` (a project's tracking root) are written."""
    return store / JOURNALS


def now_ms() -> int:
    """MLflow's time unit: milliseconds since the epoch."""
    return int(time.time() * 1000)


def files_of(journal: Path) -> Path:
    """The folder holding the files a journal's `artifact` and `register` events name."""
    return journal.with_suffix(".files")


class Journal:
    """One stage's journal, open for appending (one writer: the stage process)."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self._handle = handle
        self._files = 0

    @classmethod
    def create(cls, store: Path, opening: dict[str, Any]) -> Journal:
        """Start a journal with its `open` event, and make sure a recorder will write it."""
        folder = journal_folder(store)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{time.time_ns()}-{os.getpid()}{SUFFIX}"
        journal = cls(path, open(path, "a", encoding="utf-8"))  # noqa: SIM115 - closed by close()
        journal.write({"kind": "open", "time": now_ms(), **opening})
        # After the `open` line is on disk: a recorder about to end looks for journals again
        # once it has let go of its lock (pets.recorder.serve), so one of the two sees it.
        ensure_recorder(store)
        return journal

    def write(self, event: dict[str, Any]) -> None:
        """Append one event (a whole line, flushed: the recorder reads complete lines)."""
        self._handle.write(json.dumps(event, default=str) + "\n")
        self._handle.flush()

    def keep_files(self, folder: Path, names: list[str]) -> str:
        """Link (or copy, across disks) `folder`'s files `names` into one new folder of the
        journal's, as they are now; returns that folder's name. Outputs are replaced by
        renaming, so a link keeps this version whatever the stage writes next."""
        self._files += 1
        kept = str(self._files)
        for name in names:
            target = files_of(self.path) / kept / name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(folder / name, target)
            except OSError:
                shutil.copy2(folder / name, target)
        return kept

    def close(self, status: str, tags: dict[str, str]) -> None:
        """Write the `close` event and let go of the file."""
        with contextlib.suppress(ValueError):  # closed already
            self.write({"kind": "close", "time": now_ms(), "status": status, "tags": tags})
            self._handle.close()
        if fcntl is None:  # no recorder process without flock: record the run now, in another
            store = self.path.parent.parent.parent  # process (a stage never imports MLflow)
            subprocess.run(
                [sys.executable, "-m", "pets.recorder", "--now", str(store)], check=False
            )


def read_events(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The complete events of a journal from byte `offset` on, and the offset after them (a
    line still being written is left for the next read)."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read()
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return events, offset + end


def pending(store: Path) -> list[Path]:
    """The journals not yet recorded, oldest first."""
    folder = journal_folder(store)
    with contextlib.suppress(OSError):
        return sorted(folder.glob(f"*{SUFFIX}"), key=lambda p: p.name)
    return []


RECORDER_LOCK = "recorder.lock"


def recorder_lock(store: Path) -> Path:
    """The lock file the project's one recorder holds while it runs."""
    return store / ".pets" / RECORDER_LOCK


def recorder_running(store: Path) -> bool:
    """Whether a recorder holds the project's recorder lock now."""
    if fcntl is None:
        return False
    path = recorder_lock(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return False


def ensure_recorder(store: Path) -> None:
    """Start the project's recorder unless one runs: a process of its own (its own session, so
    that stopping the pipeline with Ctrl-C does not stop the recording of what it did), its
    output in `.pets/recorder.log`."""
    if fcntl is None or recorder_running(store):
        return
    with open(store / ".pets" / "recorder.log", "a") as log:
        subprocess.Popen(
            [sys.executable, "-m", "pets.recorder", str(store)],
            cwd=store,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
