"""Interrupted and concurrent runs: nothing half-written, killed runs marked, one pipeline at a
time in a project, and no untrusted file unpickled."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pets.errors import PetsError
from pets.files import atomic_path, write_json
from pets.train import load_checkpoint
from tests.helpers import REPO, mlflow_client, run_script, tool_env

pytestmark = pytest.mark.dag


def test_atomic_outputs_appear_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "out" / "metrics.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"error_rate": 0.')  # killed halfway through writing
        raise RuntimeError("killed")
    assert not target.exists() and not list(target.parent.iterdir())
    (target.parent / ".metrics.json.tmp-99999").write_text("left by a SIGKILL")
    write_json(target, {"error_rate": 0.1})
    assert [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def _runs(project: Path) -> dict[str, str]:
    client = mlflow_client(project)
    experiment = client.get_experiment_by_name("pets")
    return {r.info.run_name: r.info.status for r in client.search_runs([experiment.experiment_id])}


def test_killed_stages_are_marked_and_the_next_run_starts_clean(project) -> None:
    root = project({"tracking": {"enabled": True}, "train_frozen": {"size": 96, "epochs": 20}})
    for stage in ("download", "labels", "cache"):
        assert run_script(root, stage).returncode == 0
    for sig, status in ((signal.SIGKILL, "KILLED"), (signal.SIGTERM, "KILLED")):
        training = subprocess.Popen(
            [sys.executable, "workflow/scripts/train_frozen.py"],
            cwd=root,
            env=tool_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for line in training.stdout:
            if line.startswith("epoch "):
                break
        training.send_signal(sig)
        code = training.wait(timeout=120)
        assert code == (-9 if sig == signal.SIGKILL else 130)
        # A killed stage cannot say so itself: the recorder sees its journal end unclosed.
        assert _runs(root)["train_frozen"] == status
        client = mlflow_client(root)
        for run in client.search_runs([client.get_experiment_by_name("pets").experiment_id]):
            client.delete_run(run.info.run_id)
    assert not (root / "models" / "stage-1.pth").exists()


def test_checkpoints_are_loaded_without_unpickling(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"format": "pets.checkpoint/1", "model": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(PetsError, match="is not a readable pets checkpoint"):
        load_checkpoint(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()


def test_no_code_path_unpickles() -> None:
    source = "\n".join(p.read_text() for p in (REPO / "src").rglob("*.py"))
    source += "\n".join(p.read_text() for p in (REPO / "workflow").rglob("*.py"))
    # Docstrings may say "without pickle"; code may not import or call an unpickler.
    unpicklers = r"import (c?pickle|dill|joblib|cloudpickle)\b|pickle\.loads?\(|allow_pickle=True"
    assert not re.findall(unpicklers, source)
    loads = re.findall(r"torch\.load\([^)]*\)", source)
    assert loads and all("weights_only=True" in call for call in loads)
