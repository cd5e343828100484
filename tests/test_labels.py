"""The five labelling methods, the seeded split, and every way a data set can be unusable."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from pets.config import LabelsParams
from pets.errors import PetsError
from pets.labels import (
    label_dataset,
    label_folder,
    label_name_re,
    random_split,
    read_label_csv,
)
from pets.synthetic import make_pets

TINY = ((48, 36), (36, 48))


def test_name_re_is_the_lessons_regex_on_the_path() -> None:
    labels = label_name_re(
        [
            "images/Abyssinian_1.jpg",
            "images/great_pyrenees_173.jpg",
            "images/Abyssinian_1.mat",
            "images/README.jpg",
        ],
        LabelsParams().pattern,
    )
    assert labels == {
        "images/Abyssinian_1.jpg": "Abyssinian",
        "images/great_pyrenees_173.jpg": "great_pyrenees",
        "images/Abyssinian_1.mat": None,
        "images/README.jpg": None,
    }


def test_folder_labels_and_split() -> None:
    labels = label_folder(
        ["train/cat/1.jpg", "val/dog/2.jpg", "test/cat/3.jpg", "train/x.jpg"], "train", "val"
    )
    assert labels == {"train/cat/1.jpg": ("cat", False), "val/dog/2.jpg": ("dog", True)}


def test_random_split_is_seeded_and_ignores_global_state() -> None:
    random.seed(123)
    first = random_split(100, 0.2, seed=2)
    import torch

    torch.manual_seed(999)
    assert random_split(100, 0.2, seed=2) == first
    assert sum(first) == 20
    assert random_split(100, 0.2, seed=3) != first
    assert sum(random_split(7, 0.2, seed=2)) == 1  # int(0.2 * 7), as fastai's RandomSplitter


@pytest.fixture
def pets_folder(tmp_path: Path) -> Path:
    make_pets(tmp_path / "pets", 5, classes=3, layout="pets", sizes=TINY)
    return tmp_path / "pets"


def test_name_re_dataset(pets_folder: Path) -> None:
    (pets_folder / "images" / "Abyssinian_100.mat").write_text("not a photo")
    (pets_folder / "images" / "broken_1.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (pets_folder / "images" / "notes.jpg").write_bytes(b"")
    labelled = label_dataset(LabelsParams(), pets_folder, seed=2, threads=2)
    assert labelled.classes == ["Abyssinian", "Bengal", "Birman"]
    assert len(labelled.split) == 15 and labelled.split["is_valid"].sum() == 3
    assert labelled.split["path"].iloc[0] == "images/Abyssinian_1.jpg"
    quality = labelled.quality()
    assert quality["skipped"] == [
        {"path": "images/broken_1.jpg", "reason": quality["skipped"][0]["reason"]},
        {"path": "images/notes.jpg", "reason": "pattern does not match"},
    ]
    assert quality["skipped"][0]["reason"] == "not an image"
    assert quality["images_found"] == 17  # the .mat file is not an image
    again = label_dataset(LabelsParams(), pets_folder, seed=2, threads=1)
    assert again.split.equals(labelled.split)


def test_folder_dataset(tmp_path: Path) -> None:
    make_pets(tmp_path / "imagenet", 5, classes=3, layout="folder", sizes=TINY)
    params = LabelsParams(method="folder", folder="")
    labelled = label_dataset(params, tmp_path / "imagenet", seed=2)
    assert labelled.split["is_valid"].sum() == 3  # every 5th photo is in valid/
    assert set(labelled.split[labelled.split["is_valid"]]["path"].str.split("/").str[0]) == {
        "valid"
    }
    with pytest.raises(PetsError, match="labels.valid_folder: no photos in .*/val/<label>/"):
        label_dataset(
            LabelsParams(method="folder", folder="", valid_folder="val"),
            tmp_path / "imagenet",
            seed=2,
        )


def test_csv_dataset(tmp_path: Path) -> None:
    make_pets(tmp_path / "csvset", 5, classes=3, layout="csv", sizes=TINY)
    labelled = label_dataset(LabelsParams(method="csv"), tmp_path / "csvset", seed=2)
    assert len(labelled.split) == 15 and labelled.classes == ["Abyssinian", "Bengal", "Birman"]
    table = (tmp_path / "csvset" / "labels.csv").read_text().splitlines()
    fixed = ["name,label,is_valid,notes"] + [
        f"{line},{'true' if n % 3 == 0 else 'false'},x" for n, line in enumerate(table[1:])
    ]
    (tmp_path / "csvset" / "labels.csv").write_text("\n".join(fixed) + "\n")
    labelled = label_dataset(LabelsParams(method="csv"), tmp_path / "csvset", seed=2)
    assert labelled.split["is_valid"].sum() == 5


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "name,label\nAbyssinian_1.jpg,a\nmissing_9.jpg,b\n",
            "names 1 photos not found .* 'missing_9.jpg'",
        ),
        (
            "name,label\nAbyssinian_1.jpg,a\nAbyssinian_1.jpg,b\n",
            "lists 'Abyssinian_1.jpg' more than once",
        ),
        ("name,label\nAbyssinian_1.jpg,\n", "row 2 has an empty label"),
        ("file,breed\nAbyssinian_1.jpg,a\n", "needs columns name,label"),
        ("name,label,is_valid\nAbyssinian_1.jpg,a,maybe\n", "is_valid must be true/false"),
    ],
)
def test_bad_csv(tmp_path: Path, body: str, message: str) -> None:
    make_pets(tmp_path / "csvset", 2, classes=2, layout="csv", sizes=TINY)
    (tmp_path / "csvset" / "labels.csv").write_text(body)
    with pytest.raises(PetsError, match=f"labels.csv_file: .*{message}"):
        label_dataset(LabelsParams(method="csv"), tmp_path / "csvset", seed=2)


def test_extra_csv_columns_are_ignored(tmp_path: Path) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text("name,label,notes\na.jpg,cat,fluffy\n")
    assert list(read_label_csv(csv).columns) == ["name", "label", "notes"]


def test_name_func_dataset(pets_folder: Path, tmp_path: Path, monkeypatch) -> None:
    module = tmp_path / "mylabels.py"
    module.write_text(
        "def species(path):\n    return 'cat' if path.name[0].isupper() and "
        "path.name.startswith('B') else 'other'\n"
        "def broken(path):\n    return 3\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    labelled = label_dataset(
        LabelsParams(method="name_func", func="mylabels:species"), pets_folder, seed=2
    )
    assert labelled.classes == ["cat", "other"]
    with pytest.raises(PetsError, match="labels.func: mylabels:broken returned 3 for"):
        label_dataset(LabelsParams(method="name_func", func="mylabels:broken"), pets_folder, seed=2)
    with pytest.raises(PetsError, match="labels.func: cannot import 'nosuchmodule'"):
        label_dataset(LabelsParams(method="name_func", func="nosuchmodule:f"), pets_folder, seed=2)
    with pytest.raises(PetsError, match="labels.func: 'mylabels' has no function 'nothere'"):
        label_dataset(
            LabelsParams(method="name_func", func="mylabels:nothere"), pets_folder, seed=2
        )


def test_lists_dataset(pets_folder: Path) -> None:
    names = sorted(p.name for p in (pets_folder / "images").iterdir())
    (pets_folder / "labels.txt").write_text("\n".join("cat" if n < "B" else "dog" for n in names))
    labelled = label_dataset(LabelsParams(method="lists"), pets_folder, seed=2)
    assert labelled.classes == ["cat", "dog"]
    (pets_folder / "labels.txt").write_text("cat\ndog\n")
    with pytest.raises(PetsError, match="has 2 labels for 15 photos"):
        label_dataset(LabelsParams(method="lists"), pets_folder, seed=2)


def test_unusable_datasets_stop_early(pets_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(
        PetsError,
        match=r"labels.pattern: .* matches none of the 15 photos .*"
        r"e.g. '/Abyssinian_1.jpg'",
    ):
        label_dataset(LabelsParams(pattern=r"/(\d+)_cat\.png$"), pets_folder, seed=2)
    with pytest.raises(PetsError, match="labels.folder: .* is not a folder"):
        label_dataset(LabelsParams(folder="nothere"), pets_folder, seed=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PetsError, match="labels.folder: no image files under"):
        label_dataset(LabelsParams(folder=""), tmp_path / "empty", seed=2)
    with pytest.raises(PetsError, match=r"labels: only one class \('Abyssinian'\)"):
        label_dataset(LabelsParams(pattern=r"/(Abyssinian)_\d+.jpg$"), pets_folder, seed=2)
    with pytest.raises(PetsError, match="labels.valid_pct: no validation photo"):
        label_dataset(LabelsParams(valid_pct=0.01), pets_folder, seed=2)


def test_all_broken_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    for n in range(3):
        (tmp_path / "images" / f"cat_{n}.jpg").write_text("no")
    with pytest.raises(PetsError, match="no usable photo among 3 .* not an image"):
        label_dataset(LabelsParams(), tmp_path, seed=2)


def test_validation_class_missing_from_training(tmp_path: Path) -> None:
    make_pets(tmp_path / "imagenet", 5, classes=2, layout="folder", sizes=TINY)
    extra = tmp_path / "imagenet" / "valid" / "zebra"
    extra.mkdir()
    (tmp_path / "imagenet" / "valid" / "Abyssinian" / "abyssinian_0005.jpg").rename(extra / "z.jpg")
    with pytest.raises(
        PetsError, match="1 validation classes never occur in training, e.g. 'zebra'"
    ):
        label_dataset(LabelsParams(method="folder", folder=""), tmp_path / "imagenet", seed=2)


def test_label_files_that_are_not_regular_files_or_text(tmp_path: Path) -> None:
    import os

    from pets.labels import read_label_csv, read_label_list

    os.mkfifo(tmp_path / "labels.csv")
    with pytest.raises(PetsError, match="labels.csv_file: .* is a FIFO"):
        read_label_csv(tmp_path / "labels.csv")  # reading it would block for ever
    os.mkfifo(tmp_path / "labels.txt")
    with pytest.raises(PetsError, match="labels.labels_file: .* is a FIFO"):
        read_label_list(tmp_path / "labels.txt", 1)
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(PetsError, match="labels.labels_file: .* is not UTF-8 text"):
        read_label_list(tmp_path / "latin.txt", 1)
