"""One pipeline at a time in a project: snakemake, dvc repro and stages run by hand refuse to run
beside each other with one line naming who holds the project, and no lock outlives its holder."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pets import pipeline
from pets.errors import PetsError
from pets.pipeline import ProjectHold, hold_stage
from tests.helpers import merge, read_params, run_tool, tool_env, write_params

HOLD_A_STAGE = (
    "import sys, time; from pathlib import Path; from pets.pipeline import hold_stage\n"
    "with hold_stage(Path(sys.argv[1]), 'labels'):\n"
    "    print('held', flush=True); time.sleep(60)\n"
)


def _holder(*args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", *args], stdout=subprocess.PIPE, text=True, env=tool_env()
    )
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_pipeline_is_refused_by_name(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / ".dvc").mkdir()
    first = ProjectHold(tmp_path, "snakemake-aaa")
    first.take()
    try:
        with pytest.raises(PetsError) as refused:
            ProjectHold(tmp_path, "snakemake-bbb").take()
        assert str(refused.value) == (
            f"snakemake (pid {os.getpid()}, key snakemake-aaa) is running in this project; "
            "wait for it to finish, or stop it"
        )
        monkeypatch.setenv(pipeline.PIPELINE_ENV, "snakemake-aaa")
        with hold_stage(tmp_path, "labels"):  # a job of the run that holds the project
            pass
        monkeypatch.delenv(pipeline.PIPELINE_ENV)
        by_hand = pytest.raises(PetsError, match=r"^snakemake \(pid \d+, key snakemake-aaa\) is")
        with by_hand, hold_stage(tmp_path, "labels"):  # the same stage by hand
            pass
    finally:
        first.release()
    again = ProjectHold(tmp_path, "snakemake-ccc")
    again.take()  # released: nothing to unlock by hand
    again.release()


def test_a_running_stage_holds_the_project(tmp_path: Path) -> None:
    stage = _holder(HOLD_A_STAGE, str(tmp_path))
    try:
        with pytest.raises(PetsError) as refused:
            ProjectHold(tmp_path, "snakemake-x").take()
        assert str(refused.value) == (
            f"the stage labels run by hand (pid {stage.pid}) is running in this project; "
            "wait for it to finish, or stop it"
        )
    finally:
        stage.kill()
        stage.wait()
    hold = ProjectHold(tmp_path, "snakemake-x")
    hold.take()  # the system dropped the killed stage's lock
    hold.release()


def test_dvc_holding_its_lock_refuses_snakemake(tmp_path: Path) -> None:
    lock = tmp_path / ".dvc" / "tmp" / "lock"
    lock.parent.mkdir(parents=True)
    dvc = _holder(
        "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
        "fcntl.flock(f.fileno(), fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
        str(lock),
    )
    try:
        with pytest.raises(PetsError, match=r"^dvc \(repro or exp run\) is running in this"):
            ProjectHold(tmp_path, "snakemake-x").take()
    finally:
        dvc.kill()
        dvc.wait()
    hold = ProjectHold(tmp_path, "snakemake-y")
    hold.take()  # both locks were let go: by the refused run, and by the dead holder
    hold.release()


def test_a_project_of_another_user_is_one_line(tmp_path: Path, monkeypatch) -> None:
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(pipeline, "open", denied, raising=False)
    with pytest.raises(PetsError, match=r"pipeline.lock: permission denied: this project belongs"):
        ProjectHold(tmp_path, "snakemake-x").take()


def test_hardlink_lock_setting_is_read(tmp_path: Path) -> None:
    (tmp_path / ".dvc").mkdir()
    assert not pipeline.hardlink_lock(tmp_path)
    (tmp_path / ".dvc" / "config").write_text("[core]\n    hardlink_lock = true\n")
    assert pipeline.hardlink_lock(tmp_path)
    (tmp_path / ".dvc" / "config").write_text("[core]\n    autostage = true\n[cache]\n    x = 1\n")
    assert not pipeline.hardlink_lock(tmp_path)


def test_flock_mode_leftovers_are_cleared_and_held_locks_kept(tmp_path: Path) -> None:
    import zc.lockfile
    from dvc.lock import make_lock

    for name in pipeline.FLOCK_LOCK_FILES:  # what DVC's default mode leaves after each command
        zc.lockfile.LockFile(str(tmp_path / name)).close()
    assert pipeline.clear_flock_leftovers(tmp_path) == ["lock", "rwlock.lock"]
    assert not list(tmp_path.iterdir())
    held = zc.lockfile.LockFile(str(tmp_path / "lock"))  # a flock-mode DVC running now
    nfs = make_lock(str(tmp_path / "rwlock.lock"), tmp_dir=str(tmp_path), hardlink_lock=True)
    nfs.lock()  # an NFS-mode DVC running now
    try:
        assert pipeline.clear_flock_leftovers(tmp_path) == []
        assert (tmp_path / "lock").exists() and (tmp_path / "rwlock.lock").exists()
    finally:
        held.close()
        nfs.unlock()
    (tmp_path / "lock").write_text("not a pid\n")
    assert pipeline.clear_flock_leftovers(tmp_path) == []
    (tmp_path / "lock").write_text("")  # what a flock-mode snakemake run leaves: no pid
    assert pipeline.clear_flock_leftovers(tmp_path) == ["lock"]


def _copy(snakemade: Path, tmp_path: Path) -> Path:
    project = tmp_path / "project"
    shutil.copytree(snakemade, project, symlinks=True)
    write_params(project, merge(read_params(project), {"tracking": {"enabled": False}}))
    run_tool(project, "pets", "dag", "inputs")
    return project


def _wait_for(condition, what: str, process: subprocess.Popen[str], seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"{what}: it ended first:\n{process.stdout.read()[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _start(project: Path, *command: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        list(command),
        cwd=project,
        env=tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _state(pid: int) -> str:
    """A process's state letter (R, S, T stopped, Z zombie), or '' once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def _pause_a_job(project: Path) -> int:
    """Stop (SIGSTOP) a stage process of the snakemake run in `project` as soon as one holds
    the project; returns its pid."""
    records = project / ".pets" / "stages"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for record in records.glob("*") if records.is_dir() else []:
            with contextlib.suppress(OSError, ValueError):
                if record.read_text().startswith("snakemake (stage"):
                    pid = int(record.name)
                    os.kill(pid, signal.SIGSTOP)
                    # The signal lands a moment later; a job that ended first never stops.
                    while _state(pid) not in ("T", "Z", ""):
                        time.sleep(0.001)
                    if _state(pid) == "T":
                        return pid
        time.sleep(0.01)
    raise AssertionError("timed out waiting for a job of snakemake to start")


