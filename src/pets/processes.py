"""Which pipeline invocation a stage process belongs to, and whether a recorded process is still
alive (a stage or pipeline killed with SIGKILL cannot say so itself)."""

from __future__ import annotations

import contextlib
import os
import platform
import uuid

import psutil

PIPELINE_ENV = "PETS_PIPELINE"  # set by the Snakefile so cluster jobs share one parent run
PIPELINE_PID_ENV = "PETS_PIPELINE_PID"  # the snakemake process, to tell when it has died
PIPELINE_HOST_ENV = "PETS_PIPELINE_HOST"  # ... and its host (cluster jobs run elsewhere)
PIPELINE_TOOLS = ("snakemake", "dvc")


def pipeline_key() -> str | None:
    """What identifies the pipeline invocation this process belongs to: `$PETS_PIPELINE`, else
    the nearest `snakemake` or `dvc` ancestor process; None for a stage run by hand."""
    if key := os.environ.get(PIPELINE_ENV):
        return key
    with contextlib.suppress(psutil.Error):
        for process in psutil.Process().parents():
            with contextlib.suppress(psutil.Error):
                words = [os.path.basename(word) for word in process.cmdline()[:3]]
                for tool in PIPELINE_TOOLS:
                    if tool in words:
                        return f"{tool}-{process.pid}-{int(process.create_time())}"
    return None


def pipeline_pid() -> int | None:
    """The process of this stage's pipeline tool (snakemake or dvc), when known."""
    if os.environ.get(PIPELINE_PID_ENV, "").isdigit():
        return int(os.environ[PIPELINE_PID_ENV])
    key = pipeline_key() or ""
    parts = key.split("-")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def alive(pid: str | None, started: str | None) -> bool:
    if not pid or not pid.isdigit():
        return True  # unknown: leave it alone
    try:
        process = psutil.Process(int(pid))
        return not started or abs(process.create_time() - float(started)) < 1
    except psutil.Error:
        return False


def process_tags(pid: int | None, host: str | None = None) -> dict[str, str]:
    """Where a run's process lives, so a later stage can tell that it died."""
    tags = {"pets.host": host or platform.node()}
    if pid and tags["pets.host"] == platform.node():
        with contextlib.suppress(psutil.Error):
            started = psutil.Process(pid).create_time()
            tags.update({"pets.pid": str(pid), "pets.pid_start": str(started)})
    return tags


def new_pipeline_key(tool: str) -> str:
    """A fresh key for a pipeline invocation started by `tool`."""
    return f"{tool}-{uuid.uuid4().hex[:12]}"
