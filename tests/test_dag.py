"""The DAG as users run it: Snakemake and DVC agree, run the same work, and rerun only what a
change touches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pets.dag import code_files
from pets.stages import specs
from pets.train import load_checkpoint
from tests.dagcheck import (
    dvc_params,
    dvc_stages,
    planned_jobs,
    snakemake_stages,
)
from tests.helpers import (
    REPO,
    TINY,
    make_project,
    merge,
    read_params,
    run_tool,
    small_pets,
    write_params,
)

pytestmark = pytest.mark.dag

OUTPUTS = [
    "data/dataset.json",
    "data/split.csv",
    "data/classes.json",
    "reports/data_quality.json",
    "data/cache/pixels.npy",
    "reports/show_batch.png",
    "models/stage-1.pth",
    "metrics/stage-1.json",
    "reports/stage-1/model.json",
    "reports/lr_find.png",
    "metrics/lr_find.json",
    "models/stage-2.pth",
    "models/resnet50.pth",
    "reports/resnet50/history.csv",
    "reports/stage-2/predictions.csv",
    "reports/resnet50/top_losses.png",
    "metrics/interpret/stage-1.json",
    "reports/index.html",
    "reports/flips.csv",
    "models/export/model.safetensors",
    "reports/export.json",
]


@pytest.fixture(scope="module")
def plain_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untouched copy of the project (default params)."""
    return make_project(tmp_path_factory.mktemp("plain") / "project")


def test_snakefile_and_dvc_yaml_describe_the_same_stages(plain_copy: Path) -> None:
    snake, dvc = snakemake_stages(plain_copy), dvc_stages(plain_copy)
    by_outputs = {spec.outputs: spec for spec in snake.values() if spec.name != "all"}
    # DVC's first stage rewrites the inputs records; Snakemake does that as it starts.
    assert dvc.pop("inputs").cmd == "pets dag inputs"
    assert len(by_outputs) == len(dvc), (sorted(snake), sorted(dvc))
    for name, stage in dvc.items():
        assert stage.outputs in by_outputs, f"no Snakemake rule makes the outputs of {name}"
        rule = by_outputs[stage.outputs]
        assert rule.name == stage.name, name
        assert rule.cmd == stage.cmd, name
        assert rule.inputs == stage.inputs, (name, rule.inputs ^ stage.inputs)


def test_each_stage_depends_on_its_params_and_its_code(plain_copy: Path) -> None:
    params = dvc_params(plain_copy)
    stages = dvc_stages(plain_copy)
    stages.pop("inputs")
    for name, stage in stages.items():
        assert params[name] == set(specs()[stage.name].params), name
        script = f"workflow/scripts/{stage.name}.py"
        code = {dep for dep in stage.inputs if dep.startswith(("src/", "workflow/"))}
        assert code == set(code_files(plain_copy, script)), name
        assert f"src/pets/stages/{stage.name}.py" in code, name
        assert f"data/inputs/{stage.name}.json" in stage.inputs, name


def test_dvc_yaml_is_made_from_the_specs(plain_copy: Path) -> None:
    run_tool(plain_copy, "pets", "dag", "check")
    path = plain_copy / "dvc.yaml"
    text = path.read_text()
    try:
        path.write_text(text.replace("--cache data/cache", "--cache data/other", 1))
        done = run_tool(plain_copy, "pets", "dag", "check", check=False)
        assert done.returncode == 1
        assert done.stderr.strip() == (
            "pets dag: error: dvc.yaml differs from the stage specs (src/pets/stages/); run "
            "`pets dag write` (dvc.yaml is made from them, not edited by hand)"
        )
        assert "warning: dvc.yaml differs" in run_tool(plain_copy, "snakemake", "-n").stderr
        run_tool(plain_copy, "pets", "dag", "write")
        assert path.read_text() == text
    finally:
        path.write_text(text)


