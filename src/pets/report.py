"""The report page: every stage's outputs on one self-contained HTML page (figures embedded, no
network), ending with a comparison of the models."""

from __future__ import annotations

import base64
import html
import io
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from pets.errors import PetsError
from pets.files import read_json
from pets.modelspec import ModelRecord

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
nav a{margin-right:1em}table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}img{max-width:100%;height:auto}
.thumbs{display:flex;flex-wrap:wrap;gap:.5em}.thumbs figure{margin:0;width:120px;font-size:.75em}
.better{color:#176b1c}.worse{color:#a11}.missing{color:#a11;font-weight:bold}
.muted{color:#666;font-size:.9em}details{margin:.5em 0}
"""
# Marks any figure that failed to load, and counts them (the browser test reads the counts).
SCRIPT = """
window.addEventListener('load', () => {
  const images = [...document.images];
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0));
  for (const image of broken) {
    const note = document.createElement('p');
    note.className = 'missing';
    note.textContent = 'missing figure: ' + image.alt;
    image.replaceWith(note);
  }
  document.body.dataset.images = images.length;
  document.body.dataset.broken = broken.length;
  document.getElementById('status').textContent =
    `${images.length - broken.length} of ${images.length} figures shown`;
});
"""


def data_uri(data: bytes, mime: str) -> str:
    """Bytes as a `data:` URI, so the page needs no other file."""
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png_uri(path: Path) -> str:
    """A PNG file as a data URI."""
    return data_uri(path.read_bytes(), "image/png")


def figure_uri(figure: Figure) -> str:
    """A matplotlib figure rendered to PNG, as a data URI."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    plt.close(figure)
    return data_uri(buffer.getvalue(), "image/png")


def thumbnail_uri(pixels: np.ndarray, longest: int = 112) -> str:
    """A small JPEG of an RGB photo, as a data URI."""
    image = Image.fromarray(pixels)
    image.thumbnail((longest, longest))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return data_uri(buffer.getvalue(), "image/jpeg")


def image(uri: str, alt: str) -> str:
    """An <img> for a data URI."""
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def table(frame: pd.DataFrame, table_id: str | None = None, digits: int = 4) -> str:
    """A DataFrame as an HTML table, numbers rounded for reading."""
    shown = frame.copy()
    for column in shown.select_dtypes("float").columns:
        shown[column] = shown[column].map(
            lambda v: "" if pd.isna(v) else f"{v:.2e}" if 0 < abs(v) < 1e-3 else f"{v:.{digits}f}"
        )
    markup = shown.to_html(index=False, escape=True, border=0)
    return markup.replace("<table", f'<table id="{table_id}"', 1) if table_id else markup


def section(anchor: str, title: str, body: Iterable[str]) -> str:
    """An <h2> section of the page."""
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{"".join(body)}</section>'


@dataclass
class ModelReport:
    """Everything the page shows about one trained model."""

    name: str
    record: ModelRecord  # what the model is and how it trained: reports/<name>/model.json
    training: dict  # metrics/<model>.json
    history: pd.DataFrame
    numbers: dict  # the interpret stage's metrics (error rate with its interval)
    predictions: pd.DataFrame
    most_confused: pd.DataFrame
    per_class: pd.DataFrame
    folder: Path  # reports/<model>/ with the interpret figures

    @property
    def label(self) -> str:
        """`stage-1 (resnet34, frozen, 224 px)`."""
        frozen = "frozen" if self.record.frozen else "unfrozen"
        return f"{self.name} ({self.record.arch}, {frozen}, {self.record.size} px)"


def comparison_table(models: list[ModelReport]) -> pd.DataFrame:
    """One row per model: error rate with its interval, accuracy, loss, epochs."""
    return pd.DataFrame(
        [
            {
                "model": m.label,
                "error_rate": m.numbers["error_rate"],
                f"{m.numbers['confidence']:.0%} interval": (
                    f"{m.numbers['error_rate_low']:.4f} – {m.numbers['error_rate_high']:.4f}"
                ),
                "accuracy": m.numbers["accuracy"],
                "valid_loss": m.training.get("valid_loss", float("nan")),
                "epochs": m.training.get("epochs"),
                "valid photos": m.numbers["valid_images"],
            }
            for m in models
        ]
    )


