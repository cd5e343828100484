"""Outgrowing one machine: the Slurm profile plans the very same jobs, GPU rules ask for GPUs
and CPU rules do not, data-parallel training reserves its GPUs (and reruns nothing: see
test_dag's param changes)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import make_project, merge, read_params, run_tool, write_params

pytestmark = pytest.mark.dag
GPU_RULES = {"train_frozen", "lr_find", "finetune", "train_resnet50", "get_preds"}


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("scale") / "project")


def _resources(project: Path, *profile: str) -> dict[str, str]:
    text = run_tool(project, "snakemake", "-n", "-F", *profile).stdout
    found = {}
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", text):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        resources = re.search(r"^    resources: (.*)$", block, re.M)
        if rule and resources:
            found[rule.group(1)] = resources.group(1)
    return found


def test_the_slurm_profile_plans_the_same_jobs(plain: Path) -> None:
    default = run_tool(plain, "snakemake", "-n", "-F").stdout
    slurm = run_tool(plain, "snakemake", "-n", "-F", "--workflow-profile", "profiles/slurm").stdout
    table = re.compile(r"Job stats:\n(.*?)\n\n", re.S)
    assert table.search(default).group(1) == table.search(slurm).group(1)
    resources = _resources(plain, "--workflow-profile", "profiles/slurm")
    for rule, text in resources.items():
        if rule == "all":
            continue
        if rule in GPU_RULES:
            assert "gpu=1" in text and "slurm_partition=gpu" in text, rule
        else:
            assert "gpu=" not in text and "slurm_partition=cpu" in text, rule


def test_data_parallel_processes_are_a_launch_setting(plain: Path) -> None:
    original = read_params(plain)
    try:
        write_params(plain, merge(original, {"launch": {"processes": 2}}))
        resources = _resources(plain, "--resources", "gpu=2")
        assert "gpu=2" in resources["train_frozen"] and "gpu=1" in resources["get_preds"]
        assert "gpu=" not in resources["labels"]
    finally:
        write_params(plain, original)