def test_lint_and_format_are_clean() -> None:
    lint = run_tool(REPO, "snakemake", "--lint")
    assert "Congratulations, your workflow is in a good condition!" in lint.stdout + lint.stderr
    run_tool(REPO, "snakefmt", "--check", "Snakefile")


def test_snakemake_runs_every_stage(snakemade: Path) -> None:
    for output in OUTPUTS:
        assert (snakemade / output).exists(), output
    assert json.loads((snakemade / "data/classes.json").read_text()) == [
        "Abyssinian",
        "Bengal",
        "Birman",
        "Bombay",
    ]
    split = pd.read_csv(snakemade / "data/split.csv")
    assert list(split.columns) == ["path", "label", "is_valid"] and len(split) == 24
    assert (snakemade / "data/dataset/images/Abyssinian_1.jpg").exists()
    assert (snakemade / "logs/labels.log").read_text().startswith("classes: ['Abyssinian'")
    assert planned_jobs(snakemade) == {}


@pytest.mark.parametrize("model", ["stage-1", "stage-2", "resnet50"])
def test_training_outputs_are_consistent(snakemade: Path, model: str) -> None:
    metrics = json.loads((snakemade / f"metrics/{model}.json").read_text())
    history = pd.read_csv(snakemade / f"reports/{model}/history.csv")
    assert metrics["error_rate"] == history["error_rate"].iloc[-1]
    assert metrics["epochs"] == len(history)
    saved = load_checkpoint(snakemade / f"models/{model}.pth")
    assert saved["classes"] == json.loads((snakemade / "data/classes.json").read_text())
    assert saved["arch"] == {"resnet50": "resnet50"}.get(model, "resnet34")
    stage = {"stage-1": "train_frozen", "stage-2": "finetune"}.get(model, "train_resnet50")
    log = (snakemade / f"logs/{stage}.log").read_text()
    assert "epoch     train_loss  valid_loss  error_rate  time" in log


def test_lr_find_suggestions_lie_on_its_curve(snakemade: Path) -> None:
    curve = pd.read_csv(snakemade / "reports/lr_find.csv")
    found = json.loads((snakemade / "metrics/lr_find.json").read_text())
    for point in found.values():
        assert curve["lr"].min() <= point["lr"] <= curve["lr"].max()
        expected = np.interp(np.log10(point["lr"]), np.log10(curve["lr"]), curve["smoothed_loss"])
        assert point["loss"] == pytest.approx(expected)


ALL = {"get_preds": 3, "interpret": 3, "report": 1}


def test_a_param_change_reruns_only_what_reads_it(snakemade: Path) -> None:
    original = read_params(snakemade)
    one_model = {"get_preds": 1, "interpret": 1, "report": 1}
    training = {"train_frozen": 1, "lr_find": 1, "finetune": 1, "train_resnet50": 1}
    changes = [
        ({"preview": {"rows": 2}}, {"preview": 1, "report": 1}),
        ({"finetune": {"epochs": 2}}, {"finetune": 1, **one_model}),
        ({"lr_find": {"num_it": 14}}, {"lr_find": 1, "finetune": 1, **one_model}),
        ({"train_resnet50": {"lr": 1.0e-3}}, {"train_resnet50": 1, **one_model, "export": 1}),
        ({"export": {"onnx": True}}, {"export": 1}),
        ({"interpret": {"min_val": 3}}, {"interpret": 3, "report": 1}),
        ({"report": {"flips_shown": 5}}, {"report": 1}),
        ({"get_preds": {"bs": 2}}, ALL),
        (
            {"labels": {"valid_pct": 0.3}},
            {"labels": 1, "cache": 1, "preview": 1, **training, **ALL, "export": 1},
        ),
        ({"augment": {"max_rotate": 5.0}}, {"preview": 1, **training, **ALL, "export": 1}),
        ({"tracking": {"enabled": True, "experiment": "x"}}, {}),
        ({"launch": {"processes": 2}}, {}),
    ]
    try:
        for change, expected in changes:
            write_params(snakemade, merge(original, change))
            assert planned_jobs(snakemade) == expected, change
    finally:
        write_params(snakemade, original)
    assert planned_jobs(snakemade) == {}