def class_error_table(models: list[ModelReport]) -> pd.DataFrame:
    """Per-class error rate of every model and the change between consecutive models, the
    classes that changed most first."""
    frame = models[0].per_class[["class"]].copy()
    for model in models:
        frame[model.name] = model.per_class["error_rate"].to_numpy()
    changes = []
    for before, after in itertools.pairwise(models):
        column = f"{before.name} → {after.name}"
        frame[column] = frame[after.name] - frame[before.name]
        changes.append(column)
    if changes:
        frame = frame.loc[
            frame[changes].abs().max(axis=1).sort_values(ascending=False, kind="stable").index
        ]
    return frame.reset_index(drop=True)


def thumbnails(rows: pd.DataFrame, pictures: dict[str, str], limit: int) -> str:
    """Small photos with what each model said, for flipped predictions."""
    cells = []
    for row in rows.head(limit).itertuples():
        caption = (
            f"{html.escape(row.actual)}<br>was {html.escape(row.predicted_before)}<br>"
            f"now {html.escape(row.predicted_after)}"
        )
        cells.append(
            f"<figure>{image(pictures[row.path], row.path)}"
            f"<figcaption>{caption}</figcaption></figure>"
        )
    more = len(rows) - min(limit, len(rows))
    extra = f'<p class="muted">and {more} more (reports/flips.csv)</p>' if more > 0 else ""
    return f'<div class="thumbs">{"".join(cells)}</div>{extra}'


def page(title: str, sections: list[str]) -> str:
    """The whole HTML document."""
    links = "".join(
        f'<a href="#{anchor}">{html.escape(name)}</a>'
        for anchor, name in (
            ("data", "data"),
            ("training", "training"),
            ("models", "models"),
            ("comparison", "comparison"),
        )
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='muted' id='status'></p><nav>{links}</nav>"
        f"{''.join(sections)}<script>{SCRIPT}</script></body></html>\n"
    )


TEXT_COLUMNS = ("path", "class", "actual", "predicted", "top1", "top2", "top3")