def _error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (done.stdout + done.stderr).splitlines() if "error" in line.lower()]


@pytest.mark.dag
def test_snakemake_refuses_to_start_beside_dvc_repro(snakemade: Path, tmp_path: Path) -> None:
    project = _copy(snakemade, tmp_path)
    running = _start(project, "dvc", "repro", "--single-item", "--force", "train_frozen")
    try:
        records = project / ".pets" / "stages"
        _wait_for(lambda: records.is_dir() and any(records.iterdir()), "dvc repro", running)
        second = run_tool(project, "snakemake", "--cores", "1", "--forcerun", "report", check=False)
        assert second.returncode != 0
        assert _error_lines(second) == [
            f"error: dvc repro (stage train_frozen, pid {next(records.iterdir()).name}) is "
            "running in this project; wait for it to finish, or stop it"
        ]
        by_hand = subprocess.run(
            [sys.executable, "workflow/scripts/preview.py", "--figure", str(tmp_path / "p.png")],
            cwd=project,
            env=tool_env(),
            capture_output=True,
            text=True,
        )
        assert by_hand.returncode == 0  # a stage beside DVC's stage shares the project
    finally:
        output = running.communicate(timeout=600)[0]
    assert running.returncode == 0, output[-3000:]


@pytest.mark.dag
@pytest.mark.parametrize("nfs", [False, True], ids=["flock", "nfs"])
def test_dvc_and_stages_refuse_to_run_beside_snakemake(
    snakemade: Path, tmp_path: Path, nfs: bool
) -> None:
    project = _copy(snakemade, tmp_path)
    if nfs:
        # Switched to NFS mode after flock-mode runs: the snakemade copy holds the lock files
        # those runs left, which this mode reads as held; snakemake must clear them.
        leftovers = [project / ".dvc" / "tmp" / name for name in ("lock", "rwlock.lock")]
        assert all(path.exists() for path in leftovers)
        run_tool(project, "dvc", "config", "core.hardlink_lock", "true")
    running = _start(project, "snakemake", "--cores", "2", "--forcerun", "interpret")
    paused = None
    try:
        lock = project / ".pets" / "pipeline.lock"
        _wait_for(
            lambda: lock.exists() and f"pid {running.pid}," in lock.read_text(),
            "snakemake",
            running,
        )
        # One of snakemake's jobs is stopped while the checks run, so the run is still under
        # way when each of them starts, however fast or slow this machine is.
        paused = _pause_a_job(project)
        second = run_tool(project, "snakemake", "--cores", "1", "--forcerun", "report", check=False)
        assert second.returncode != 0
        assert _error_lines(second) == [
            f"error: {lock.read_text().strip()} is running in this project; wait for it to "
            "finish, or stop it"
        ]
        by_hand = run_tool(project, sys.executable, "workflow/scripts/report.py", check=False)
        assert by_hand.returncode == 1
        assert by_hand.stderr.strip().startswith(f"report: error: snakemake (pid {running.pid},")
        assert running.poll() is None
        dvc = run_tool(project, "dvc", "repro", check=False)
        assert dvc.returncode != 0 and "Unable to acquire lock" in dvc.stdout + dvc.stderr
    finally:
        if paused is not None:
            os.kill(paused, signal.SIGCONT)
        output = running.communicate(timeout=600)[0]
    assert running.returncode == 0, output[-3000:]
    if nfs:  # the leftovers and snakemake's own NFS lock are gone
        assert not any(path.exists() for path in leftovers)
    status = run_tool(project, "dvc", "status")
    assert status.stdout.split() == ["inputs:", "always", "changed"]  # what snakemake built
