"""The model's spec is input too: an export's model.json or a checkpoint's header that is wrong in
type, range or class count stops `pets predict`, `Predictor` and every stage that loads it with
one line naming the file and the field."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pets import cli
from pets.errors import PetsError
from pets.export import SPEC, WEIGHTS, load_exported, save_weights, spec_of
from pets.learner import load_trained_model, read_checkpoint
from pets.model import create_body, create_cnn
from pets.modelspec import ModelRecord, ModelSpec
from pets.predict import Predictor
from pets.train import save_checkpoint

CLASSES = ["Abyssinian", "Bengal", "Birman"]


def _record(**changes) -> ModelRecord:
    body = create_body("resnet18", "none")
    fields = {
        "arch": "resnet18",
        "weights": "none",
        "classes": CLASSES,
        "size": 32,
        "presize": 48,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "split": body.split,
        "head": {"features": body.features, "hidden": 512, "dropout": [0.25, 0.5]},
        "frozen": True,
        "lr": [[1e-3, 1e-3, 1e-2]],
        "bs": 4,
        "epochs": 1,
    }
    return ModelRecord.parse({**fields, **changes}, "test")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny untrained model as an export folder and as a checkpoint, and a photo."""
    root = tmp_path_factory.mktemp("spec")
    torch.manual_seed(0)
    record = _record()
    model = create_cnn(create_body("resnet18", "none"), len(CLASSES)).eval()
    save_weights(model, spec_of(record), root / "export")
    save_checkpoint(root / "stage-1.pth", model, record.to_dict())
    pixels = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "photo.jpg")
    return root, root / "photo.jpg"


def test_the_record_round_trips_through_checkpoint_and_export(exported) -> None:
    root, photo = exported
    _, record = load_trained_model(root / "stage-1.pth", "predict")
    assert record == _record() and record.spec == _record().spec
    assert isinstance(record.classes, tuple) and isinstance(record.mean, tuple)
    with pytest.raises(Exception, match="frozen"):
        record.size = 64  # type: ignore[misc]
    _, spec = load_exported(root / "export")
    assert spec == record.spec and type(spec) is ModelSpec
    document = json.loads((root / "export" / SPEC).read_text())
    assert {"format", "input", "torch"} <= set(document) and "lr" not in document
    for source in (root / "export", root / "stage-1.pth"):
        result = next(Predictor(source, device="cpu").predict([photo]))
        assert not result.error and len(result.top) == 3


BAD_SPECS = [
    ({"size": 6000}, "size: input should be less than or equal to 2048 (got 6000)"),
    ({"size": -3}, "size: input should be greater than or equal to 16 (got -3)"),
    ({"size": 224.0}, "size: input should be a valid integer (got 224.0)"),
    ({"size": True}, "size: input should be a valid integer (got True)"),
    ({"presize": 10**9}, "presize: input should be less than or equal to 4096"),
    ({"mean": "0.5"}, "mean: input should be a valid tuple (got '0.5')"),
    ({"mean": [0.5, 0.5]}, "mean.2: field required"),
    ({"mean": [0.5, 0.5, float("nan")]}, "mean.2: input should be a finite number"),
    ({"std": [0, 0, 0]}, "std.0: input should be greater than or equal to 0.001 (got 0)"),
    ({"std": [0.2, -1, 0.2]}, "std.1: input should be greater than or equal to 0.001 (got -1)"),
    ({"classes": "Bengal"}, "classes: input should be a valid tuple (got 'Bengal')"),
    ({"classes": ["a", "a", "b"]}, "classes: 'a' is listed twice"),
    ({"classes": ["a", "", "b"]}, "classes.1: string should have at least 1 character"),
    ({"classes": ["a", 2, "b"]}, "classes.1: input should be a valid string (got 2)"),
    ({"classes": ["only"]}, "classes: tuple should have at least 2 items"),
    ({"arch": "resnet35"}, "arch: unknown architecture 'resnet35'"),
    ({"head": {"features": 512, "hidden": 512}}, "head.dropout: field required"),
    ({"sizes": 3}, "sizes: unknown key; allowed here: arch, weights, classes, size,"),
]


