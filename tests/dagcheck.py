"""Reading the two DAG descriptions as the tools see them: `snakemake -n -p` and DVC's index."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import run_tool

LOG_REDIRECT = re.compile(r"\s*2>&1 \| tee \S+$")
# Snakemake passes the threads it reserved, DVC `--threads 0` (every core): the same command.
THREADS = re.compile(r"--threads \d+")


@dataclass(frozen=True)
class StageSpec:
    """One stage as a DAG tool describes it."""

    name: str
    cmd: str
    inputs: frozenset[str]
    outputs: frozenset[str]


def snakemake_stages(project: Path) -> dict[str, StageSpec]:
    """Every job of `snakemake all` as a forced dry run prints it, keyed by rule name plus its
    wildcards (`rule@value`), as DVC names foreach stages."""
    text = run_tool(project, "snakemake", "-n", "-p", "-F", "--cores", "4").stdout
    specs = {}
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", text):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if not rule:
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, re.M))
        command = re.search(r"^Shell command: (.*)$", block, re.M)
        name = rule.group(1)
        if "wildcards" in fields:
            name += "@" + "@".join(v.split("=", 1)[1] for v in fields["wildcards"].split(", "))
        specs[name] = StageSpec(
            rule.group(1),
            THREADS.sub("--threads N", LOG_REDIRECT.sub("", command.group(1))) if command else "",
            frozenset(fields.get("input", "").split(", ")) - {""},
            frozenset(fields.get("output", "").split(", ")) - {""},
        )
    return specs


def planned_jobs(project: Path) -> dict[str, int]:
    """The job counts of `snakemake -n` (what a run would do), without `all`."""
    text = run_tool(project, "snakemake", "-n", "--cores", "4").stdout
    if "Job stats:" not in text:
        return {}
    table = text.split("Job stats:", 1)[1].split("\n\n", 1)[0].splitlines()[3:]
    counts = {line.split()[0]: int(line.split()[1]) for line in table if line.strip()}
    counts.pop("total", None)
    counts.pop("all", None)
    return counts


def dvc_stages(project: Path) -> dict[str, StageSpec]:
    """Every stage of dvc.yaml, resolved (foreach expanded), keyed by DVC's stage name."""
    from dvc.repo import Repo

    specs = {}
    with Repo(str(project)) as repo:
        for stage in repo.index.stages:
            deps = {dep.def_path for dep in stage.deps if dep.def_path != "params.yaml"}
            outs = {out.def_path for out in stage.outs}
            specs[stage.name] = StageSpec(
                stage.name.split("@")[0],
                THREADS.sub("--threads N", " ".join(stage.cmd.split())),
                frozenset(deps),
                frozenset(outs),
            )
    return specs


def dvc_params(project: Path) -> dict[str, set[str]]:
    """The params keys each DVC stage depends on."""
    from dvc.repo import Repo

    keys = {}
    with Repo(str(project)) as repo:
        for stage in repo.index.stages:
            keys[stage.name] = {
                key for dep in stage.deps if dep.def_path == "params.yaml" for key in dep.params
            }
    return keys
