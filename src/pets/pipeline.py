"""One pipeline at a time in a project, and one record of what each pipeline built.

A `snakemake` run holds the project lock (`.pets/pipeline.lock`) exclusively and DVC's
repository lock (`.dvc/tmp/lock`) for as long as it runs; every stage process holds the project
lock shared while it works, unless it belongs to the snakemake run that holds it. So:
- a second `snakemake` stops at once, naming the snakemake or the stage that holds the project;
- `dvc repro` stops at once while snakemake runs (DVC cannot take its lock);
- `snakemake` started while `dvc repro` runs a stage stops at once (DVC lets go of its own lock
  while a stage's command runs, but the stage holds the project);
- a stage run by hand while snakemake runs stops at once.
They are `flock` locks, which the system drops when a process ends, even when it is killed. With
DVC's `core.hardlink_lock` (for NFS) DVC's lock is a file that exists only while held: snakemake
then takes it through DVC's own lock class, which removes it when the run ends.

After a snakemake run (successful or not), the stages it finished are recorded in dvc.lock as
`dvc commit` does, so `dvc repro` sees them as up to date. The commit runs while snakemake still
holds DVC's lock (the committing process is told it holds it on snakemake's behalf): letting go
first would let a `dvc repro` in, and the commit would then fail."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from pets.errors import PetsError
from pets.processes import PIPELINE_ENV, pipeline_key

try:
    import fcntl
except ImportError:  # Windows: Snakemake's and DVC's own locks are all there is
    fcntl = None  # type: ignore[assignment]

STATE = ".pets"


def _state(project: Path, *parts: str) -> Path:
    return project.joinpath(STATE, *parts)


def _open(path: Path) -> IO[str]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a+")
    except PermissionError:
        raise PetsError(
            f"{path}: permission denied: this project belongs to another user; run in a copy "
            "of your own (git clone), or ask its owner to make it group-writable"
        ) from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _running_stages(project: Path) -> list[str]:
    """Who holds the project shared: the stages running now (stale records are removed)."""
    found = []
    for record in sorted(_state(project, "stages").glob("*")):
        with contextlib.suppress(OSError, ValueError):
            if _alive(int(record.name)):
                found.append(record.read_text().strip())
            else:
                record.unlink()
    return found


def _holder(project: Path) -> str:
    # A snakemake run's own jobs are named by the run (its line in pipeline.lock), so the
    # message does not depend on whether one of its jobs happens to be running; a stage of
    # DVC's or one run by hand is named itself.
    stages = _running_stages(project)
    others = [stage for stage in stages if not stage.startswith("snakemake")]
    if others:
        return others[0]
    line = ""
    with contextlib.suppress(OSError):
        line = _state(project, "pipeline.lock").read_text().split("\n")[0].strip()
    found = re.match(r"snakemake \(pid (\d+),", line)
    if found and _alive(int(found.group(1))):
        return line
    return (stages or [line or "another pipeline"])[0]


def _refusal(project: Path) -> PetsError:
    return PetsError(
        f"{_holder(project)} is running in this project; wait for it to finish, or stop it"
    )


def _lock(handle: IO[str], mode: int) -> bool:
    try:
        fcntl.flock(handle.fileno(), mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _who(stage: str) -> str:
    key = os.environ.get(PIPELINE_ENV, "")
    if key.startswith("dvc") or _under_dvc():
        return f"dvc repro (stage {stage}, pid {os.getpid()})"
    if key.startswith("snakemake"):
        return f"snakemake (stage {stage}, pid {os.getpid()})"
    return f"the stage {stage} run by hand (pid {os.getpid()})"


def _under_dvc() -> bool:
    return (pipeline_key() or "").startswith("dvc")


@contextlib.contextmanager
def hold_stage(project: Path, stage: str) -> Iterator[None]:
    """Hold the project shared while a stage runs; raises `PetsError` naming the pipeline that
    holds it, unless that is the snakemake run this stage belongs to."""
    if fcntl is None:
        yield
        return
    handle = _open(_state(project, "pipeline.lock"))
    try:
        if not _lock(handle, fcntl.LOCK_SH):
            holder = handle.read() if handle.seek(0) == 0 else ""
            key = os.environ.get(PIPELINE_ENV)
            if not key or f"key {key}" not in holder:
                raise _refusal(project)
        record = _state(project, "stages", str(os.getpid()))
        record.parent.mkdir(exist_ok=True)
        record.write_text(_who(stage) + "\n")
        try:
            yield
        finally:
            record.unlink(missing_ok=True)
    finally:
        handle.close()


def hardlink_lock(project: Path) -> bool:
    """Whether DVC is set to its NFS mode (`core.hardlink_lock`) in this project."""
    for name in ("config", "config.local"):
        with contextlib.suppress(OSError):
            text = (project / ".dvc" / name).read_text()
            section = re.search(r"^\[core\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
            if section:
                found = re.search(r"^\s*hardlink_lock\s*=\s*(\w+)", section.group(1), re.M)
                if found and found.group(1).lower() in ("true", "1", "yes"):
                    return True
    return False


# The files DVC's flock-mode locks (zc.lockfile) leave behind when they are let go.
FLOCK_LOCK_FILES = ("lock", "rwlock.lock")


def clear_flock_leftovers(tmp: Path) -> list[str]:
    """Remove what DVC's flock mode left in `.dvc/tmp` (its lock files stay after release, with
    " <pid>" in them); in NFS mode their mere existence reads as held, so a project switched to
    `core.hardlink_lock` after flock-mode runs would be locked for good. Returns what went."""
    removed = []
    for name in FLOCK_LOCK_FILES:
        path = tmp / name
        try:
            # A held NFS lock is a hard link to its holder's claim file (2 links), with the
            # claim's name in it; a flock-mode file has one link and a pid, or nothing (the
            # lock snakemake itself held in flock mode: it writes no pid).
            if path.stat().st_nlink != 1 or not re.fullmatch(r"( ?\d+)?\n?", path.read_text()):
                continue
            with open(path, "a") as handle:
                if fcntl is not None and not _lock(handle, fcntl.LOCK_EX):
                    continue  # a flock-mode DVC holds it now
                path.unlink()
        except (OSError, UnicodeDecodeError):
            continue
        removed.append(name)
    return removed


class ProjectHold:
    """What a snakemake run holds: the project lock, exclusively, and DVC's lock."""

    def __init__(self, project: Path, key: str) -> None:
        self.project = project
        self.key = key
        self.handles: list[IO[str]] = []
        self.dvc_lock: Any = None

    def take(self) -> None:
        """Take both locks, or raise `PetsError` naming who holds the project."""
        if fcntl is None:
            return
        handle = _open(_state(self.project, "pipeline.lock"))
        if not _lock(handle, fcntl.LOCK_EX):
            handle.close()
            raise _refusal(self.project)
        # The holder line is written once both locks are held: a line from an earlier run
        # goes at once, and whoever reads this run's line may rely on DVC's lock being taken.
        handle.seek(0)
        handle.truncate()
        handle.flush()
        self.handles.append(handle)
        if (self.project / ".dvc").is_dir():
            try:
                self._take_dvc()
            except PetsError:
                self.release()
                raise
        handle.write(f"snakemake (pid {os.getpid()}, key {self.key})\n")
        handle.flush()

    def _take_dvc(self) -> None:
        tmp = self.project / ".dvc" / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        refused = PetsError(
            "dvc (repro or exp run) is running in this project (.dvc/tmp/lock is held); wait "
            "for it to finish, or stop it"
        )
        if hardlink_lock(self.project):
            # DVC's NFS lock is the file's existence: take it as DVC does, so it is removed
            # again (a file we created and left would lock DVC out for good).
            from dvc.lock import LockError, make_lock

            clear_flock_leftovers(tmp)

            lock = make_lock(str(tmp / "lock"), tmp_dir=str(tmp), hardlink_lock=True)
            try:
                lock.lock()
            except LockError:
                raise refused from None
            self.dvc_lock = lock
            return
        handle = _open(tmp / "lock")
        if not _lock(handle, fcntl.LOCK_EX):
            handle.close()
            raise refused
        self.handles.append(handle)

    def release(self) -> None:
        """Let go of both locks."""
        if self.dvc_lock is not None:
            try:
                self.dvc_lock.unlock()  # removes the file: in NFS mode its existence is the lock
            except Exception:
                # We held it, and a file left behind would lock DVC out for good. Only here:
                # after a clean unlock the file may already be another DVC's lock.
                (self.project / ".dvc" / "tmp" / "lock").unlink(missing_ok=True)
            self.dvc_lock = None
        for handle in self.handles:
            handle.close()
        self.handles.clear()


