"""Your own photos: a folder used in place, Mac and Windows junk left out, the hand-made
`<label>/*.jpg` layout split by `valid_pct`."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from pets.archive import extract, is_junk, link_folder, source_kind
from pets.config import LabelsParams, Params
from pets.errors import PetsError
from pets.labels import label_dataset, label_folder, stratified_split
from pets.report import data_notes
from pets.stages import download
from pets.synthetic import make_pets
from tests.helpers import SMALL_SIZES, TINY, make_project, run_tool

JUNK = ("Thumbs.db", "desktop.ini", ".DS_Store")


def _photos(root: Path, classes: int = 3, per_class: int = 5) -> Path:
    make_pets(root, per_class, classes=classes, seed=1, layout="labelled", sizes=SMALL_SIZES)
    return root


def _add_junk(folder: Path) -> None:
    for name in JUNK:
        (folder / name).write_bytes(b"junk")
    (folder / "Abyssinian" / "Thumbs.db").write_bytes(b"junk")


def test_junk_names() -> None:
    for name in ("__MACOSX/photos/._1.jpg", "photos/Thumbs.db", "a/desktop.ini", ".DS_Store"):
        assert is_junk(name), name
    for name in ("photos/cat/1.jpg", "photos/thumbs/1.jpg", "MACOSX/1.jpg"):
        assert not is_junk(name), name


def test_a_folder_is_linked_never_copied_or_modified(tmp_path: Path) -> None:
    source = _photos(tmp_path / "mine" / "photos")  # one top folder: it becomes the root
    _add_junk(source)
    (tmp_path / "mine" / "__MACOSX").mkdir()
    (tmp_path / "mine" / "__MACOSX" / "._photos").write_bytes(b"fork")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "mine").rglob("*") if p.is_file()}
    linked = link_folder(tmp_path / "mine", tmp_path / "dataset")
    assert linked.top_folder == "photos" and linked.files == 15 and linked.linked
    made = sorted(
        p.relative_to(tmp_path / "dataset").as_posix()
        for p in (tmp_path / "dataset").rglob("*")
        if p.is_file()
    )
    assert made[0] == "Abyssinian/1.jpg" and len(made) == 15  # no junk
    first = tmp_path / "dataset" / "Abyssinian" / "1.jpg"
    assert first.stat().st_ino == (source / "Abyssinian" / "1.jpg").stat().st_ino
    # The same content, the same md5; rebuilding and deleting leave the photos as they were.
    assert link_folder(tmp_path / "mine", tmp_path / "again").md5 == linked.md5
    for path in (tmp_path / "dataset").rglob("*.jpg"):
        path.unlink()
    assert before == {
        p: p.stat().st_mtime_ns for p in (tmp_path / "mine").rglob("*") if p.is_file()
    }


def test_what_data_url_names(tmp_path: Path) -> None:
    assert source_kind("https://example.com/pets.tgz") == "archive"
    assert source_kind(str(_photos(tmp_path / "photos"))) == "folder"
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "cat.txt").write_text("http://127.0.0.1/1.jpg\n")
    assert source_kind(str(tmp_path / "lists")) == "urls"
    (tmp_path / "urls.csv").write_text("url,label\n")
    assert source_kind(str(tmp_path / "urls.csv")) == "urls"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "Thumbs.db").write_bytes(b"junk")
    with pytest.raises(PetsError, match=r"data.url: .*empty holds no photos"):
        source_kind(str(tmp_path / "empty"))


def _zip_from_a_mac(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as out:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                name = path.relative_to(folder.parent).as_posix()
                out.write(path, name)
                out.writestr(f"__MACOSX/{os.path.dirname(name)}/._{path.name}", b"fork")
    return archive


def test_archives_from_macs_and_windows(tmp_path: Path) -> None:
    source = _photos(tmp_path / "photos")
    _add_junk(source)
    top = extract(_zip_from_a_mac(source, tmp_path / "photos.zip"), tmp_path / "a")
    assert top == "photos"  # __MACOSX is not a second top folder
    assert not any(is_junk(p.name) for p in (tmp_path / "a").rglob("*"))
    with tarfile.open(tmp_path / "photos.tgz", "w:gz") as out:
        out.add(source, "photos")
        info = tarfile.TarInfo("__MACOSX/photos/._x.jpg")
        info.size = 4
        out.addfile(info, io.BytesIO(b"fork"))
    assert extract(tmp_path / "photos.tgz", tmp_path / "b") == "photos"
    assert not (tmp_path / "b" / "Thumbs.db").exists()
    labelled = label_dataset(
        LabelsParams(method="folder", folder="", train_folder=""), tmp_path / "b", seed=2
    )
    assert labelled.skipped == [] and labelled.classes == ["Abyssinian", "Bengal", "Birman"]


def test_hand_made_folders_are_split_by_valid_pct(tmp_path: Path) -> None:
    assert label_folder(["cat/1.jpg", "x.jpg", "a/dog/2.jpg"], "", "valid") == {
        "cat/1.jpg": ("cat", False),
        "a/dog/2.jpg": ("dog", False),
    }
    source = _photos(tmp_path / "photos", classes=2, per_class=10)
    (source / "stray.jpg").write_bytes((source / "Bengal" / "1.jpg").read_bytes())
    params = LabelsParams(method="folder", folder="", train_folder="", valid_pct=0.25)
    labelled = label_dataset(params, source, seed=2)
    assert int(labelled.split["is_valid"].sum()) == 5  # int(0.25 * 20)
    assert labelled.skipped == [("stray.jpg", "not in a label folder")]
    assert label_dataset(params, source, seed=2).split.equals(labelled.split)  # seeded


def test_the_download_stage_takes_a_folder(tmp_path: Path) -> None:
    source = _photos(tmp_path / "mine")
    params = Params.model_validate({"data": {"url": str(source)}})
    download.main(params, dataset=tmp_path / "dataset", manifest=tmp_path / "dataset.json")
    manifest = json.loads((tmp_path / "dataset.json").read_text())
    assert manifest["kind"] == "folder" and manifest["files"] == 15 and len(manifest["md5"]) == 32
    assert (tmp_path / "dataset" / "Birman" / "5.jpg").is_file()
    explicit = Params.model_validate({"data": {"url": str(source), "md5": "0" * 32}})
    with pytest.raises(PetsError, match="data.md5: a folder has no md5"):
        download.main(explicit, dataset=tmp_path / "d2", manifest=tmp_path / "d2.json")
    assert not (tmp_path / "d2").exists() and not (tmp_path / "d2.json").exists()


def _planned(project: Path, target: str) -> set[str]:
    text = run_tool(project, "snakemake", "-n", "--cores", "1", target).stdout
    if "Job stats:" not in text:
        return set()
    table = text.split("Job stats:", 1)[1].split("\n\n", 1)[0].splitlines()[3:]
    return {line.split()[0] for line in table if line.strip()} - {"total"}


@pytest.mark.dag
def test_both_tools_track_a_folder_by_content(tmp_path: Path) -> None:
    source = _photos(tmp_path / "mine")
    labels = {"method": "folder", "folder": "", "train_folder": ""}
    project = make_project(
        tmp_path / "project", TINY, {"data": {"url": str(source)}, "labels": labels}
    )
    run_tool(project, "snakemake", "--cores", "1", "data/split.csv")
    run_tool(project, "dvc", "repro", "labels")
    assert _planned(project, "data/split.csv") == set()
    run_tool(project, "pets", "dag", "inputs")
    assert "labels" not in run_tool(project, "dvc", "status", "labels").stdout
    new = source / "Bengal" / "6.jpg"
    new.write_bytes((source / "Bengal" / "1.jpg").read_bytes())
    try:
        assert _planned(project, "data/split.csv") == {"download", "labels"}
        run_tool(project, "pets", "dag", "inputs")
        assert "changed deps" in run_tool(project, "dvc", "status", "download").stdout
    finally:
        new.unlink()
    assert _planned(project, "data/split.csv") == set()


def test_a_stratified_split_holds_out_each_class() -> None:
    labels = ["a"] * 20 + ["b"] * 3 + ["c"] * 2
    is_valid = stratified_split(labels, 0.2, seed=2)
    held = {
        name: sum(v for v, lab in zip(is_valid, labels, strict=True) if lab == name)
        for name in "abc"
    }
    assert held == {"a": 4, "b": 1, "c": 1}  # round(0.2 * n), at least 1, never all
    assert stratified_split(labels, 0.2, seed=2) == is_valid
    assert stratified_split(labels, 0.2, seed=3) != is_valid
    with pytest.raises(PetsError, match="labels.stratify: class 'd' has 1 photo"):
        stratified_split([*labels, "d"], 0.2, seed=2)


def test_uneven_classes_get_a_note(tmp_path: Path) -> None:
    source = _photos(tmp_path / "photos", classes=2, per_class=12)
    for number in range(3, 13):
        (source / "Bengal" / f"{number}.jpg").unlink()
    params = LabelsParams(method="folder", folder="", train_folder="", stratify=True)
    quality = label_dataset(params, source, seed=2).quality()
    assert quality["per_class"] == {
        "Abyssinian": {"train": 10, "valid": 2},
        "Bengal": {"train": 1, "valid": 1},
    }
    assert quality["balance"]["ratio"] == 6.0
    assert (
        "'Abyssinian', 12 photos) has 6.0x the photos of the smallest"
        in (quality["balance"]["note"])
    )
    assert "Uneven classes" in "".join(data_notes(quality))
    even = label_dataset(params, _photos(tmp_path / "even", classes=2), seed=2).quality()
    assert even["balance"]["note"] == "" and data_notes(even) == []


def _corrected(tmp_path: Path, text: str | None) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    os.chdir(tmp_path)  # the corrections file is a file of the project: its path is relative
    source = _photos(tmp_path / "photos", classes=2, per_class=5)
    if text is not None:
        (tmp_path / "corrections.csv").write_text(text)
    params = LabelsParams(
        method="folder", folder="", train_folder="", corrections="corrections.csv"
    )
    labelled = label_dataset(params, source, seed=2)
    return {"split": labelled.split, "quality": labelled.quality()}


def test_corrections_relabel_and_drop_after_the_split(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    before = _corrected(tmp_path / "a", None)
    assert before["quality"]["corrections"]["relabelled"] == 0  # no file yet: none
    after = _corrected(tmp_path / "b", "path,label\nAbyssinian/2.jpg,Bengal\nBengal/3.jpg,\n")
    split = after["split"].set_index("path")
    assert split.at["Abyssinian/2.jpg", "label"] == "Bengal" and "Bengal/3.jpg" not in split.index
    assert after["quality"]["corrections"] == {
        "file": "corrections.csv",
        "relabelled": 1,
        "dropped": 1,
    }
    unchanged = before["split"].set_index("path").drop(index=["Bengal/3.jpg"])["is_valid"]
    assert split["is_valid"].equals(unchanged)  # no other photo moved between train and valid
    assert "1 labels corrected and 1 photos dropped" in "".join(data_notes(after["quality"]))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "path,label\nAbyssinian/1.jpg,Bengal\nNope/1.jpg,Bengal\n",
            r"row 3: no photo 'Nope/1.jpg'",
        ),
        ("path,label\nAbyssinian/1.jpg,Siamese\n", r"row 2: label 'Siamese' is not one of the 2"),
        ("path,label\nBengal/1.jpg,\nBengal/1.jpg,Bengal\n", r"row 3 names 'Bengal/1.jpg' again"),
        ("file,label\n", r"needs the columns path,label"),
    ],
)
def test_bad_corrections_are_one_line(tmp_path: Path, monkeypatch, text: str, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PetsError, match=rf"labels.corrections: corrections.csv {message}"):
        _corrected(tmp_path, text)
