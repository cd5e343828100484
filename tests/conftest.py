"""Shared fixtures: tiny generated data sets, their archives, and temporary project copies.

The tests run on every core with pytest-xdist (`pytest -n auto --dist loadgroup`, as the README
and .ci/run do). Each worker is its own pytest session: session and module fixtures are made
once per worker that needs them, in that worker's own temporary folder, so no worker sees
another's files. A module fixture too costly to make twice (a whole-DAG run) keeps its tests on
one worker with `@pytest.mark.xdist_group`; `--dist loadgroup` honours that."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.browser import find_chromium
from tests.helpers import TINY, make_project, run_tool, small_pets

REPO = Path(__file__).resolve().parents[1]


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker per CPU this process may use (xdist would count physical cores,
    one on a VM whose two CPUs are hyperthreads), at most 8: each worker holds torch and may
    run a whole DAG of its own, and the dag half has few tests that long."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every CPU
    cpus = len(affinity(0)) if affinity else os.cpu_count()
    return max(1, min(cpus or 1, 8))


# The longest tests of the dag half (each runs one or two whole DAGs of its own, 2-5 minutes on
# 2 cores), started first: xdist hands tests out in collection order, and the README
# walkthrough, collected last, ran alone on one worker for its last 280 s while the other idled.
LONGEST_FIRST = (
    "tests/test_walkthrough.py::",
    "tests/test_dag.py::test_dvc_repro_runs_each_layout",
    "tests/test_inputs.py::",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start the longest tests first (a stable sort: the rest keep their order)."""

    def rank(item: pytest.Item) -> int:
        return next(
            (i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)),
            len(LONGEST_FIRST),
        )

    items.sort(key=rank)


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
