"""One pipeline at a time in a project.

A `snakemake` run holds two locks for as long as it runs: the project's own
(`.pets/pipeline.lock`, against a second `snakemake`) and DVC's repository lock
(`.dvc/tmp/lock`, which `dvc repro` and `dvc exp run` take), so whichever pipeline starts second
stops at once with a clear message, before it touches a file. They are `flock` locks: the
system drops them when the process ends, even when it is killed, so a killed run leaves
nothing to unlock by hand."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from pets.errors import PetsError

try:
    import fcntl
except ImportError:  # Windows: Snakemake's and DVC's own locks are all there is
    fcntl = None  # type: ignore[assignment]


def _hold(path: Path, who: str) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held open for as long as the run lasts
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise PetsError(
            f"{who} is already running in this project ({path} is held); wait for it to "
            "finish, or stop it"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"snakemake, pid {os.getpid()}\n")
    handle.flush()
    return handle


def hold_project(project: Path) -> list[IO[str]]:
    """Take the project's pipeline lock and DVC's repository lock (when the project has a
    `.dvc` folder); raises `PetsError` naming who holds one. Keep the returned handles open for
    the whole run."""
    if fcntl is None:
        return []
    handles = [_hold(project / ".pets" / "pipeline.lock", "another snakemake")]
    if (project / ".dvc").is_dir():
        try:
            handles.append(_hold(project / ".dvc" / "tmp" / "lock", "dvc (repro or exp run)"))
        except PetsError:
            handles[0].close()
            raise
    return handles
