"""Queued DVC experiments (`dvc exp run --queue`, `dvc queue start`): each runs in DVC's
temporary copy of the project, records its MLflow runs in the project's store, tagged with its
name, and borrows the project's uncached outputs instead of rebuilding them."""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml

from pets import experiments
from pets.config import load_params
from pets.experiments import borrow, borrowed_paths, experiment_tags, origin
from pets.files import md5_file
from pets.recorder import wait_recorded
from pets.stages import specs
from pets.tracking import store_root, tracking_uri
from tests.helpers import REPO, merge, read_params, run_tool, write_params


def _copy_of(root: Path, name: str = "tmp1a2b3c") -> Path:
    copy = root.joinpath(*experiments.TEMPORARY_COPIES, name)
    copy.mkdir(parents=True)
    return copy


def _params(folder: Path, overrides: dict | None = None) -> Path:
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), overrides or {})
    folder.mkdir(parents=True, exist_ok=True)
    write_params(folder, params)
    return folder / "params.yaml"


def test_origin_only_inside_dvc_temporary_copies(tmp_path: Path, monkeypatch) -> None:
    project = tmp_path / "project"
    copy = _copy_of(project)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert origin(copy) is None  # not run by DVC
    monkeypatch.setenv("DVC_ROOT", str(project))
    assert origin(copy) == project.resolve()
    assert origin(copy / "src") == project.resolve()  # a stage with another wdir
    assert origin(project) is None  # `dvc repro`, `dvc exp run` in the workspace
    assert origin(tmp_path / "elsewhere") is None
    monkeypatch.chdir(copy)
    assert origin() == project.resolve()


def test_experiment_tags_from_dvc_environment(monkeypatch) -> None:
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    assert experiment_tags() == {}
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-puma")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    assert experiment_tags() == {"dvc.exp_name": "lucky-puma", "dvc.exp_baseline": "abc123"}


def test_dvc_names_the_variables_we_read() -> None:
    import dvc.env

    assert dvc.env.DVC_ROOT == experiments.DVC_ROOT
    assert dvc.env.DVC_EXP_NAME == experiments.DVC_EXP_NAME
    assert dvc.env.DVC_EXP_BASELINE_REV == experiments.DVC_EXP_BASELINE_REV


def test_tracking_store_is_the_origins(tmp_path: Path, monkeypatch) -> None:
    project = tmp_path / "project"
    copy = _copy_of(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(project))
    assert tracking_uri(copy) == f"sqlite:///{project.resolve() / 'mlflow.db'}"
    assert store_root(project) == project.resolve()
    monkeypatch.delenv("DVC_ROOT")
    assert tracking_uri(copy) == f"sqlite:///{copy.resolve() / 'mlflow.db'}"


