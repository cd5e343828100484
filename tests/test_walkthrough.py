"""The README's "Your own photos" walk-through, run as written on generated photos: its params
block and each command of its `sh` blocks, in order (`pets clean` driven in headless Chromium,
as a person would use it). Checks on the way: both tools see that the corrections reran
exactly `labels` and what follows; the report counts the corrections; MLflow has the
corrections file's md5 on the labels run."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from pets.files import md5_file
from pets.synthetic import make_pets
from tests.browser import DevTools
from tests.dagcheck import planned_jobs
from tests.helpers import (
    REPO,
    SMALL_SIZES,
    TINY,
    first_address,
    make_project,
    merge,
    mlflow_client,
    read_params,
    run_tool,
    tool_env,
    write_params,
)
from tests.test_clean import choose

pytestmark = pytest.mark.dag

AFTER_LABELS = {
    "labels": 1,
    "cache": 1,
    "preview": 1,
    "train_frozen": 1,
    "lr_find": 1,
    "finetune": 1,
    "train_resnet50": 1,
    "get_preds": 3,
    "interpret": 3,
    "report": 1,
    "export": 1,
}


def walkthrough() -> tuple[dict, list[str]]:
    """The params block and the commands of the README's walk-through."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Your own photos\n", 1)[1].split("### ", 1)[0]
    [params] = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section, re.S)]
    commands = [
        line.split("#", 1)[0].strip()
        for block in re.findall(r"```sh\n(.*?)```", section, re.S)
        for line in block.splitlines()
    ]
    return params, [command for command in commands if command]


def _clean(project: Path, command: str, chromium: str, profile: Path) -> str:
    """Run `pets clean ...` as the README says, relabel its top loss in the page, stop it;
    returns the photo relabelled."""
    process = subprocess.Popen(
        [*shlex.split(command), "--port", "0"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=tool_env(),
    )
    address = first_address(process, 120, "")
    assert address, "pets clean printed no address"

    async def drive() -> str:
        async with DevTools(chromium, profile) as page:
            await page.open(address)
            await page.wait_for("document.body.dataset.ready === '1'")
            first = await page.evaluate(
                """(() => { const c = document.querySelector('.card');
                return [c.dataset.path, c.querySelector('.label').textContent]; })()"""
            )
            classes = json.loads((project / "data" / "classes.json").read_text())
            other = next(c for c in classes if c != first[1])
            await choose(page, first[0], other)
            return first[0]

    try:
        return asyncio.run(drive())
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path, chromium: str) -> None:
    photos = tmp_path / "my-photos"
    make_pets(photos, 8, classes=3, seed=4, layout="labelled", sizes=SMALL_SIZES)
    (photos / ".DS_Store").write_bytes(b"junk")
    params, commands = walkthrough()
    assert params["data"]["url"] == "~/my-photos"
    params["data"]["url"] = str(photos)  # the generated photos stand in for yours
    project = make_project(tmp_path / "project", TINY, {"tracking": {"enabled": True}})
    write_params(project, merge(read_params(project), params))
    relabelled = None
    runs = 0
    for command in commands:
        print(f"walkthrough: {command}", flush=True)  # shown with -s: where a slow run is
        if command.startswith("pets clean"):
            relabelled = _clean(project, command, chromium, tmp_path / "profile")
            # Both tools: exactly labels and what follows reruns, not download.
            assert planned_jobs(project) == AFTER_LABELS
            run_tool(project, "pets", "dag", "inputs")
            status = json.loads(run_tool(project, "dvc", "status", "--json").stdout)
            assert set(status) - {"inputs"} == {"labels"}
        else:
            done = run_tool(project, *shlex.split(command))
            runs += command in ("dvc repro", "snakemake --cores 4")
            if command == "snakemake -n":
                assert "rule labels:" in done.stdout and "rule download:" not in done.stdout
            if command == "pets runs --all":
                assert "labels" in done.stdout
    assert relabelled and runs == 2
    assert planned_jobs(project) == {}

    quality = json.loads((project / "reports" / "data_quality.json").read_text())
    assert quality["corrections"] == {"file": "corrections.csv", "relabelled": 1, "dropped": 0}
    assert quality["images_used"] == 24 and quality["skipped_count"] == 0  # no junk counted
    assert "1 labels corrected" in (project / "reports" / "index.html").read_text()

    client = mlflow_client(project)
    experiment = client.get_experiment_by_name(read_params(project)["tracking"]["experiment"])
    labels_runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="tags.`pets.stage` = 'labels'",
        order_by=["attributes.start_time DESC"],
    )
    assert len(labels_runs) == 2
    latest, first = labels_runs
    assert latest.data.tags["input.corrections.csv"] == md5_file(project / "corrections.csv")
    assert first.data.tags["input.corrections.csv"] == "missing"
    assert latest.data.metrics["corrected_labels"] == 1
