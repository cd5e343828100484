"""Figures from numbers and pixels, nothing else: each function returns a matplotlib Figure."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # stages run headless
import matplotlib.pyplot as plt
import numpy as np
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
