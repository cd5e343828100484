"""`pets ui`: MLflow's UI on the project's tracking store, opened on the runs table.

MLflow 3.17's UI picks the experiment's page from the `workflowType` in its address, not from
the experiment-kind tag the stages set (`pets.tracking.EXPERIMENT_KIND`), and lands on an empty
GenAI overview of traces without it; the address printed here asks for the model-training view,
whose runs table shows each pipeline run with its stage runs and their data set."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from pets.config import load_params
from pets.errors import PetsError

RUNS_VIEW = "#/experiments/{id}/runs?workflowType=machine_learning"


def runs_address(base: str, experiment_id: str) -> str:
    """The UI address of an experiment's runs table."""
    return f"{base.rstrip('/')}/{RUNS_VIEW.format(id=experiment_id)}"


def project_experiment(project: Path) -> tuple[str, str]:
    """The project's tracking URI and the id of its experiment (one line if none yet)."""
    from pets.recorder import wait_recorded
    from pets.tracking import client_for, tracking_uri

    wait_recorded(project)  # the runs of stages that just ended
    name = load_params(project / "params.yaml").tracking.experiment
    uri = tracking_uri(project)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise PetsError(f"{project / 'mlflow.db'}: no runs tracked yet; run snakemake first")
    found = client_for(project).get_experiment_by_name(name)
    if found is None:
        raise PetsError(f"tracking.experiment: no experiment {name!r} in {uri} yet")
    return uri, found.experiment_id


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def ui(project: Path, host: str = "127.0.0.1", port: int = 5000, wait_s: float = 120.0) -> None:
    """Start `mlflow ui` on the project's store, print the runs table's address once it
    answers, and serve until interrupted; with a tracking server (`$MLFLOW_TRACKING_URI` over
    http) print that server's address instead."""
    uri, experiment = project_experiment(project)
    if uri.startswith(("http://", "https://")):
        print(runs_address(uri, experiment))
        return
    if port == 0:
        raise PetsError("--port: give a port number (mlflow ui cannot report one it picked)")
    if not _port_free(host, port):
        raise PetsError(f"--port: {host}:{port} is in use; pick another with --port")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    # One worker: a UI for one person; MLflow's default four each import MLflow first.
    command += ["--host", host, "--port", str(port), "--workers", "1"]
    # Its log goes to a file: a pipe nobody reads would fill and stall the server.
    with tempfile.TemporaryFile() as log:
        # Its own process group: `mlflow ui` starts uvicorn and a job runner as children, and
        # stopping `mlflow ui` alone would leave them serving.
        # Without MLflow's job runner: it starts seven consumer processes (GenAI evaluation
        # jobs, unused here) that made the UI take a minute to answer on two cores.
        server = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            _wait_and_serve(server, log, host, port, experiment, wait_s)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            _stop_group(server)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the UI as Ctrl-C does, server included


def _stop_group(server: subprocess.Popen[bytes]) -> None:
    for sent in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, sent)
        try:
            server.wait(10)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_and_serve(
    server: subprocess.Popen[bytes],
    log: IO[bytes],
    host: str,
    port: int,
    experiment: str,
    wait_s: float,
) -> None:
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    deadline = time.monotonic() + wait_s
    while True:
        if server.poll() is not None:
            log.seek(0)
            last = (log.read().decode(errors="replace").strip().splitlines() or ["no output"])[-1]
            raise PetsError(f"mlflow ui stopped (exit {server.returncode}): {last[:300]}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                break
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise PetsError(f"mlflow ui did not answer on {base} in {wait_s:.0f} s") from None
            time.sleep(0.3)
    print(f"MLflow UI: {runs_address(base, experiment)}  (Ctrl-C stops it)", flush=True)
    server.wait()
