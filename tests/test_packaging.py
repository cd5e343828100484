"""The conda environment of the rules carries what pyproject.toml installs."""

from __future__ import annotations

import re

import tomllib
import yaml

from tests.helpers import REPO

# conda-forge's names for PyPI's, where they differ.
CONDA_NAMES = {"torch": "pytorch", "matplotlib": "matplotlib-base"}
DAG_TOOLS = {"snakemake", "dvc"}  # they run the jobs; the jobs do not import them


def _requirement(text: str) -> tuple[str, str]:
    name, bound = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(>=[^,;\s]+)?.*", text).groups()
    return name.lower(), bound or ""


def test_the_conda_environment_has_every_dependency() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    needed = {
        CONDA_NAMES.get(name, name): bound
        for name, bound in map(_requirement, project["dependencies"])
        if name not in DAG_TOOLS
    }
    environment = yaml.safe_load((REPO / "envs" / "pets.yaml").read_text())
    listed = dict(
        _requirement(entry) for entry in environment["dependencies"] if isinstance(entry, str)
    )
    assert {name: listed.get(name) for name in needed} == needed
