"""MLflow: one parent run per pipeline invocation, one child per stage that ran, lineage from
every metric back to its data, code and params; nothing lost when stages log at once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pets.cli import runs_table
from pets.files import md5_file
from tests.helpers import TINY, make_project, mlflow_client, run_script, run_tool

pytestmark = pytest.mark.dag
STAGES = {
    "download",
    "labels",
    "cache",
    "preview",
    "train_frozen",
    "lr_find",
    "finetune",
    "train_resnet50",
    "report",
    "export",
} | {
    f"{stage}@{model}"
    for stage in ("get_preds", "interpret")
    for model in ("stage-1", "stage-2", "resnet50")
}


def _runs(project: Path) -> list:
    client = mlflow_client(project)
    experiment = client.get_experiment_by_name("pets")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def _children(project: Path) -> tuple[object, dict[str, object]]:
    runs = _runs(project)
    parents = [r for r in runs if r.data.tags.get("pets.kind") == "pipeline"]
    assert len(parents) == 1
    children = {
        r.info.run_name: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
    }
    return parents[0], children


def test_one_parent_per_invocation_one_child_per_stage(snakemade: Path) -> None:
    parent, children = _children(snakemade)
    assert parent.info.run_name.startswith("snakemake ") and parent.info.status == "FINISHED"
    assert parent.data.params["labels.valid_pct"] == "0.2"  # the whole params.yaml
    assert set(children) == STAGES
    assert all(run.info.status == "FINISHED" for run in children.values())
    labels = children["labels"]
    assert labels.data.params["labels.method"] == "name_re" and labels.data.params["seed"] == "2"
    assert "data.url" not in labels.data.params  # a stage logs only what it reads
    assert labels.data.metrics["c"] == 4


def test_lineage_answers_which_params_data_and_code(snakemade: Path) -> None:
    _, children = _children(snakemade)
    manifest = json.loads((snakemade / "data/dataset.json").read_text())
    train = children["train_frozen"]
    tags = train.data.tags
    assert len(tags["git.commit"]) == 40 and tags["git.dirty"] in ("true", "false")
    assert tags["data.archive_md5"] == manifest["md5"]
    assert tags["input.data/split.csv"] == md5_file(snakemade / "data/split.csv")
    assert tags["input.data/cache"].startswith("listing:")
    assert tags["output.models/stage-1.pth"] == md5_file(snakemade / "models/stage-1.pth")
    assert tags["torch"] and tags["torchvision"] and tags["cuda"] and tags["device"]
    assert tags["seed"] == "2"
    assert train.data.params["train_frozen.arch"] == "resnet34"
    assert train.data.params["augment.max_rotate"] == "10.0"
    history = mlflow_client(snakemade).get_metric_history(train.info.run_id, "valid_loss")
    assert [m.step for m in history] == [0]  # one per epoch, at its step
    interpret = children["interpret@stage-2"]
    assert interpret.data.tags["pets.model"] == "stage-2"
    assert "error_rate_low" in interpret.data.metrics
    assert not list((snakemade / "mlruns").rglob("*.pth"))  # models stay in DVC, not copied


def test_nothing_to_do_logs_nothing(snakemade: Path) -> None:
    before = len(_runs(snakemade))
    run_tool(snakemade, "snakemake", "--cores", "4")
    assert len(_runs(snakemade)) == before


def test_a_stage_run_by_hand_is_standalone(snakemade: Path, tmp_path: Path) -> None:
    done = run_script(snakemade, "preview", "--figure", str(tmp_path / "preview.png"))
    assert done.returncode == 0, done.stderr
    newest = max(_runs(snakemade), key=lambda r: r.info.start_time)
    assert newest.info.run_name == "preview" and "mlflow.parentRunId" not in newest.data.tags
    assert newest.data.tags["pets.pipeline"] == "by hand"


def test_pets_runs_lists_the_latest_run_of_each_stage(snakemade: Path) -> None:
    table = runs_table(snakemade)
    assert set(table["stage"]) == STAGES
    train = table.set_index("stage").loc["train_frozen"]
    assert "arch=resnet34" in train["params"] and float(train["error_rate"]) >= 0
    done = subprocess.run(
        [sys.executable, "-m", "pets.cli", "--project", str(snakemade), "runs"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "interpret@resnet50" in done.stdout


def test_a_failed_stage_fails_its_pipeline(tmp_path: Path, pets_tgz: Path) -> None:
    project = make_project(
        tmp_path / "project",
        TINY,
        {"data": {"url": str(pets_tgz), "md5": "0" * 32}, "tracking": {"enabled": True}},
    )
    assert run_tool(project, "dvc", "repro", check=False).returncode != 0
    statuses = {r.info.run_name.split()[0]: r.info.status for r in _runs(project)}
    assert statuses == {"dvc": "FAILED", "download": "FAILED"}


WRITER = """
import sys
from pathlib import Path
from pets.config import parse_params
from pets.tracking import stage_run
params = parse_params({"tracking": {"experiment": "load"}})
with stage_run("train_frozen", params, Path(sys.argv[1])) as tracker:
    for epoch in range(40):
        tracker.log_metrics({"train_loss": epoch, "valid_loss": epoch, "error_rate": 0.5},
                            step=epoch)
"""


def test_four_stages_logging_at_once_lose_nothing(tmp_path: Path) -> None:
    from pets.config import parse_params
    from pets.tracking import prepare

    prepare(tmp_path, parse_params({"tracking": {"experiment": "load"}}))
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path)],
            env={**__import__("os").environ, "PETS_PIPELINE": "load-test"},
        )
        for _ in range(4)
    ]
    assert [w.wait(timeout=300) for w in writers] == [0, 0, 0, 0]
    client = mlflow_client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("load").experiment_id])
    stages = [r for r in runs if r.data.tags.get("pets.kind") == "stage"]
    assert len(stages) == 4 and len(runs) == 5  # one shared parent
    for run in stages:
        for metric in ("train_loss", "valid_loss", "error_rate"):
            assert len(client.get_metric_history(run.info.run_id, metric)) == 40


def test_urls_are_recorded_without_their_secrets() -> None:
    from pets.tracking import redacted

    flat = {"data.url": "https://me:pw@host/p.tgz?X-Amz-Signature=abc&v=1", "seed": 2}
    shown = redacted(flat)
    assert "pw" not in shown["data.url"] and "abc" not in shown["data.url"]
    assert shown["data.url"].startswith("https://***@host/p.tgz?") and "v=1" in shown["data.url"]
    assert shown["seed"] == 2 and redacted({"seed": 2}) == {"seed": 2}
