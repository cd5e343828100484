"""Snakemake and DVC on one project, with no step between them: after either tool runs, the
other sees the same outputs as up to date, and reruns exactly what a later change touches."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.dagcheck import planned_jobs
from tests.helpers import merge, read_params, run_tool, write_params

pytestmark = pytest.mark.dag


@pytest.fixture
def committed(snakemade: Path, tmp_path: Path) -> Path:
    """A copy of the project as `snakemake --cores 4` left it, committed to git."""
    project = tmp_path / "project"
    shutil.copytree(snakemade, project, symlinks=True)
    write_params(project, merge(read_params(project), {"tracking": {"enabled": False}}))
    run_tool(project, "git", "add", "-A")
    run_tool(project, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run")
    return project


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output)) - {"inputs"}


def _jobs(output: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for rule in re.findall(r"^localrule (\w+):", output, re.M):
        found[rule] = found.get(rule, 0) + 1
    found.pop("all", None)
    return found


def test_dvc_sees_what_snakemake_built(committed: Path) -> None:
    assert run_tool(committed, "dvc", "status").stdout.split() == ["inputs:", "always", "changed"]
    assert _ran(run_tool(committed, "dvc", "repro").stdout) == set()
    assert planned_jobs(committed) == {}


def test_snakemake_then_a_param_change_then_dvc_repro_and_back(committed: Path) -> None:
    original = read_params(committed)
    write_params(committed, merge(original, {"finetune": {"lr": [1.0e-5, 1.0e-3]}}))
    ran = _ran(run_tool(committed, "dvc", "repro").stdout)
    assert ran == {"finetune", "get_preds@stage-2", "interpret@stage-2", "report"}
    assert planned_jobs(committed) == {}  # Snakemake takes what DVC built
    assert _ran(run_tool(committed, "dvc", "repro").stdout) == set()
    # DVC's first stage leaves the records it need not rewrite alone (they persist), so the
    # outputs DVC built, which Snakemake has no record of, stay newer than their inputs.
    assert planned_jobs(committed) == {}
    write_params(committed, merge(read_params(committed), {"interpret": {"k": 2}}))
    done = run_tool(committed, "snakemake", "--cores", "4")
    assert _jobs(done.stdout + done.stderr) == {"interpret": 3, "report": 1}
    assert _ran(run_tool(committed, "dvc", "repro").stdout) == set()  # DVC takes Snakemake's


def test_dvc_reruns_exactly_what_a_change_touches(committed: Path) -> None:
    original = read_params(committed)
    changes = [
        (
            {"interpret": {"k": 3}},
            {"interpret@stage-1", "interpret@stage-2", "interpret@resnet50", "report"},
        ),
        ({"export": {"onnx": True}}, {"export"}),
        ({"tracking": {"enabled": True}}, set()),
        ({"launch": {"processes": 2}}, set()),
    ]
    for change, expected in changes:
        write_params(committed, merge(original, change))
        assert _ran(run_tool(committed, "dvc", "repro").stdout) == expected, change
        write_params(committed, original)
        run_tool(committed, "dvc", "repro")  # back: DVC's run cache restores without retraining


def test_experiments_and_checkouts_do_not_make_snakemake_retrain(committed: Path) -> None:
    before = (committed / "metrics/stage-2.json").read_bytes()
    experiment = run_tool(committed, "dvc", "exp", "run", "-S", "finetune.epochs=2").stdout
    assert _ran(experiment) == {"finetune", "get_preds@stage-2", "interpret@stage-2", "report"}
    shown = run_tool(committed, "dvc", "exp", "show", "--csv").stdout
    assert "finetune.epochs" in shown.splitlines()[0]
    assert planned_jobs(committed) == {}  # the experiment's outputs, for its params
    write_params(committed, merge(read_params(committed), {"interpret": {"min_val": 3}}))
    assert planned_jobs(committed) == {"interpret": 3, "report": 1}  # params are tracked
    run_tool(committed, "git", "checkout", "--", "params.yaml", "dvc.lock")
    run_tool(committed, "dvc", "checkout", "--force")
    assert (committed / "metrics/stage-2.json").read_bytes() == before
    assert planned_jobs(committed) == {}
    assert run_tool(committed, "dvc", "status").stdout.split() == ["inputs:", "always", "changed"]