@pytest.mark.parametrize(("change", "expected"), BAD_SPECS)
def test_a_bad_export_spec_is_one_line_naming_file_and_field(
    exported, tmp_path: Path, change: dict, expected: str
) -> None:
    root, _ = exported
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / WEIGHTS).write_bytes((root / "export" / WEIGHTS).read_bytes())
    document = {**json.loads((root / "export" / SPEC).read_text()), **change}
    (folder / SPEC).write_text(json.dumps(document))
    with pytest.raises(PetsError) as error:
        Predictor(folder, device="cpu")
    message = str(error.value)
    assert message.startswith(f"{folder / SPEC}: ") and expected in message, message
    assert "\n" not in message and len(message) < 1000


@pytest.mark.parametrize(("change", "expected"), BAD_SPECS[:12])
def test_a_bad_checkpoint_header_is_refused_by_every_loader(
    exported, tmp_path: Path, change: dict, expected: str
) -> None:
    root, _ = exported
    saved = torch.load(root / "stage-1.pth", weights_only=True)
    torch.save({**saved, **change}, tmp_path / "bad.pth")
    for key in ("predict", "finetune", "export"):
        with pytest.raises(PetsError) as error:
            read_checkpoint(tmp_path / "bad.pth", key)
        message = str(error.value)
        assert message.startswith(f"{key}: {tmp_path / 'bad.pth'}: ") and expected in message


def test_the_class_count_must_match_the_weights(exported, tmp_path: Path) -> None:
    root, _ = exported
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / WEIGHTS).write_bytes((root / "export" / WEIGHTS).read_bytes())
    document = json.loads((root / "export" / SPEC).read_text())
    (folder / SPEC).write_text(json.dumps({**document, "classes": [*CLASSES, "Bombay"]}))
    with pytest.raises(PetsError, match="classes: 4 names, but the weights give 3 outputs"):
        load_exported(folder)
    saved = torch.load(root / "stage-1.pth", weights_only=True)
    torch.save({**saved, "classes": CLASSES[:2]}, tmp_path / "two.pth")
    with pytest.raises(PetsError, match="classes: 2 names, but the weights give 3 outputs"):
        load_trained_model(tmp_path / "two.pth", "export")
    torch.save({**saved, "head": {**saved["head"], "hidden": 256}}, tmp_path / "hidden.pth")
    with pytest.raises(PetsError, match="head.hidden: 256, but the weights' last layer takes 512"):
        load_trained_model(tmp_path / "hidden.pth", "get_preds")


def test_pets_predict_refuses_a_bad_spec_and_files_that_are_not_photos(
    exported, tmp_path: Path, capsys
) -> None:
    root, photo = exported
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / WEIGHTS).write_bytes((root / "export" / WEIGHTS).read_bytes())
    document = json.loads((root / "export" / SPEC).read_text())
    (folder / SPEC).write_text(json.dumps({**document, "std": [0, 0, 0]}))
    with pytest.raises(SystemExit) as code:
        cli.main(["predict", str(folder), str(photo)])
    assert code.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"pets predict: error: {folder / SPEC}: std.0: ") and "\n" not in err
    # A FIFO (or any non-regular file) named on the command line is an error row, not a hang.
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(SystemExit) as code:
        cli.main(["predict", str(root / "export"), str(photo), str(fifo), "/dev/null"])
    assert code.value.code == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and "error" not in out[0]
    assert out[1].endswith("error: cannot read " + str(fifo) + ": a FIFO (named pipe)")
    assert out[2].endswith("a character device")
    # ... and so is a FIFO given as the model or as its model.json.
    with pytest.raises(PetsError, match="a FIFO \\(named pipe\\); give an export folder"):
        Predictor(fifo, device="cpu")
    spec_fifo = tmp_path / "fifo-export"
    spec_fifo.mkdir()
    os.mkfifo(spec_fifo / SPEC)
    with pytest.raises(PetsError, match="model.json: is a FIFO"):
        Predictor(spec_fifo, device="cpu")
