"""Figures from numbers and pixels, nothing else: each function returns a matplotlib Figure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # stages run headless
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pets.files import atomic_path

# Titles and ticks show users' names (classes, files): `$` is a character, never mathtext
# (`$\alpha$` would be garbled, an unbalanced `$x^$` would fail the whole figure).
matplotlib.rcParams["text.parse_math"] = False


def image_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    rows: int,
    cols: int | None = None,
    cell: float = 3.0,
    fontsize: int = 9,
    title: str | None = None,
) -> Figure:
    """Images (height, width, 3) in [0, 1] (or uint8) on a rows x cols grid, each with its title
    (the lesson's `show_batch` and `plot_top_losses` layout)."""
    cols = cols or rows
    figure, axes = plt.subplots(rows, cols, figsize=(cols * cell, rows * cell), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < len(images):
            image = images[index]
            axis.imshow(image if image.dtype == np.uint8 else np.clip(image, 0, 1))
            axis.set_title(titles[index], fontsize=fontsize)
    if title:
        figure.suptitle(title, fontsize=fontsize + 1)
    figure.tight_layout(rect=(0, 0, 1, 0.97) if title else None)
    return figure


def save(figure: Figure, path: Path, dpi: int = 100) -> None:
    """Write a figure as PNG, atomically, and free it."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, format="png", metadata={"Software": None})
    plt.close(figure)


def lr_find_plot(curve: pd.DataFrame, suggestions: dict[str, dict[str, float]]) -> Figure:
    """The lesson's `recorder.plot()`: smoothed loss against the learning rate on a log axis,
    with every suggestion marked where it lies on the curve."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    axis.plot(curve["lr"], curve["loss"], color="0.8", linewidth=1, label="loss (each batch)")
    axis.plot(curve["lr"], curve["smoothed_loss"], color="C0", label="smoothed loss")
    for index, (name, point) in enumerate(suggestions.items()):
        axis.plot(
            point["lr"],
            point["loss"],
            "o",
            color=f"C{index + 1}",
            markersize=8,
            label=f"{name}: {point['lr']:.2e}",
        )
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("loss")
    finite = curve["smoothed_loss"][np.isfinite(curve["smoothed_loss"])]
    if len(finite):
        low, high = finite.min(), min(finite.max(), finite.iloc[0] * 2 + 1e-9)
        margin = (high - low) * 0.05 + 1e-9
        axis.set_ylim(low - margin, high + margin)
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def history_plot(history: pd.DataFrame, title: str) -> Figure:
    """Training curves from an epoch table: losses and error rate per epoch, and a dashed line
    at the kept epoch when the table has a `kept` column (`keep: best`)."""
    figure, (losses, errors) = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = history["epoch"] + 1
    losses.plot(epochs, history["train_loss"], "o-", label="train_loss")
    losses.plot(epochs, history["valid_loss"], "o-", label="valid_loss")
    losses.set_xlabel("epoch")
    errors.plot(epochs, history["error_rate"], "o-", color="C3")
    errors.set_xlabel("epoch")
    errors.set_ylabel("error_rate")
    for axis in (losses, errors):
        axis.grid(alpha=0.3)
        if "kept" in history:  # keep: best: the epoch whose model was kept
            for epoch in epochs[history["kept"].astype(bool)]:
                axis.axvline(epoch, color="0.4", linestyle="--", linewidth=1, label="kept")
        axis.set_xticks(epochs if len(epochs) <= 12 else epochs[:: math.ceil(len(epochs) / 12)])
    losses.legend()
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def confusion_matrix_plot(
    matrix: np.ndarray, classes: Sequence[str], title: str, normalized: bool = False
) -> Figure:
    """The lesson's `plot_confusion_matrix`: rows actual, columns predicted, the count (or the
    share of the row, normalised) in every non-empty cell; sized to stay readable at 37 classes."""
    values = matrix.astype(float)
    if normalized:
        totals = values.sum(axis=1, keepdims=True)
        values = np.divide(values, totals, out=np.zeros_like(values), where=totals > 0)
    side = max(5.0, 0.32 * len(classes) + 2)
    figure, axis = plt.subplots(figsize=(side, side))
    axis.imshow(values, cmap="Blues", vmin=0, vmax=values.max() or 1)
    ticks = np.arange(len(classes))
    fontsize = 8 if len(classes) <= 40 else 5
    axis.set_xticks(ticks, labels=classes, rotation=90, fontsize=fontsize)
    axis.set_yticks(ticks, labels=classes, fontsize=fontsize)
    threshold = values.max() / 2
    for row, col in zip(*np.nonzero(matrix), strict=True):
        text = f"{values[row, col]:.2f}".lstrip("0") if normalized else str(matrix[row, col])
        axis.text(
            col,
            row,
            text,
            ha="center",
            va="center",
            fontsize=fontsize - 1,
            color="white" if values[row, col] > threshold else "black",
        )
    axis.set_xlabel("predicted")
    axis.set_ylabel("actual")
    axis.set_title(title)
    figure.tight_layout()
    return figure
