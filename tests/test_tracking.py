"""MLflow: one parent run per pipeline invocation, one child per stage that ran, in mlflow.db at
the project root; failures marked; switched off on request."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import TINY, make_project, run_script, run_tool

pytestmark = pytest.mark.dag


def _runs(project: Path) -> list:
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("pets")
    return client.search_runs([experiment.experiment_id]) if experiment else []


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory, pets_tgz: Path) -> Path:
    project = make_project(
        tmp_path_factory.mktemp("tracked") / "project",
        TINY,
        {"data": {"url": str(pets_tgz), "md5": None}, "tracking": {"enabled": True}},
    )
    run_tool(project, "snakemake", "--cores", "4", "preview")
    return project


def test_one_parent_per_invocation_one_child_per_stage(tracked: Path) -> None:
    runs = _runs(tracked)
    parents = [r for r in runs if r.data.tags.get("pets.kind") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.run_name.startswith("snakemake ")
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["labels.valid_pct"] == "0.2"  # the whole params.yaml
    children = {
        r.info.run_name: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert set(children) == {"download", "labels", "cache", "preview"}
    labels = children["labels"]
    assert labels.info.status == "FINISHED"
    assert labels.data.params["labels.method"] == "name_re" and labels.data.params["seed"] == "2"
    assert "data.url" not in labels.data.params  # a stage logs only what it reads
    assert labels.data.metrics["c"] == 4
    assert labels.data.tags["torch"] and labels.data.tags["seed"] == "2"
    assert len(labels.data.tags["git.commit"]) == 40
    download = children["download"]
    assert len(download.data.tags["data.archive_md5"]) == 32


def test_nothing_to_do_logs_nothing(tracked: Path) -> None:
    before = len(_runs(tracked))
    run_tool(tracked, "snakemake", "--cores", "4", "preview")
    assert len(_runs(tracked)) == before


def test_a_stage_run_by_hand_is_standalone(tracked: Path) -> None:
    done = run_script(tracked, "preview")
    assert done.returncode == 0, done.stderr
    newest = max(_runs(tracked), key=lambda r: r.info.start_time)
    assert newest.info.run_name == "preview" and "mlflow.parentRunId" not in newest.data.tags
    assert newest.data.tags["pets.pipeline"] == "by hand"


def test_a_failed_stage_fails_its_pipeline(tmp_path: Path, pets_tgz: Path) -> None:
    project = make_project(tmp_path / "project", {"data": {"url": str(pets_tgz), "md5": "0" * 32}})
    assert run_tool(project, "dvc", "repro", check=False).returncode != 0
    runs = _runs(project)
    statuses = {r.info.run_name.split()[0]: r.info.status for r in runs}
    assert statuses == {"dvc": "FAILED", "download": "FAILED"}
