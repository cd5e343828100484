"""Stage scripts as a user runs them by hand: --help, one-line errors, no half-written output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pets import paths
from pets.stages import NAMES, module, specs
from tests.helpers import REPO, run_script


@pytest.mark.parametrize("stage", NAMES)
def test_every_stage_has_help(stage: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        module(stage).cli(["--help"])
    assert exited.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert f"Stage `{stage}`" in shown and "--params" in shown
    for name, template in {**specs()[stage].inputs, **specs()[stage].outputs}.items():
        if f"--{name.replace('_', '-')} {name.upper()}" in shown:
            assert f"default: {template}" in shown  # by hand, the paths the DAG passes


def test_each_script_is_a_shim_of_its_stage() -> None:
    scripts = sorted(path.stem for path in (REPO / "workflow" / "scripts").glob("*.py"))
    assert scripts == sorted(NAMES)
    for name in NAMES:
        text = (REPO / "workflow" / "scripts" / f"{name}.py").read_text()
        assert f"from pets.stages.{name} import cli" in text and len(text.splitlines()) <= 8
    done = subprocess.run(
        [sys.executable, "workflow/scripts/labels.py", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "Stage `labels`" in done.stdout


def test_each_stage_path_is_written_once_in_the_source() -> None:
    sources = [REPO / "Snakefile", *(REPO / "src" / "pets").rglob("*.py")]
    sources += (REPO / "workflow").rglob("*.py")
    text = {path: path.read_text() for path in sources}
    for name, value in vars(paths).items():
        if not name.isupper() or not isinstance(value, str) or "/" not in value:
            continue
        quoted = [f'"{value}"', f"'{value}'"]
        places = [path.name for path, body in text.items() for q in quoted if q in body]
        assert places == ["paths.py"], (name, value, places)


def _one_line_error(done: subprocess.CompletedProcess[str], stage: str, fragment: str) -> None:
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{stage}: error: ") and fragment in lines[0], lines[0]


def test_download_then_labels_by_hand(project) -> None:
    root = project()
    assert run_script(root, "download").returncode == 0
    manifest = json.loads((root / "data/dataset.json").read_text())
    assert manifest["files"] == 24 and manifest["top_folder"] == "oxford-iiit-pet"
    done = run_script(root, "labels", "--threads", "2")
    assert done.returncode == 0, done.stderr
    assert "c: 4" in done.stdout
    assert not (root / "mlflow.db").exists()  # tracking switched off in these params


def test_bad_params_stop_a_stage_in_one_line(project) -> None:
    root = project({"labels": {"valid_pct": 1.5}})
    done = run_script(root, "labels")
    _one_line_error(done, "labels", "params.yaml: labels.valid_pct: input should be less than 1")
    assert not (root / "data").exists()


def test_md5_mismatch_leaves_nothing(project) -> None:
    root = project({"data": {"md5": "f" * 32}})
    done = run_script(root, "download")
    _one_line_error(done, "download", "data.md5:")
    assert not (root / "data" / "dataset").exists() and not (root / "data/dataset.json").exists()


def test_labels_error_leaves_no_outputs(project) -> None:
    root = project({"labels": {"pattern": r"/(\d+)\.png$"}})
    assert run_script(root, "download").returncode == 0
    done = run_script(root, "labels")
    _one_line_error(done, "labels", "labels.pattern:")
    assert not any((root / "data" / name).exists() for name in ("split.csv", "classes.json"))
    assert not (root / "reports" / "data_quality.json").exists()


def test_a_missing_input_is_named(project) -> None:
    root = project()
    done = run_script(root, "labels")
    _one_line_error(done, "labels", "data/dataset: data set folder not found; run the download")
    _one_line_error(run_script(root, "cache"), "cache", "data/split.csv: not found; run the labels")
