"""Figures from numbers and pixels, nothing else: each function returns a matplotlib Figure."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # stages run headless
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pets.files import atomic_path


def image_grid(
    images: np.ndarray,
    titles: Sequence[str],
    rows: int,
    cols: int | None = None,
    cell: float = 3.0,
    fontsize: int = 9,
) -> Figure:
    """Images (n, height, width, 3) in [0, 1] on a rows x cols grid, each with its title
    (the lesson's `show_batch` and `plot_top_losses` layout)."""
    cols = cols or rows
    figure, axes = plt.subplots(rows, cols, figsize=(cols * cell, rows * cell), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < len(images):
            axis.imshow(np.clip(images[index], 0, 1))
            axis.set_title(titles[index], fontsize=fontsize)
    figure.tight_layout()
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
        axis.set_ylim(top=min(finite.max(), finite.iloc[0] * 2 + 1e-9) * 1.05)
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def history_plot(history: pd.DataFrame, title: str) -> Figure:
    """Training curves from an epoch table: losses and error rate per epoch."""
    figure, (losses, errors) = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = history["epoch"] + 1
    losses.plot(epochs, history["train_loss"], "o-", label="train_loss")
    losses.plot(epochs, history["valid_loss"], "o-", label="valid_loss")
    losses.set_xlabel("epoch")
    losses.legend()
    errors.plot(epochs, history["error_rate"], "o-", color="C3")
    errors.set_xlabel("epoch")
    errors.set_ylabel("error_rate")
    for axis in (losses, errors):
        axis.grid(alpha=0.3)
        axis.xaxis.get_major_locator().set_params(integer=True)
    figure.suptitle(title)
    figure.tight_layout()
    return figure
