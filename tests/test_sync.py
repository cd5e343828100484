"""Snakemake and DVC on one project: each takes the other's outputs without retraining
(`pets sync`), DVC reruns exactly what a change touches, experiments come back exactly."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.dagcheck import planned_jobs
from tests.helpers import merge, read_params, run_tool, write_params

pytestmark = pytest.mark.dag


@pytest.fixture
def synced(snakemade: Path, tmp_path: Path) -> Path:
    """A copy of the Snakemake-made project whose outputs DVC has adopted, committed."""
    project = tmp_path / "project"
    shutil.copytree(snakemade, project, symlinks=True)
    write_params(project, merge(read_params(project), {"tracking": {"enabled": False}}))
    run_tool(project, "pets", "sync", "dvc")
    run_tool(project, "git", "add", "-A")
    run_tool(project, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run")
    return project


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def test_dvc_adopts_what_snakemake_made(synced: Path) -> None:
    assert "Data and pipelines are up to date" in run_tool(synced, "dvc", "status").stdout
    assert _ran(run_tool(synced, "dvc", "repro").stdout) == set()
    assert planned_jobs(synced) == {}


def test_dvc_reruns_exactly_what_a_change_touches(synced: Path) -> None:
    original = read_params(synced)
    changes = [
        (
            {"finetune": {"lr": [1.0e-5, 1.0e-3]}},
            {"finetune", "get_preds@stage-2", "interpret@stage-2", "report"},
        ),
        (
            {"interpret": {"k": 2}},
            {"interpret@stage-1", "interpret@stage-2", "interpret@resnet50", "report"},
        ),
        ({"tracking": {"enabled": True}}, set()),
    ]
    for change, expected in changes:
        write_params(synced, merge(original, change))
        assert _ran(run_tool(synced, "dvc", "repro").stdout) == expected, change
        write_params(synced, original)
        run_tool(synced, "dvc", "repro")  # back: DVC's run cache restores without retraining


def test_experiments_and_checkouts_do_not_make_snakemake_retrain(synced: Path) -> None:
    committed = (synced / "metrics/stage-2.json").read_bytes()
    experiment = run_tool(synced, "dvc", "exp", "run", "-S", "finetune.epochs=2").stdout
    assert _ran(experiment) == {"finetune", "get_preds@stage-2", "interpret@stage-2", "report"}
    shown = run_tool(synced, "dvc", "exp", "show", "--csv").stdout
    assert "finetune.epochs" in shown.splitlines()[0]
    assert planned_jobs(synced).get("finetune") == 1  # Snakemake saw other params last time
    run_tool(synced, "pets", "sync", "snakemake")
    assert planned_jobs(synced) == {}
    write_params(synced, merge(read_params(synced), {"interpret": {"min_val": 3}}))
    assert planned_jobs(synced) == {"interpret": 3, "report": 1}  # params are tracked again
    run_tool(synced, "git", "checkout", "--", "params.yaml", "dvc.lock")
    run_tool(synced, "dvc", "checkout", "--force")
    assert (synced / "metrics/stage-2.json").read_bytes() == committed
    run_tool(synced, "pets", "sync", "snakemake")
    assert planned_jobs(synced) == {}
    assert "Data and pipelines are up to date" in run_tool(synced, "dvc", "status").stdout


def test_sync_refuses_when_outputs_are_stale(synced: Path) -> None:
    write_params(synced, merge(read_params(synced), {"interpret": {"k": 3}}))
    done = run_tool(synced, "pets", "sync", "snakemake", check=False)
    assert done.returncode == 1
    assert "dvc status shows changes in interpret@resnet50, interpret@stage-1" in done.stderr
    done = run_tool(synced, "pets", "sync", "dvc", check=False)
    assert done.returncode == 1 and "snakemake still has jobs to run" in done.stderr