def _finished_file(project: Path, key: str) -> Path:
    return _state(project, "finished", key)


def record_finished(project: Path, stage: str) -> None:
    """Note that `stage` (DVC's name for it) finished within this snakemake run."""
    key = os.environ.get(PIPELINE_ENV, "")
    if key.startswith("snakemake") and (project / ".dvc").is_dir():
        path = _finished_file(project, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as listed:  # one short append per stage: parallel jobs can't mix
            listed.write(stage + "\n")


def commit_finished(project: Path, hold: ProjectHold) -> list[str]:
    """Record the stages this snakemake run finished in dvc.lock (`dvc commit`), so DVC sees
    what Snakemake built as up to date; returns them. A failure is a warning: the outputs stay."""
    path = _finished_file(project, hold.key)
    if not path.exists():
        return []
    stages = sorted(set(path.read_text().split()))
    done = subprocess.run(
        [sys.executable, "-m", "pets.pipeline", "commit", "--held", "inputs", *stages],
        cwd=project,
        capture_output=True,
        text=True,
    )
    path.unlink(missing_ok=True)
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(
            f"warning: dvc commit of {len(stages)} stages failed ({why}); run "
            "`dvc commit` before `dvc repro`, or DVC will rebuild them",
            file=sys.stderr,
        )
        return []
    return stages


def _stores_uncached(stage: Any) -> bool:
    """Whether a DVC stage has outputs DVC does not store (`cache: false`), metrics and plots
    aside: the stages `dvc repro` keeps out of its run cache."""
    return any(not out.use_cache for out in stage.outs if not (out.is_metric or out.is_plot))


def commit_stages(project: Path, targets: list[str], held: bool = False) -> None:
    """`dvc commit --force targets`, except that a stage with outputs DVC does not store stays
    out of DVC's run cache, as `dvc repro` leaves it out: `dvc commit` would put a copy of
    those outputs (the extracted data set, the pixel cache: gigabytes on Pets) in `.dvc/cache`
    (dvc/stage/cache.py stores a run's uncached outputs with it). `held`: the caller (a
    snakemake run) holds DVC's repository lock for this commit."""
    from dvc.lock import LockNoop
    from dvc.repo import Repo, lock_repo

    with Repo(str(project)) as repo:
        if held:  # taking it again would fail: the lock is the caller's, kept for us
            repo.lock = LockNoop()
        with lock_repo(repo):
            _commit(repo, targets)


def _commit(repo: Any, targets: list[str]) -> None:
    # dvc/repo/commit.py's loop, forced, with the run cache kept as `dvc repro` keeps it.
    for target in targets:
        for info in repo.stage.collect_granular(target):
            stage = info.stage
            stage.save(run_cache=not _stores_uncached(stage))
            stage.commit(filter_info=info.filter_info)
            stage.dump(update_pipeline=False)


if __name__ == "__main__":  # `python -m pets.pipeline commit [--held] STAGE...`: commit_finished
    if sys.argv[1:2] != ["commit"]:
        sys.exit("usage: python -m pets.pipeline commit [--held] STAGE...")
    held = sys.argv[2:3] == ["--held"]
    commit_stages(Path.cwd(), sys.argv[2 + held :], held=held)