def _source_project(root: Path) -> Path:
    """A project with an extracted data set, a pixel cache and a local archive of its own."""
    project = root / "project"
    for name in ("data/dataset/images/Abyssinian_1.jpg", "data/dataset/images/pug_2.jpg"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_bytes(os.urandom(64))
    (project / "data/cache").mkdir(parents=True)
    (project / "data/cache/pixels.npy").write_bytes(os.urandom(256))
    (project / "photos.tgz").write_bytes(os.urandom(32))
    (project / "data/dataset.json").write_text("{}")  # cached by DVC: not borrowed
    _params(project, {"data": {"url": "./photos.tgz"}})
    return project


def test_borrowed_paths_come_from_the_specs(tmp_path: Path) -> None:
    project = _source_project(tmp_path)
    params = load_params(project / "params.yaml")
    found = [path.as_posix() for path in borrowed_paths(project, params, specs().values())]
    assert found == ["data/dataset", "photos.tgz", "data/cache"]
    # An archive outside the project is shared as it is; the label module is pets' own.
    params = load_params(_params(tmp_path / "other", {"data": {"url": str(tmp_path / "a.tgz")}}))
    found = [path.as_posix() for path in borrowed_paths(project, params, specs().values())]
    assert found == ["data/dataset", "data/cache"]


def test_borrow_links_what_the_copy_lacks(tmp_path: Path) -> None:
    project = _source_project(tmp_path)
    copy = _copy_of(project)
    params = load_params(project / "params.yaml")
    (copy / "data/cache").mkdir(parents=True)  # what the copy has already stays as it is
    (copy / "data/cache/pixels.npy").write_bytes(b"own")

    assert borrow(copy, project, params, specs().values()) == ["data/dataset", "photos.tgz"]
    for name in ("data/dataset/images/Abyssinian_1.jpg", "data/dataset/images/pug_2.jpg"):
        assert (copy / name).read_bytes() == (project / name).read_bytes()
        assert (copy / name).stat().st_ino == (project / name).stat().st_ino  # no second copy
    assert (copy / "photos.tgz").stat().st_ino == (project / "photos.tgz").stat().st_ino
    assert (copy / "data/cache/pixels.npy").read_bytes() == b"own"
    assert not (copy / "data/dataset.json").exists()
    assert not list((copy / "data").glob(".*tmp-*"))  # nothing half-made left
    assert borrow(copy, project, params, specs().values()) == []  # once

    # DVC removes a stage's outputs before rebuilding them: the project's files stay.
    shutil.rmtree(copy / "data/dataset")
    assert (project / "data/dataset/images/pug_2.jpg").is_file()


def test_borrow_copies_across_file_systems(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs a second file system (/dev/shm)")
    import tempfile

    with tempfile.TemporaryDirectory(dir=shm) as other:
        project = _source_project(Path(other))
        copy = _copy_of(tmp_path / "elsewhere")
        params = load_params(project / "params.yaml")
        assert borrow(copy, project, params, specs().values()) == [
            "data/dataset",
            "photos.tgz",
            "data/cache",
        ]
        pixels = copy / "data/cache/pixels.npy"
        assert pixels.read_bytes() == (project / "data/cache/pixels.npy").read_bytes()


def _runs(project: Path) -> list[tuple[str, str, str | None, str | None]]:
    """(run id, name, dvc.exp_name, pets.kind) of every run in the project's store."""
    assert wait_recorded(project, 120)
    with sqlite3.connect(project / "mlflow.db") as db:
        return db.execute(
            "select r.run_uuid, r.name, n.value, k.value from runs r"
            " left join tags n on n.run_uuid = r.run_uuid and n.key = 'dvc.exp_name'"
            " left join tags k on k.run_uuid = r.run_uuid and k.key = 'pets.kind'"
        ).fetchall()


@pytest.mark.dag
def test_queued_experiments_keep_their_runs(snakemade: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(snakemade, project, symlinks=True)
    run_tool(project, "git", "add", "-A")
    run_tool(project, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run")
    before = {run[0] for run in _runs(project)}
    # Snakemake's `dvc commit` step keeps what DVC does not store out of DVC's cache (DVC's
    # `dvc commit` would copy it there through its run cache, as `dvc repro` does not).
    stored = {path.name for path in (project / ".dvc/cache/files").rglob("*") if path.is_file()}
    uncached = [
        *(project / "data/cache").rglob("*.npy"),
        *(project / "data/dataset").rglob("*.jpg"),
    ]
    assert uncached
    for path in uncached:
        assert md5_file(path)[2:] not in stored, path
    pixels = {path: path.stat() for path in (project / "data/cache").rglob("*") if path.is_file()}
    assert read_params(project)["interpret"]["k"] == 4

    names = {}
    for k in (2, 3):
        # Up to interpret (report would only add time): DVC still checks every stage before it.
        queued = run_tool(
            project, "dvc", "exp", "run", "--queue", "-S", f"interpret.k={k}", "interpret"
        )
        (names[k],) = re.findall(r"Queued experiment '([^']+)'", queued.stdout + queued.stderr)
    run_tool(project, "dvc", "queue", "start", "-j", "2")
    # `--run-all` joins the workers `queue start` began and returns once both are collected.
    done = run_tool(project, "dvc", "exp", "run", "--run-all", "-j", "2")
    assert "Failed" not in done.stdout + done.stderr

    new = [run for run in _runs(project) if run[0] not in before]
    for name in names.values():
        mine = [run for run in new if run[2] == name]
        # interpret ran again; download, labels, cache did not.
        stages = {run[1] for run in mine if run[3] == "stage"}
        assert stages == {f"interpret@{model}" for model in ("stage-1", "stage-2", "resnet50")}
        (parent,) = [run for run in mine if run[3] == "pipeline"]
        assert parent[1].startswith(f"dvc exp {name} ")
    assert {run[2] for run in new} == set(names.values())  # every new run is an experiment's
    for path, found in pixels.items():  # the project's pixel cache: the same files, untouched
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == (found.st_ino, found.st_mtime_ns)
    # Nor did DVC restore them from its run cache (a copy): it found the borrowed ones current.
    logs = [path.read_text() for path in (project / ".dvc/tmp/exps/run").glob("*/*.out")]
    assert len(logs) == 2
    for log in logs:
        for stage in ("download", "cache"):
            assert f"Stage '{stage}' didn't change, skipping" in log, log
    shown = csv.DictReader(io.StringIO(run_tool(project, "dvc", "exp", "show", "--csv").stdout))
    assert {row["Experiment"]: row["interpret.k"] for row in shown if row["Experiment"]} == {
        name: str(k) for k, name in names.items()
    }
