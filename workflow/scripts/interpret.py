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

import pandas as pd

from pets.cache import PixelCache
from pets.config import Params
from pets.data import read_classes
from pets.errors import PetsError
from pets.files import write_csv, write_json
from pets.interpret import confusion_matrix, most_confused, per_class, summary, top_losses
from pets.plots import confusion_matrix_plot, image_grid, save
from pets.stage import run_stage, stage_arguments, stage_parser
from pets.tracking import Tracker

FILES = (
    "top_losses.png",
    "confusion_matrix.png",
    "confusion_matrix_normalized.png",
    "confusion_matrix.csv",
    "most_confused.csv",
    "per_class.csv",
)


def read_predictions(path: Path) -> pd.DataFrame:
    """A predictions table written by `get_preds`."""
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
    out: Path,
    metrics: Path,
    tracker: Tracker | None = None,
) -> None:
    """Every interpretation figure and table of one model, from its predictions."""
    tracker = tracker or Tracker()
    cfg = params.interpret
    table = read_predictions(predictions)
    names = read_classes(classes)
    matrix = confusion_matrix(table, names)
    worst = top_losses(table, cfg.k)
    pixels = PixelCache(cache)
    rows = pixels.rows_for(worst["path"].tolist())
    canvases, sizes = pixels.read(rows), pixels.sizes(rows).int().tolist()
    photos = [canvases[i, :h, :w].numpy() for i, (h, w) in enumerate(sizes)]
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
    save(grid, out / "top_losses.png")
    save(
        confusion_matrix_plot(matrix, names, f"{name}: confusion matrix"),
        out / "confusion_matrix.png",
    )
    save(
        confusion_matrix_plot(
            matrix, names, f"{name}: confusion matrix (share of each row)", normalized=True
        ),
        out / "confusion_matrix_normalized.png",
    )
    write_csv(
        out / "confusion_matrix.csv",
        pd.DataFrame(matrix, index=pd.Index(names, name="actual"), columns=names).reset_index(),
    )
    confused = most_confused(matrix, names, cfg.min_val)
    write_csv(out / "most_confused.csv", confused)
    write_csv(out / "per_class.csv", per_class(table, names))
    numbers = summary(table, cfg.bootstrap, cfg.confidence, params.seed)
    write_json(metrics, numbers)
    print(
        f"{name}: error_rate {numbers['error_rate']:.4f} ({cfg.confidence:.0%} interval "
        f"{numbers['error_rate_low']:.4f}-{numbers['error_rate_high']:.4f}), "
        f"{len(confused)} pairs confused at least {cfg.min_val} times"
    )
    for row in confused.head(10).itertuples():
        print(f"  ({row.actual!r}, {row.predicted!r}, {row.count})")
    tracker.log_metrics(numbers)
    for file in FILES:
        tracker.log_artifact(out / file, name)


def cli(argv: list[str] | None = None) -> None:
    """Command line: `python workflow/scripts/interpret.py --help`."""
    parser = stage_parser(__doc__)
    parser.add_argument("--name", default="stage-1", help="the model's name, for titles")
    parser.add_argument("--predictions", type=Path, default=Path("reports/stage-1/predictions.csv"))
    parser.add_argument("--classes", type=Path, default=Path("data/classes.json"))
    parser.add_argument("--cache", type=Path, default=Path("data/cache"))
    parser.add_argument("--out", type=Path, default=Path("reports/stage-1"), help="folder")
    parser.add_argument("--metrics", type=Path, default=Path("metrics/interpret/stage-1.json"))
    args = parser.parse_args(argv)
    run_stage(
        f"interpret@{args.name}",
        args.params,
        lambda params, tracker: main(params, tracker=tracker, **stage_arguments(args)),
        inputs=[args.predictions, args.classes, args.cache],
        outputs=[args.metrics],
    )


if __name__ == "__main__":
    cli()
