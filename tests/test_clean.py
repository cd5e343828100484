"""`pets clean`: a real server on 127.0.0.1 in its own process, driven in headless Chromium;
each choice made in the page changes the corrections file at once."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from pets.files import write_csv
from pets.interpret import predictions_table
from pets.synthetic import make_pets
from tests.browser import DevTools
from tests.helpers import SMALL_SIZES, first_address, tool_env

CLASSES = ["Abyssinian", "Bengal", "Birman"]
PETS = [sys.executable, "-m", "pets.cli"]


def fake_project(root: Path) -> Path:
    """What `pets clean` reads of a project after a run: params, photos, split, classes and
    stage-1's validation predictions (made up: every third photo confidently wrong)."""
    dataset = root / "data" / "dataset"
    pairs = make_pets(dataset, 4, classes=3, seed=1, layout="labelled", sizes=SMALL_SIZES)
    (root / "params.yaml").write_text(yaml.safe_dump({"labels": {"corrections": "fixes.csv"}}))
    rows = [(path, label, index % 2 == 1) for index, (path, label) in enumerate(pairs)]
    import pandas as pd

    write_csv(
        root / "data" / "split.csv", pd.DataFrame(rows, columns=["path", "label", "is_valid"])
    )
    (root / "data" / "classes.json").write_text(json.dumps(CLASSES))
    valid = [(path, label) for path, label, is_valid in rows if is_valid]
    targets = np.array([CLASSES.index(label) for _, label in valid])
    logits = np.full((len(valid), 3), -3.0)
    for index, target in enumerate(targets):
        logits[index, (target + (1 if index % 3 == 0 else 0)) % 3] = 2.0 + 0.1 * index
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    table = predictions_table([p for p, _ in valid], targets, log_probs, CLASSES)
    (root / "reports" / "stage-1").mkdir(parents=True)
    write_csv(root / "reports" / "stage-1" / "predictions.csv", table)
    return root


@pytest.fixture
def cleaner(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`pets clean stage-1` on a fake project: its address and the project; stopped after."""
    project = fake_project(tmp_path / "project")
    log = tmp_path / "stderr.log"
    process = subprocess.Popen(
        [*PETS, "--project", str(project), "clean", "stage-1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env=tool_env(),
    )
    address = first_address(process, 120, "")
    assert address, f"no address; stderr: {log.read_text()[-3000:]}"
    yield address, project
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, log.read_text()[-3000:]


async def choose(page: DevTools, path: str, value: str) -> None:
    """Pick `value` in the control of the photo `path`, as a person would, and wait until the
    page says it is saved."""
    await page.evaluate(
        f"""(() => {{
        const select = document.querySelector('.card[data-path="{path}"] select.choice');
        select.value = {json.dumps(value)};
        select.dispatchEvent(new Event("change"));
    }})()"""
    )
    await page.wait_for(
        f"""document.querySelector('.card[data-path="{path}"] .status').textContent === 'saved'"""
    )


def test_clicks_in_the_page_write_the_corrections_file(cleaner, chromium, tmp_path) -> None:
    url, project = cleaner
    fixes = project / "fixes.csv"

    async def drive() -> tuple[list[dict], list[str]]:
        async with DevTools(chromium, tmp_path / "profile") as page:
            await page.open(url)
            await page.wait_for("document.body.dataset.ready === '1'")
            # Top losses first: the confidently wrong photos, each with label and prediction.
            cards = await page.evaluate(
                """[...document.querySelectorAll('.card')].map(c => ({
                    path: c.dataset.path,
                    label: c.querySelector('.label').textContent,
                    predicted: c.querySelector('.predicted').textContent,
                    text: c.textContent}))"""
            )
            first = cards[0]
            assert first["label"] != first["predicted"] and "%" in first["text"]
            await choose(page, first["path"], first["predicted"])
            assert fixes.read_text() == f"path,label\n{first['path']},{first['predicted']}\n"
            await choose(page, cards[1]["path"], "drop")
            assert f"{cards[1]['path']},\n" in fixes.read_text()
            await choose(page, first["path"], "keep")  # changed my mind: its row goes
            assert fixes.read_text() == f"path,label\n{cards[1]['path']},\n"
            # A class's photos, training ones too (they have no prediction).
            await page.evaluate(
                """(() => { const v = document.getElementById('view'); v.value = 'Bengal';
                v.dispatchEvent(new Event('change')); })()"""
            )
            labels = await page.evaluate(
                "[...document.querySelectorAll('.card .label')].map(l => l.textContent)"
            )
            shown = await page.evaluate(
                "[...document.querySelectorAll('.card')].map(c => c.dataset.path)"
            )
            errors = [e for e in page.events if e["method"] == "Runtime.exceptionThrown"]
            assert errors == []
            return labels, shown

    labels, shown = asyncio.run(drive())
    assert labels == ["Bengal"] * 4 and shown == [f"Bengal/{n}.jpg" for n in range(1, 5)]


def test_the_cleaner_refuses_what_is_not_a_photo_or_class(tmp_path: Path) -> None:
    from pets.clean import load_cleaner
    from pets.errors import PetsError

    project = fake_project(tmp_path / "project")
    cleaner = load_cleaner(project, "stage-1")
    with pytest.raises(PetsError, match="no photo '../params.yaml'"):
        cleaner.choose("../params.yaml", None)
    with pytest.raises(PetsError, match="'Siamese' is not one of the classes"):
        cleaner.choose("Bengal/1.jpg", "Siamese")
    assert not (project / "fixes.csv").exists()
    (project / "params.yaml").write_text("labels: {}\n")
    with pytest.raises(PetsError, match="labels.corrections is not set in params.yaml"):
        load_cleaner(project, "stage-1")
