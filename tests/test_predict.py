"""Using the model: the pickle-free export round-trips, `pets predict` agrees with the
interpretation stage, reports unreadable photos without stopping, and writes every format."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

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
    assert set(checks["max_abs_difference"]) == {"safetensors", "pt2"}  # onnx: asked for only
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


def _broken_png(path: Path) -> None:
    """A PNG whose second data chunk is damaged: Pillow raises SyntaxError, not OSError."""
    pixels = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=0)
    data = bytearray(buffer.getvalue())
    second = data.find(b"IDAT", data.find(b"IDAT") + 4)
    data[second : second + 4] = b"\x00\x01\x02\x03"
    path.write_bytes(bytes(data))


def test_predict_refuses_bad_models_options_and_folders(snakemade: Path, tmp_path: Path) -> None:
    photo = tmp_path / "Bengal_2.jpg"
    photo.write_bytes((snakemade / "data/dataset/images/Bengal_2.jpg").read_bytes())
    _broken_png(tmp_path / "damaged.png")
    export = snakemade / "models/export"
    mixed = _pets("predict", str(export), str(photo), str(tmp_path / "damaged.png"))
    assert mixed.returncode == 1 and "Traceback" not in mixed.stderr
    assert "damaged.png  error: cannot read" in mixed.stdout.splitlines()[1]
    for option in ("--top-k", "--bs"):
        bad = _pets("predict", str(export), str(photo), option, "0")
        assert bad.returncode == 2 and f"{option}: '0' is not a whole number" in bad.stderr
    (tmp_path / "empty").mkdir()
    empty = _pets("predict", str(export), str(tmp_path / "empty"))
    assert empty.returncode == 1
    assert empty.stderr.strip().endswith("empty: no photos in this folder")
    damaged = tmp_path / "export"
    shutil.copytree(export, damaged)
    (damaged / WEIGHTS).write_bytes((export / WEIGHTS).read_bytes()[:1000])
    truncated = _pets("predict", str(damaged), str(photo))
    assert truncated.returncode == 1 and len(truncated.stderr.strip().splitlines()) == 1
    assert f"{damaged / WEIGHTS}: cannot be read" in truncated.stderr
    spec = json.loads((export / SPEC).read_text())
    del spec["classes"]
    (damaged / SPEC).write_text(json.dumps(spec))
    lacking = _pets("predict", str(damaged), str(photo))
    assert (
        lacking.returncode == 1 and f"{damaged / SPEC}: classes: field required" in lacking.stderr
    )


def _export(project: Path, out: Path, export: str) -> subprocess.CompletedProcess[str]:
    (out / "params.yaml").write_text(f"tracking: {{enabled: false}}\nexport: {export}\n")
    return subprocess.run(
        [
            sys.executable,
            "workflow/scripts/export.py",
            *("--params", str(out / "params.yaml"), "--checkpoint", "models/stage-1.pth"),
            *("--out", str(out / "export"), "--checks", str(out / "checks.json")),
        ],
        cwd=project,
        capture_output=True,
        text=True,
        env=tool_env(),
    )


def test_export_checks_a_single_photo_and_holds_its_tolerance(
    snakemade: Path, tmp_path: Path
) -> None:
    one = _export(snakemade, tmp_path, "{model: stage-1, check_images: 1, onnx: true}")
    assert one.returncode == 0, one.stderr[-2000:]
    checks = json.loads((tmp_path / "checks.json").read_text())
    assert checks["images"] == 1 and set(checks["max_abs_difference"]) == {
        "safetensors",
        "pt2",
        "onnx",
    }
    assert all(value <= 1e-3 for value in checks["max_abs_difference"].values())
    shutil.rmtree(tmp_path / "export")
    (tmp_path / "checks.json").unlink()
    strict = _export(snakemade, tmp_path, "{model: stage-1, tolerance: 1.0e-12}")
    if strict.returncode == 0:  # every copy matched to the last bit: nothing to refuse
        differences = json.loads((tmp_path / "checks.json").read_text())["max_abs_difference"]
        assert max(differences.values()) <= 1e-12
    else:
        assert strict.stderr.strip().splitlines()[-1].startswith("export: error: ")
        assert "(export.tolerance 1e-12)" in strict.stderr
        assert not (tmp_path / "export").exists() and not (tmp_path / "checks.json").exists()
