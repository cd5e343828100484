"""Class and file names come from users: every place one is rendered (figures, the HTML page,
CSV files, terminal lines) shows it as text, whatever characters it holds."""

from __future__ import annotations

import html
import io
import json
import os
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pets import cli
from pets.config import LabelsParams
from pets.export import save_weights, spec_of
from pets.files import write_csv
from pets.interpret import predictions_table
from pets.labels import label_dataset
from pets.model import create_body, create_cnn
from pets.modelspec import ModelSpec
from pets.plots import confusion_matrix_plot, history_plot, image_grid, lr_find_plot
from pets.report import class_error_table, data_section, read_table, section, table, thumbnails

NAMES = [
    "$\\frac$",  # mathtext that does not parse: the whole figure failed
    "r$\\alpha$",  # mathtext that parses: shown as a Greek letter
    "$x^$",
    "100% {0} {}",
    "\"quoted\" 'single'",
    "<script>alert(1)</script>",
    "a/b\\c",
    "-rf",
    "=cmd|' /C calc'!A0",
    " spaced  out ",
    "NA",
    "柴犬",
    "Сиамская",
    "a,b;c\td",
]


def _draw(figure: matplotlib.figure.Figure) -> None:
    figure.canvas.draw()  # mathtext is parsed here: this is where a `$` name failed
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    matplotlib.pyplot.close(figure)


def test_figures_take_any_name_as_text() -> None:
    assert matplotlib.rcParams["text.parse_math"] is False
    photos = [np.zeros((8, 8, 3), np.uint8)] * len(NAMES)
    _draw(image_grid(photos, NAMES, rows=4, cols=4, title=NAMES[0]))
    matrix = np.arange(len(NAMES) ** 2).reshape(len(NAMES), -1) % 3
    _draw(confusion_matrix_plot(matrix, NAMES, f"{NAMES[1]}: confusion matrix"))
    _draw(confusion_matrix_plot(matrix, NAMES, NAMES[2], normalized=True))
    history = pd.DataFrame(
        {
            "epoch": [0, 1],
            "train_loss": [1.0, 0.5],
            "valid_loss": [1.1, 0.6],
            "error_rate": [0.5, 0.3],
        }
    )
    _draw(history_plot(history, NAMES[0]))
    curve = pd.DataFrame({"lr": [1e-5, 1e-3], "loss": [1.0, 0.9], "smoothed_loss": [1.0, 0.95]})
    _draw(lr_find_plot(curve, {"$\\frac$ valley": {"lr": 1e-4, "loss": 0.9}}))


def test_the_page_escapes_every_name() -> None:
    per_class = pd.DataFrame({"class": NAMES, "error_rate": np.linspace(0, 1, len(NAMES))})
    counts = {name: {"train": 3, "valid": 1} for name in NAMES}
    quality = {
        "per_class": counts,
        "skipped": [{"path": f"images/{NAMES[5]}.jpg", "reason": "<b>broken</b>"}],
        "images_used": 4,
        "c": len(NAMES),
        "train": 3,
        "valid": 1,
        "images_found": 5,
        "skipped_count": 1,
    }

    class Model:  # what class_error_table reads of a ModelReport
        def __init__(self, name: str) -> None:
            self.name, self.per_class = name, per_class

    flips = pd.DataFrame(
        {
            "path": [NAMES[5]],
            "actual": [NAMES[5]],
            "predicted_before": [NAMES[0]],
            "predicted_after": [NAMES[4]],
        }
    )
    show_batch = Path(__file__).with_name("_show_batch.png")
    Image.new("RGB", (2, 2)).save(show_batch)
    try:
        markup = "".join(
            [
                data_section(quality, show_batch),
                table(class_error_table([Model("<i>a</i>"), Model("b")])),
                section("x", NAMES[5], []),
                thumbnails(flips, {NAMES[5]: "data:image/jpeg;base64,"}, 5),
            ]
        )
    finally:
        show_batch.unlink()
    assert "<script>" not in markup and "<b>broken" not in markup and "<i>a" not in markup
    # pandas writes runs of spaces as &nbsp; and a tab as \t: compare with those undone.
    text = " ".join(html.unescape(markup).replace("\xa0", " ").split())
    for name in NAMES:
        assert " ".join(name.replace("\t", "\\t").split()) in text


def test_csv_files_keep_names_exactly(tmp_path: Path) -> None:
    log_probs = np.log(np.full((len(NAMES), len(NAMES)), 1 / len(NAMES)))
    paths = [f"images/{name}_{i}.jpg" for i, name in enumerate(NAMES)]
    frame = predictions_table(paths, np.arange(len(NAMES)), log_probs, NAMES)
    write_csv(tmp_path / "predictions.csv", frame)
    back = read_table(tmp_path / "predictions.csv")
    assert back["actual"].tolist() == NAMES and back["path"].tolist() == paths


@pytest.fixture(scope="module")
def odd_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("names")
    body = create_body("resnet18", "none")
    classes = ["\x1b[2Jcleared", "two words", "$x$"]
    spec = ModelSpec.parse(
        {
            "arch": "resnet18",
            "weights": "none",
            "classes": classes,
            "size": 32,
            "presize": 48,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
            "split": body.split,
            "head": {"features": body.features, "hidden": 512, "dropout": [0.25, 0.5]},
        },
        "test",
    )
    torch.manual_seed(0)
    save_weights(create_cnn(body, 3).eval(), spec_of(spec), root / "export")
    photo = root / "-photo\x1b]0;title\x07.jpg"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(photo, format="JPEG")
    return root / "export", photo


def test_terminal_lines_show_control_characters_escaped(odd_export, capsys) -> None:
    export, photo = odd_export
    with pytest.raises(SystemExit) as code:
        cli.main(["predict", str(export), "--", str(photo), str(photo.with_name("\x1b[1mgone"))])
    assert code.value.code == 1
    captured = capsys.readouterr()
    assert "\x1b" not in captured.out and "\x07" not in captured.out and "\x1b" not in captured.err
    lines = captured.out.splitlines()
    assert len(lines) == 2 and "\\x1b]0;title\\x07.jpg" in lines[0]
    assert "\\x1b[2Jcleared" in lines[0] or "two words" in lines[0]
    # Structured output keeps the names exactly.
    cli.main(["predict", str(export), "--json", "--", str(photo)])
    found = json.loads(capsys.readouterr().out)
    assert found[0]["path"] == str(photo)
    assert {p["class"] for p in found[0]["predictions"]} == {"\x1b[2Jcleared", "two words", "$x$"}


def test_file_names_that_are_not_utf8_are_skipped_with_a_reason(tmp_path: Path) -> None:
    images = tmp_path / "dataset" / "images"
    images.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    for breed in ("Abyssinian", "Bengal"):
        for i in range(5):
            Image.fromarray(pixels).save(images / f"{breed}_{i}.jpg")
    Image.fromarray(pixels).save(os.fsdecode(bytes(images) + b"/Bengal_caf\xe9_9.jpg"))
    labelled = label_dataset(LabelsParams(), tmp_path / "dataset", seed=0)
    quality = labelled.quality()
    assert quality["images_found"] == 11 and quality["images_used"] == 10
    assert quality["skipped_by_reason"] == {"file name is not valid UTF-8": 1}
    assert quality["skipped"][0]["path"] == "images/Bengal_caf\ufffd_9.jpg"
    json.dumps(quality).encode("utf-8")  # the JSON and CSV outputs can be written
    write_csv(tmp_path / "split.csv", labelled.split)