def test_editing_a_module_reruns_the_stages_that_use_it(snakemade: Path) -> None:
    edits = {
        "plots.py": {
            "preview": 1,
            "lr_find": 1,
            "finetune": 1,
            "get_preds": 1,
            "interpret": 3,
            "report": 1,
        },
        "report.py": {"report": 1},
        "interpret.py": ALL,
    }
    for module, expected in edits.items():
        path = snakemade / "src/pets" / module
        text = path.read_text()
        try:
            path.write_text(text + "\n# an edit\n")
            assert planned_jobs(snakemade) == expected, module
        finally:
            path.write_text(text)
    assert planned_jobs(snakemade) == {}  # same content again: Snakemake compares checksums


@pytest.mark.parametrize("layout", ["pets", "folder", "csv"])
def test_dvc_repro_runs_each_layout(tmp_path: Path, layout: str, snakemade: Path) -> None:
    archive = small_pets(tmp_path, layout)
    labels = {"pets": {}, "folder": {"method": "folder", "folder": ""}, "csv": {"method": "csv"}}[
        layout
    ]
    project = make_project(
        tmp_path / "project", TINY, {"data": {"url": str(archive), "md5": None}, "labels": labels}
    )
    # The labelling methods differ in the data stages only: the whole DAG runs for one layout.
    target = [] if layout == "pets" else ["preview"]
    run_tool(project, "dvc", "repro", *target)
    for output in OUTPUTS if layout == "pets" else OUTPUTS[:6]:
        assert (project / output).exists(), output
    split = pd.read_csv(project / "data/split.csv")
    assert split["label"].nunique() == 4
    if layout == "pets":  # same params and photos as the Snakemake run: the same numbers
        metrics = sorted(p.relative_to(project) for p in (project / "metrics").rglob("*.json"))
        assert len(metrics) == 7
        for name in metrics:
            assert (project / name).read_bytes() == (snakemade / name).read_bytes(), name
    if layout == "folder":
        assert split[split["is_valid"]]["path"].str.startswith("valid/").all()
    assert "didn't change, skipping" in run_tool(project, "dvc", "repro", *target).stdout
    params = read_params(project)
    params["preview"]["rows"] = 2
    write_params(project, params)
    status = run_tool(project, "dvc", "status", *target).stdout
    assert "preview:" in status  # DVC reruns `report` only if show_batch.png then changes
    assert "labels:" not in status and "cache:" not in status and "interpret@" not in status


def test_snakemake_and_dvc_produce_the_same_split(snakemade: Path, tmp_path: Path) -> None:
    params = read_params(snakemade)
    project = make_project(tmp_path / "project", params)
    run_tool(project, "dvc", "repro", "labels")
    assert (project / "data/split.csv").read_bytes() == (snakemade / "data/split.csv").read_bytes()


def test_a_bad_archive_fails_cleanly(tmp_path: Path, pets_tgz: Path) -> None:
    project = make_project(
        tmp_path / "project", TINY, {"data": {"url": str(pets_tgz), "md5": "0" * 32}}
    )
    done = run_tool(project, "snakemake", "--cores", "4", check=False)
    assert done.returncode != 0
    assert "download: error: data.md5:" in done.stdout + done.stderr
    assert not (project / "data" / "dataset").exists()
    assert not (project / "data" / "dataset.json").exists()


def test_invalid_params_stop_snakemake_before_any_job(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", {"labels": {"valid_pct": 1.5}})
    done = run_tool(project, "snakemake", "-n", "--cores", "4", check=False)
    assert done.returncode != 0
    assert "params.yaml: labels.valid_pct: input should be less than 1" in done.stderr
