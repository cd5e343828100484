"""Shared fixtures: tiny generated data sets, their archives, and temporary project copies."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.browser import find_chromium
from tests.helpers import TINY, make_project, run_tool, small_pets

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def own_tracking_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's projects record to their own `mlflow.db`: `mlflow.set_tracking_uri` (which
    some tests call) sets `$MLFLOW_TRACKING_URI` for the rest of the process, and the stages
    a later test starts would inherit it; taken away here, and after the test."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def pets_tgz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Pets-layout archive: oxford-iiit-pet/images/<Breed>_<n>.jpg, 4 breeds x 6 photos."""
    root = tmp_path_factory.mktemp("pets")
    return small_pets(root, "pets")


@pytest.fixture
def project(tmp_path: Path, pets_tgz: Path):
    """A factory for temporary copies of this project whose params point at the tiny archive."""

    def factory(overrides: dict | None = None, archive: Path | None = None) -> Path:
        data = {"data": {"url": str(archive or pets_tgz), "md5": None}}
        return make_project(tmp_path / "project", TINY, data, overrides or {})

    return factory


def git(cwd: Path, *args: str) -> str:
    """Run git in `cwd` and return its output."""
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture(scope="session")
def snakemade(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy on a tiny Pets archive after one `snakemake --cores 4`, tracked in MLflow:
    every stage's outputs and runs, for tests that read them (do not change its files without
    restoring them; copy it to change it)."""
    root = tmp_path_factory.mktemp("snake")
    archive = small_pets(root, "pets")
    project = make_project(
        root / "project",
        TINY,
        {"data": {"url": str(archive), "md5": None}, "tracking": {"enabled": True}},
    )
    run_tool(project, "snakemake", "--cores", "4")
    return project


@pytest.fixture(scope="module")
def chromium() -> str:
    """A headless-capable Chromium; CI sets PETS_REQUIRE_CHROMIUM=1 so it never skips."""
    return find_chromium()
