"""Stage `interpret`: the lesson's `interp = ClassificationInterpretation.from_learner(learn)`,
`interp.plot_top_losses(9)`, `interp.plot_confusion_matrix()`, `interp.most_confused(min_val=2)`.

Reads one model's predictions (never the model) and writes, into --out (reports/<model>/):
top_losses.png (the k highest-loss photos, each titled prediction / actual / loss and both
probabilities: of the actual class, as fastai v1 showed, and of the predicted one),
confusion_matrix.png and confusion_matrix_normalized.png (rows actual, columns predicted),
confusion_matrix.csv, most_confused.csv (actual, predicted, count >= min_val) and per_class.csv
(precision, recall, F1, support, error rate); and --metrics: error_rate and accuracy with a
bootstrap interval.

params: interpret.*, seed
inputs: --predictions, --classes, --cache (photos for the top-losses grid)
outputs: the files above
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from pets import paths
from pets.config import Params
from pets.errors import PetsError
from pets.stage import StageSpec, stage_cli

if TYPE_CHECKING:
    import pandas as pd

    from pets.tracking import Tracker


def read_predictions(path: Path) -> pd.DataFrame:
    """A predictions table written by `get_preds`."""
    import pandas as pd

    try:
        table = pd.read_csv(
            path, keep_default_na=False, dtype={"path": str, "actual": str, "predicted": str}
        )
    except FileNotFoundError:
        raise PetsError(f"{path}: not found; run get_preds first") from None
    if not {"path", "actual", "predicted", "loss", "p_actual", "p_predicted"} <= set(table):
        raise PetsError(f"{path}: not a predictions table; rerun get_preds")
    return table


def main(
    params: Params,
    *,
    name: str,
    predictions: Path,
    classes: Path,
    cache: Path,
    top_losses: Path,
    confusion: Path,
    normalized: Path,
    matrix: Path,
    most_confused: Path,
    per_class: Path,
    metrics: Path,
    tracker: Tracker | None = None,
) -> None:
    """Every interpretation figure and table of one model, from its predictions."""
    import pandas as pd

    from pets import interpret
    from pets.cache import PixelCache
    from pets.files import write_csv, write_json
    from pets.labels import read_classes
    from pets.plots import confusion_matrix_plot, image_grid, save
    from pets.tracking import Tracker

    tracker = tracker or Tracker()
    cfg = params.interpret
    table = read_predictions(predictions)
    names = read_classes(classes)
    counts = interpret.confusion_matrix(table, names)
    worst = interpret.top_losses(table, cfg.k)
    pixels = PixelCache(cache)
    rows = pixels.rows_for(worst["path"].tolist())
    photos = pixels.photos(rows)
    titles = [
        f"{r.predicted} / {r.actual}\nloss {r.loss:.2f} · p(actual) {r.p_actual:.2f}\n"
        f"p(predicted) {r.p_predicted:.2f}"
        for r in worst.itertuples()
    ]
    side = max(1, math.ceil(math.sqrt(len(photos))))
    grid = image_grid(
        photos,
        titles,
        rows=math.ceil(len(photos) / side),
        cols=side,
        fontsize=8,
        title=f"{name}: top losses — prediction / actual / loss / probabilities",
    )
    save(grid, top_losses)
    save(
        confusion_matrix_plot(counts, names, f"{name}: confusion matrix"),
        confusion,
    )
    save(
        confusion_matrix_plot(
            counts, names, f"{name}: confusion matrix (share of each row)", normalized=True
        ),
        normalized,
    )
    write_csv(
        matrix,
        pd.DataFrame(counts, index=pd.Index(names, name="actual"), columns=names).reset_index(),
    )
    confused = interpret.most_confused(counts, names, cfg.min_val)
    write_csv(most_confused, confused)
    write_csv(per_class, interpret.per_class(table, names))
    numbers = interpret.summary(table, cfg.bootstrap, cfg.confidence, params.seed)
    write_json(metrics, numbers)
    print(
        f"{name}: error_rate {numbers['error_rate']:.4f} ({cfg.confidence:.0%} interval "
        f"{numbers['error_rate_low']:.4f}-{numbers['error_rate_high']:.4f}), "
        f"{len(confused)} pairs confused at least {cfg.min_val} times"
    )
    for row in confused.head(10).itertuples():
        print(f"  ({row.actual!r}, {row.predicted!r}, {row.count})")
    tracker.log_metrics(numbers)
    for file in (top_losses, confusion, normalized, matrix, most_confused, per_class):
        tracker.log_artifact(file, name)


SPEC = StageSpec(
    name="interpret",
    params=("interpret", "seed"),
    inputs={"predictions": paths.PREDICTIONS, "classes": paths.CLASSES, "cache": paths.CACHE},
    outputs={
        "top_losses": paths.TOP_LOSSES,
        "confusion": paths.CONFUSION,
        "normalized": paths.CONFUSION_NORMALIZED,
        "matrix": paths.CONFUSION_TABLE,
        "most_confused": paths.MOST_CONFUSED,
        "per_class": paths.PER_CLASS,
        "metrics": paths.INTERPRET_METRICS,
    },
    figures={"top_losses": "Interpretation", "confusion": "Interpretation"},
    per_model=True,
    metrics=frozenset({"metrics"}),
    threads=1,
)


def cli(argv: list[str] | None = None) -> None:
    """Command line: `python workflow/scripts/interpret.py --help`."""
    stage_cli(SPEC, main, __doc__, argv)


if __name__ == "__main__":
    cli()