def read_table(path: Path) -> pd.DataFrame:
    """A stage's CSV with class names kept as text (a class may be called 'NA') and the other
    columns as numbers (empty = NaN)."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in frame.columns:
        if column not in TEXT_COLUMNS:
            frame[column] = pd.to_numeric(frame[column].replace("", np.nan))
    return frame


def read_model_report(name: str, reports: Path, metrics: Path) -> ModelReport:
    """A model's outputs from the training, get_preds and interpret stages, by their paths:
    reports/<name>/ and metrics/<name>.json, metrics/interpret/<name>.json."""
    import json

    folder = reports / name
    try:
        raw = read_json(folder / "model.json")
    except (OSError, ValueError) as exc:
        raise PetsError(f"{folder / 'model.json'}: cannot be read ({exc})") from None
    return ModelReport(
        name=name,
        record=ModelRecord.parse(raw, str(folder / "model.json")),
        training=json.loads((metrics / f"{name}.json").read_text()),
        history=pd.read_csv(folder / "history.csv"),
        numbers=json.loads((metrics / "interpret" / f"{name}.json").read_text()),
        predictions=read_table(folder / "predictions.csv"),
        most_confused=read_table(folder / "most_confused.csv"),
        per_class=read_table(folder / "per_class.csv"),
        folder=folder,
    )


def data_notes(quality: dict) -> list[str]:
    """Paragraphs on what the data set needs a reader to know: the label corrections made,
    an uneven class balance."""
    notes = []
    fixed = quality.get("corrections")
    if fixed:
        notes.append(
            f"<p><b>Corrections:</b> {fixed['relabelled']} labels corrected and "
            f"{fixed['dropped']} photos dropped by {html.escape(fixed['file'])}.</p>"
        )
    note = quality.get("balance", {}).get("note")
    if note:
        notes.append(f"<p><b>Uneven classes:</b> {html.escape(note)}.</p>")
    return notes


def data_section(quality: dict, show_batch: Path) -> str:
    """What the labels stage found, and the augmented batch preview."""
    counts = pd.DataFrame([{"class": name, **n} for name, n in quality["per_class"].items()])
    skipped = pd.DataFrame(quality["skipped"][:50]) if quality["skipped"] else None
    body = [
        f"<p>{quality['images_used']} photos in {quality['c']} classes ({quality['train']} train, "
        f"{quality['valid']} validation) of {quality['images_found']} image files found; "
        f"{quality['skipped_count']} left out.</p>",
        *data_notes(quality),
        "<h3>show_batch</h3>",
        image(png_uri(show_batch), "show_batch"),
        f"<details><summary>photos per class</summary>{table(counts)}</details>",
    ]
    if skipped is not None:
        body.append(
            f"<details><summary>left out ({quality['skipped_count']})</summary>"
            f"{table(skipped)}</details>"
        )
    failures = quality.get("download_failures") or []
    if failures:
        body.append(
            f"<details><summary>URLs that gave no photo ({len(failures)})</summary>"
            f"{table(pd.DataFrame(failures[:200]))}</details>"
        )
    return section("data", "Data", body)


def training_section(models: list[ModelReport], lr_figure: Path, lr_found: dict) -> str:
    """Each training stage's curves and epoch table, and lr_find's curve and suggestions."""
    from pets.lr_find import auto_note
    from pets.plots import history_plot

    body = []
    for model in models:
        lrs = "; ".join(", ".join(f"{x:.1e}" for x in fit) for fit in model.record.lr)
        body += [
            f"<h3>{html.escape(model.label)}</h3>",
            f"<p class='muted'>learning rates per layer group: {html.escape(lrs)}</p>",
            image(figure_uri(history_plot(model.history, model.name)), f"{model.name} curves"),
            table(model.history.rename(columns={"time": "time (s)"})),
        ]
        if model.name == "stage-1":
            found = pd.DataFrame(
                [{"suggestion": k, "lr": v["lr"], "loss": v["loss"]} for k, v in lr_found.items()]
            )
            finetuned = [m for m in models if m.name == "stage-2" and m.record.lr]
            used = list(finetuned[0].record.lr[-1]) if finetuned else None  # finetune's fit
            body += [
                "<h3>lr_find (stage-1, unfrozen)</h3>",
                image(png_uri(lr_figure), "lr_find"),
                table(found, digits=6),
                f"<p>{html.escape(auto_note(lr_found, used))}</p>",
            ]
    return section("training", "Training", body)


def models_section(models: list[ModelReport]) -> str:
    """Per model: error rate with its interval, top losses, confusion matrix, most confused."""
    body = []
    for model in models:
        numbers = model.numbers
        body += [
            f"<h3>{html.escape(model.label)}</h3>",
            f"<p>error_rate <b>{numbers['error_rate']:.4f}</b> "
            f"({numbers['confidence']:.0%} interval {numbers['error_rate_low']:.4f} – "
            f"{numbers['error_rate_high']:.4f}, {numbers['valid_images']} photos)</p>",
            "<h4>top losses</h4><p class='muted'>titles: prediction / actual, loss, the "
            "probability of the actual class (the lesson's number) and of the predicted one</p>",
            image(png_uri(model.folder / "top_losses.png"), f"{model.name} top losses"),
            "<h4>confusion matrix</h4>",
            image(png_uri(model.folder / "confusion_matrix.png"), f"{model.name} confusion"),
            "<details><summary>normalised by row</summary>",
            image(
                png_uri(model.folder / "confusion_matrix_normalized.png"),
                f"{model.name} confusion normalised",
            ),
            "</details>",
            "<h4>most confused</h4>",
            table(model.most_confused) if len(model.most_confused) else "<p>none</p>",
            f"<details><summary>per class</summary>{table(model.per_class)}</details>",
        ]
    return section("models", "Models", body)


def comparison_section(
    models: list[ModelReport],
    flipped: dict[tuple[str, str], pd.DataFrame],
    pictures: dict[str, str],
    shown: int,
) -> str:
    """Error rates side by side, per-class changes, and photos that flipped between models."""
    changes = class_error_table(models)
    body = [
        table(comparison_table(models), "comparison"),
        "<h3>per-class error rate</h3><p class='muted'>the classes that changed most first; "
        "negative changes are fewer errors</p>",
        table(changes.head(15), "class-changes"),
        f"<details><summary>all {len(changes)} classes</summary>{table(changes)}</details>",
    ]
    for (before, after), rows in flipped.items():
        for change, words in (("fixed", "wrong → right"), ("broken", "right → wrong")):
            picked = rows[rows["change"] == change]
            body += [
                f"<h3>{html.escape(before)} → {html.escape(after)}: {words} ({len(picked)})</h3>",
                thumbnails(picked, pictures, shown),
            ]
    return section("comparison", "Comparison", body)
