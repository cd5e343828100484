"""Using the model: the pickle-free export round-trips, `pets predict` agrees with the
interpretation stage, reports unreadable photos without stopping, and writes every format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from pets.export import SPEC, WEIGHTS, load_exported
from pets.predict import Predictor, photo_paths
from tests.helpers import tool_env

pytestmark = pytest.mark.dag


def _pets(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pets.cli", *args], capture_output=True, text=True, env=tool_env()
    )


def test_the_export_loads_without_pickle_and_matches(snakemade: Path) -> None:
    folder = snakemade / "models/export"
    spec = json.loads((folder / SPEC).read_text())
    assert spec["arch"] == "resnet50" and spec["presize"] == 64 and len(spec["classes"]) == 4
    assert set(spec["head"]) == {"features", "hidden", "dropout"}
    checks = json.loads((snakemade / "reports/export.json").read_text())
    assert set(checks["max_abs_difference"]) == {"safetensors", "torchscript", "onnx"}
    assert max(checks["max_abs_difference"].values()) <= checks["tolerance"]
    assert (folder / WEIGHTS).read_bytes()[:8] != b"\x80\x02\x8a\x0a"  # no pickle header
    model, _ = load_exported(folder)
    assert model(torch.zeros(1, 3, 48, 48)).shape == (1, 4)


@pytest.mark.parametrize("source", ["models/export", "models/stage-2.pth"])
def test_predict_agrees_with_the_interpretation_stage(snakemade: Path, source: str) -> None:
    model = "resnet50" if source == "models/export" else "stage-2"
    expected = pd.read_csv(snakemade / f"reports/{model}/predictions.csv")
    predictor = Predictor(snakemade / source, device="cpu", bs=3)
    paths = [snakemade / "data/dataset" / p for p in expected["path"]]
    got = list(predictor.predict(paths))
    assert [g.top[0][0] for g in got] == expected["top1"].tolist()
    for g, p in zip(got, expected["p_top1"], strict=True):
        assert g.top[0][1] == pytest.approx(p, abs=1e-4)


def test_predict_command_formats_and_bad_files(snakemade: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("Abyssinian_1.jpg", "Bengal_2.jpg"):
        (photos / name).write_bytes((snakemade / "data/dataset/images" / name).read_bytes())
    (photos / "broken.jpg").write_bytes(b"not a photo")
    export = str(snakemade / "models/export")
    text = _pets("predict", export, str(photos), "--top-k", "2")
    assert text.returncode == 1  # one photo could not be read; the others were predicted
    lines = text.stdout.splitlines()
    assert len(lines) == 3 and "broken.jpg  error: cannot read" in lines[2]
    assert all(len(line.split()) == 5 for line in lines[:2])  # path, 2 x (class, probability)
    assert "pets predict: 1 photos could not be read" in text.stderr
    as_json = json.loads(_pets("predict", export, str(photos / "Bengal_2.jpg"), "--json").stdout)
    assert len(as_json[0]["predictions"]) == 3 and as_json[0]["error"] is None
    assert sum(p["probability"] for p in as_json[0]["predictions"]) <= 1 + 1e-6
    tta = _pets("predict", export, str(photos / "Bengal_2.jpg"), "--csv", "--tta")
    table = pd.read_csv(pd.io.common.StringIO(tta.stdout))
    assert list(table.columns[:3]) == ["path", "top1", "p_top1"] and len(table) == 1
    assert _pets("predict", str(tmp_path / "nothing"), str(photos)).returncode == 1


def test_photo_paths_walk_folders(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"")
    (tmp_path / "a" / "notes.txt").write_text("")
    assert photo_paths([tmp_path / "a", tmp_path / "y.png"]) == [
        tmp_path / "a" / "x.jpg",
        tmp_path / "y.png",
    ]
