"""Where a stage process's seconds go: start-up (interpreter, imports, params, lock), its work,
and recording (MLflow and fingerprints). `run_stage` keeps one `Clock` per process; with
`$PETS_TIMINGS` set to a folder it writes `<folder>/<stage>.json` as it ends, which
benchmarks/fixed_costs.py and benchmarks/gpu_check.sh read."""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TIMINGS_ENV = "PETS_TIMINGS"


class Clock:
    """Named wall-clock instants (`mark`) and seconds summed over named activities (`count`)."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self.spent: dict[str, float] = {}
        self.spent_at: dict[str, dict[str, float]] = {}  # `spent` as it was at each mark
        self._depth: dict[str, int] = {}

    def mark(self, name: str) -> None:
        """Record the instant `name` (seconds since the epoch, as process start times are)."""
        self.marks[name] = time.time()
        self.spent_at[name] = dict(self.spent)

    def _during_work(self, name: str) -> float:
        after = self.spent_at.get("worked", self.spent)
        return after.get(name, 0.0) - self.spent_at.get("work", {}).get(name, 0.0)

    @contextlib.contextmanager
    def count(self, name: str) -> Iterator[None]:
        """Add the seconds the block takes to `name`; nested blocks of one name count once."""
        depth = self._depth.get(name, 0)
        self._depth[name] = depth + 1
        start = time.perf_counter()
        try:
            yield
        finally:
            self._depth[name] = depth
            if depth == 0:
                self.spent[name] = self.spent.get(name, 0.0) + time.perf_counter() - start

    def split(self) -> dict[str, float]:
        """start-up, work, recording (of which fingerprints) and total seconds of this process,
        from its start to now; imports made by the stage's `main` count as start-up."""
        now = time.time()
        begun = self.marks.get("process", self.marks.get("main", now))
        opened, closed = self.marks.get("opened", now), self.marks.get("closed", now)
        work_start, work_end = self.marks.get("work", opened), self.marks.get("worked", closed)
        imports = self._during_work("imports")  # before its work they are in `opened - begun`
        logging = self._during_work("logging")  # the stage's own tracker calls
        opening = max(0.0, work_start - opened)
        closing = max(0.0, closed - work_end)
        recording = opening + closing + logging
        startup = max(0.0, opened - begun) + imports
        return {
            "startup_s": startup,
            "work_s": max(0.0, (work_end - work_start) - imports - logging),
            "recording_s": recording,
            "fingerprints_s": self.spent.get("fingerprints", 0.0),
            "total_s": now - begun,
        }


CLOCK = Clock()


def _process_start() -> float | None:
    with contextlib.suppress(Exception):
        import psutil

        return psutil.Process().create_time()
    return None


def start() -> None:
    """Begin timing this stage process (from when the system started it); with `$PETS_TIMINGS`
    set, also the seconds its imports take (an `__import__` hook, only then: it costs a little
    on every import statement)."""
    CLOCK.mark("main")
    began = _process_start()
    if began is not None:
        CLOCK.marks["process"] = began
    if not os.environ.get(TIMINGS_ENV) or builtins.__import__.__name__ == "timed_import":
        return
    original = builtins.__import__

    def timed_import(*args: Any, **kwargs: Any) -> Any:
        with CLOCK.count("imports"):
            return original(*args, **kwargs)

    builtins.__import__ = timed_import


def summary() -> str:
    """`start-up 0.8 s, work 0.3 s, recording 0.1 s` for the stage's last log line."""
    split = CLOCK.split()
    return (
        f"start-up {split['startup_s']:.1f} s, work {split['work_s']:.1f} s, "
        f"recording {split['recording_s']:.1f} s"
    )


def write(stage: str, status: str) -> Path | None:
    """Write this process's split to `$PETS_TIMINGS/<stage>.json`, if that is set."""
    folder = os.environ.get(TIMINGS_ENV)
    if not folder:
        return None
    path = Path(folder) / f"{stage}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"stage": stage, "status": status, "pid": os.getpid(), **CLOCK.split()}
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(temporary, path)  # a reader never sees half a record
    return path
