"""The DAG as users run it: Snakemake and DVC agree, run the same work, and rerun only what a
change touches."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pets.config import STAGE_PARAMS
from tests.dagcheck import (
    dvc_params,
    dvc_stages,
    imported_modules,
    planned_jobs,
    snakemake_stages,
)
from tests.helpers import REPO, make_project, read_params, run_tool, small_pets, write_params

pytestmark = pytest.mark.dag

DATA_OUTPUTS = [
    "data/dataset.json",
    "data/split.csv",
    "data/classes.json",
    "reports/data_quality.json",
    "data/cache/pixels.npy",
    "reports/show_batch.png",
]


@pytest.fixture(scope="module")
def plain_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untouched copy of the project (default params)."""
    return make_project(tmp_path_factory.mktemp("plain") / "project")


def test_snakefile_and_dvc_yaml_describe_the_same_stages(plain_copy: Path) -> None:
    snake, dvc = snakemake_stages(plain_copy), dvc_stages(plain_copy)
    by_outputs = {spec.outputs: spec for spec in snake.values() if spec.name != "all"}
    assert len(by_outputs) == len(dvc), (sorted(snake), sorted(dvc))
    for name, stage in dvc.items():
        assert stage.outputs in by_outputs, f"no Snakemake rule makes the outputs of {name}"
        rule = by_outputs[stage.outputs]
        assert rule.name == stage.name, name
        assert rule.cmd == stage.cmd, name
        assert rule.inputs == stage.inputs, (name, rule.inputs ^ stage.inputs)


def test_each_stage_depends_on_its_params_and_its_code(plain_copy: Path) -> None:
    params = dvc_params(plain_copy)
    for name, stage in dvc_stages(plain_copy).items():
        assert params[name] == set(STAGE_PARAMS[stage.name]), name
        script = f"workflow/scripts/{stage.name}.py"
        code = {dep for dep in stage.inputs if dep.startswith(("src/", "workflow/"))}
        assert code == {script} | imported_modules(plain_copy, script), name


def test_lint_and_format_are_clean() -> None:
    lint = run_tool(REPO, "snakemake", "--lint")
    assert "Congratulations, your workflow is in a good condition!" in lint.stdout + lint.stderr
    run_tool(REPO, "snakefmt", "--check", "Snakefile")


def _jobs(project: Path) -> set[str]:
    """The rules a `snakemake` run would run now."""
    return set(planned_jobs(project))


@pytest.fixture(scope="module")
def snakemade(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy on the tiny Pets archive after one `snakemake --cores 4`."""
    root = tmp_path_factory.mktemp("snake")
    archive = small_pets(root, "pets")
    project = make_project(
        root / "project",
        {"data": {"url": str(archive), "md5": None}, "tracking": {"enabled": False}},
    )
    run_tool(project, "snakemake", "--cores", "4")
    return project


def test_snakemake_runs_the_data_stages(snakemade: Path) -> None:
    for output in DATA_OUTPUTS:
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
    assert _jobs(snakemade) == set()


def test_a_param_change_reruns_only_what_reads_it(snakemade: Path) -> None:
    original = read_params(snakemade)
    try:
        write_params(snakemade, {**original, "preview": {**original["preview"], "rows": 2}})
        assert _jobs(snakemade) == {"preview"}
        write_params(snakemade, {**original, "labels": {**original["labels"], "valid_pct": 0.3}})
        assert _jobs(snakemade) == {"labels", "cache", "preview"}
        write_params(snakemade, {**original, "tracking": {"enabled": True, "experiment": "x"}})
        assert _jobs(snakemade) == set()
    finally:
        write_params(snakemade, original)
    assert _jobs(snakemade) == set()


def test_editing_a_module_reruns_the_stages_that_use_it(snakemade: Path) -> None:
    plots = snakemade / "src/pets/plots.py"
    text = plots.read_text()
    try:
        plots.write_text(text + "\n# an edit\n")
        assert _jobs(snakemade) == {"preview"}
    finally:
        plots.write_text(text)
    assert _jobs(snakemade) == set()  # same content again: Snakemake compares checksums


@pytest.mark.parametrize("layout", ["pets", "folder", "csv"])
def test_dvc_repro_runs_each_layout(tmp_path: Path, layout: str) -> None:
    archive = small_pets(tmp_path, layout)
    labels = {"pets": {}, "folder": {"method": "folder", "folder": ""}, "csv": {"method": "csv"}}[
        layout
    ]
    project = make_project(
        tmp_path / "project",
        {
            "data": {"url": str(archive), "md5": None},
            "tracking": {"enabled": False},
            "labels": labels,
        },
    )
    run_tool(project, "dvc", "repro")
    for output in DATA_OUTPUTS:
        assert (project / output).exists(), output
    split = pd.read_csv(project / "data/split.csv")
    assert split["label"].nunique() == 4
    if layout == "folder":
        assert split[split["is_valid"]]["path"].str.startswith("valid/").all()
    assert "didn't change, skipping" in run_tool(project, "dvc", "repro").stdout
    params = read_params(project)
    params["preview"]["rows"] = 2
    write_params(project, params)
    status = run_tool(project, "dvc", "status").stdout
    assert "preview:" in status and "labels:" not in status and "cache:" not in status


def test_snakemake_and_dvc_produce_the_same_split(snakemade: Path, tmp_path: Path) -> None:
    params = read_params(snakemade)
    project = make_project(tmp_path / "project", params)
    run_tool(project, "dvc", "repro", "labels")
    assert (project / "data/split.csv").read_bytes() == (snakemade / "data/split.csv").read_bytes()


def test_a_bad_archive_fails_cleanly(tmp_path: Path, pets_tgz: Path) -> None:
    project = make_project(
        tmp_path / "project",
        {"data": {"url": str(pets_tgz), "md5": "0" * 32}, "tracking": {"enabled": False}},
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
