"""Every input a stage reads is tracked in both tools: the user's own archive (by its content,
at the same path), label CSV, label function and weights file, and every params section. Each
change reruns exactly the stages that read it and what depends on them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torchvision

from pets.config import Params
from pets.dag import inputs_record
from pets.paths import MODELS
from pets.stages import specs
from pets.synthetic import make_pets, pack
from tests.dagcheck import planned_jobs
from tests.helpers import (
    SMALL_SIZES,
    TINY,
    make_project,
    merge,
    read_params,
    run_tool,
    write_params,
)

pytestmark = pytest.mark.dag

EVERYTHING = {
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
FROM_STAGE_1 = {
    "train_frozen": 1,
    "lr_find": 1,
    "finetune": 1,
    "get_preds": 2,
    "interpret": 2,
    "report": 1,
}
LABEL_FUNCTION = '''from pathlib import Path


def breed(path: Path) -> str:
    """The breed in a Pets file name."""
    return path.stem.rsplit("_", 1)[0]
'''


def _archive(root: Path, seed: int) -> Path:
    folder = root / f"photos-{seed}" / "oxford-iiit-pet"
    make_pets(folder, 6, classes=4, seed=seed, layout="pets", sizes=SMALL_SIZES)
    return pack(folder, root / f"photos-{seed}.tgz")


def _weights(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    torch.save(torchvision.models.resnet18().state_dict(), path)


def _dvc_changed(project: Path) -> set[str]:
    """The stages `dvc repro` would start from (after DVC's first stage rewrote the records)."""
    run_tool(project, "pets", "dag", "inputs")
    status = json.loads(run_tool(project, "dvc", "status", "--json").stdout or "{}")
    return set(status) - {"inputs"}


# The tests on `own_files` share one xdist worker (`--dist loadgroup`), so its whole-DAG
# snakemake run is made once, not once per worker.
ON_OWN_FILES = pytest.mark.xdist_group("own_files")


@pytest.fixture(scope="module")
def own_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project on the user's own files: a local archive, a label CSV kept in the project,
    a weights file; built once by `snakemake`."""
    root = tmp_path_factory.mktemp("own")
    shutil.copy(_archive(root, 1), root / "mine.tgz")
    project = make_project(
        root / "project",
        TINY,
        {
            "data": {"url": str(root / "mine.tgz"), "md5": None},
            "labels": {"method": "csv", "csv_file": "./labels.csv"},
            "train_frozen": {"arch": "resnet18", "weights": "weights.pth"},
        },
    )
    names = sorted(p.name for p in (root / "photos-1/oxford-iiit-pet/images").glob("*.jpg"))
    rows = [f"{name},{name.rsplit('_', 1)[0]}" for name in names]
    (project / "labels.csv").write_text("name,label\n" + "\n".join(rows) + "\n")
    _weights(project / "weights.pth", 0)
    run_tool(project, "snakemake", "--cores", "4")
    assert planned_jobs(project) == {}
    assert _dvc_changed(project) == set()
    return project


def _labels_then_touch(project: Path) -> None:
    """Run `labels` alone, then mark what follows it as up to date (its split is the same)."""
    run_tool(project, "snakemake", "--cores", "4", "labels")
    run_tool(project, "snakemake", "--cores", "4", "--touch")
    assert planned_jobs(project) == {}


def _check(project: Path, change, undo, planned: dict[str, int], changed: set[str]) -> None:
    change()
    try:
        assert planned_jobs(project) == planned
        assert _dvc_changed(project) == changed
    finally:
        undo()
    assert planned_jobs(project) == {}
    assert _dvc_changed(project) == set()


@ON_OWN_FILES
def test_the_users_own_files_are_tracked_by_content(own_files: Path, tmp_path: Path) -> None:
    project = own_files
    archive = Path(read_params(project)["data"]["url"])
    original = archive.read_bytes()
    other = _archive(tmp_path, 7).read_bytes()  # other photos, same names, same path
    _check(
        project,
        lambda: archive.write_bytes(other),
        lambda: archive.write_bytes(original),
        {"download": 1, **EVERYTHING},
        {"download"},
    )
    labels = project / "labels.csv"
    text = labels.read_text()
    swapped = text.replace(",Abyssinian\n", ",Bengal\n", 1)
    _check(
        project,
        lambda: labels.write_text(swapped),
        lambda: labels.write_text(text),
        EVERYTHING,
        {"labels"},
    )
    _check(
        project,
        lambda: _weights(project / "weights.pth", 1),
        lambda: _weights(project / "weights.pth", 0),
        FROM_STAGE_1,
        {"train_frozen"},
    )


@ON_OWN_FILES
def test_a_label_function_is_tracked_by_its_module(own_files: Path) -> None:
    project = own_files
    original = read_params(project)
    (project / "breeds.py").write_text(LABEL_FUNCTION)
    write_params(
        project, merge(original, {"labels": {"method": "name_func", "func": "breeds:breed"}})
    )
    try:
        # The same labels as the CSV: `labels` reruns and writes the same split. DVC, comparing
        # hashes, reruns nothing after it; Snakemake would rerun everything after it (a job
        # whose input another job of the run rewrites reruns, whatever the new content), so
        # `--touch` tells it what DVC knows, as a user may (two minutes of CI otherwise).
        _labels_then_touch(project)
        assert _dvc_changed(project) == set()
        module = project / "breeds.py"
        _check(
            project,
            lambda: module.write_text(LABEL_FUNCTION.replace("[0]", "[0].lower()")),
            lambda: module.write_text(LABEL_FUNCTION),
            EVERYTHING,
            {"labels"},
        )
    finally:
        write_params(project, original)
        _labels_then_touch(project)


@ON_OWN_FILES
def test_each_params_section_reruns_the_stages_that_read_it(own_files: Path) -> None:
    project = own_files
    original = read_params(project)
    changes = {
        "seed": 3,
        "device": "cpu",
        "precision": "fp32",
        "data": {"md5": "0" * 32},
        "labels": {"valid_pct": 0.3},
        "cache": {"size": 60},
        "augment": {"max_rotate": 5.0},
        "preview": {"rows": 2},
        "train_frozen": {"epochs": 2},
        "lr_find": {"num_it": 10},
        "finetune": {"epochs": 2},
        "train_resnet50": {"epochs": 2},
        "get_preds": {"bs": 2},
        "interpret": {"k": 3},
        "report": {"flips_shown": 3},
        "export": {"check_images": 4},
        "tracking": {"experiment": "other"},
        "launch": {"processes": 2},
    }
    for key, value in changes.items():
        readers = {
            key_of
            for name, spec in specs().items()
            if key in spec.params
            for key_of in ([f"{name}@{m}" for m in MODELS] if spec.per_model else [name])
        }
        write_params(project, merge(original, {key: value}))
        try:
            assert _dvc_changed(project) == readers, key
            planned = planned_jobs(project)
            assert {name.split("@")[0] for name in readers} <= set(planned), key
            assert bool(planned) == bool(readers), key
        finally:
            write_params(project, original)
    assert planned_jobs(project) == {}
    assert _dvc_changed(project) == set()


def test_the_inputs_record_holds_params_and_file_contents(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "breeds.py").write_text(LABEL_FUNCTION)
    params = Params.model_validate(
        {"labels": {"method": "name_func", "func": "breeds:breed"}, "seed": 5}
    )
    known: dict[str, list[str]] = {}
    record = inputs_record(specs()["labels"], params, known)
    assert record["params"]["seed"] == 5 and record["params"]["labels"]["func"] == "breeds:breed"
    [(path, md5)] = record["files"].items()
    assert Path(path).name == "breeds.py" and len(md5) == 32
    (tmp_path / "breeds.py").write_text(LABEL_FUNCTION + "\n# edited\n")
    assert inputs_record(specs()["labels"], params, known)["files"][path] != md5
    remote = Params.model_validate({"data": {"url": "https://example.com/pets.tgz", "md5": None}})
    assert inputs_record(specs()["download"], remote, known)["files"] == {}  # the URL is the id
