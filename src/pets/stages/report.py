"""Stage `report`: one page people want to open, reports/index.html.

Self-contained (every figure embedded, no network): the data summary and show_batch, each
training stage's curves and epoch table, lr_find's curve and suggestions, every model's error
rate with its interval, top losses, confusion matrix and most confused pairs, then a comparison:
error rates side by side, per-class error changes, and the validation photos that flipped from
wrong to right and right to wrong between consecutive models (all of them in --flips).

params: report.flips_shown
inputs: the outputs of labels, preview, the training stages, lr_find, get_preds and interpret;
--cache (thumbnails)
outputs: --out (reports/index.html), --flips (reports/flips.csv)
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING

from pets import paths
from pets.config import Params
from pets.stage import StageSpec, stage_cli

if TYPE_CHECKING:
    from pets.tracking import Tracker


def main(
    params: Params,
    *,
    models: list[str],
    reports: Path,
    metrics: Path,
    cache: Path,
    out: Path,
    flips: Path,
    tracker: Tracker | None = None,
) -> None:
    """Gather every stage's outputs into the page."""
    import pandas as pd

    from pets.cache import PixelCache
    from pets.files import atomic_path, read_json, write_csv
    from pets.interpret import flips as flipped_between
    from pets.report import (
        comparison_section,
        data_section,
        models_section,
        page,
        read_model_report,
        thumbnail_uri,
        training_section,
    )
    from pets.tracking import Tracker

    tracker = tracker or Tracker()
    results = [read_model_report(name, reports, metrics) for name in models]
    flipped = {
        (a.name, b.name): flipped_between(a.predictions, b.predictions)
        for a, b in itertools.pairwise(results)
    }
    listed = pd.concat(
        [rows.assign(before=a, after=b) for (a, b), rows in flipped.items()]
        or [pd.DataFrame(columns=["path"])],
        ignore_index=True,
    )
    shown = {
        path
        for rows in flipped.values()
        for change in ("fixed", "broken")
        for path in rows[rows["change"] == change]["path"].head(params.report.flips_shown)
    }
    pixels = PixelCache(cache)
    pictures = {}
    for path in sorted(shown):
        pictures[path] = thumbnail_uri(pixels.photos(pixels.rows_for([path]))[0])
    sections = [
        data_section(read_json(reports / "data_quality.json"), reports / "show_batch.png"),
        training_section(results, reports / "lr_find.png", read_json(metrics / "lr_find.json")),
        models_section(results),
        comparison_section(results, flipped, pictures, params.report.flips_shown),
    ]
    write_csv(flips, listed)
    with atomic_path(out) as tmp:
        tmp.write_text(page("pets: Lesson 1, which breed is this?", sections))
    best = min(results, key=lambda m: m.numbers["error_rate"])
    print(
        f"{out}: {len(results)} models; best {best.label}, error_rate "
        f"{best.numbers['error_rate']:.4f}; {len(listed)} flipped predictions"
    )
    tracker.log_metrics({f"error_rate_{m.name}": m.numbers["error_rate"] for m in results})
    tracker.log_artifact(out)
    tracker.log_artifact(flips)
    tracker.set_tags({"pets.models": json.dumps(models)})


SPEC = StageSpec(
    name="report",
    params=("report",),
    inputs={
        "quality": paths.QUALITY,
        "show_batch": paths.SHOW_BATCH,
        "lr_find_figure": paths.LR_FIND_FIGURE,
        "lr_find": paths.LR_FIND,
        "history": paths.HISTORY,
        "model_info": paths.MODEL_INFO,
        "model_metrics": paths.METRICS,
        "predictions": paths.PREDICTIONS,
        "top_losses": paths.TOP_LOSSES,
        "confusion": paths.CONFUSION,
        "normalized": paths.CONFUSION_NORMALIZED,
        "most_confused": paths.MOST_CONFUSED,
        "per_class": paths.PER_CLASS,
        "interpretation": paths.INTERPRET_METRICS,
        "cache": paths.CACHE,
    },
    # The page reads each model's files from these folders, by the names above.
    options={
        "models": paths.MODELS,
        "reports": Path(paths.REPORTS),
        "metrics": Path(paths.METRICS_FOLDER),
    },
    outputs={"out": paths.REPORT, "flips": paths.FLIPS},
    figures={"out": "Report"},
    threads=1,
)


def cli(argv: list[str] | None = None) -> None:
    """Command line: `python workflow/scripts/report.py --help`."""
    stage_cli(SPEC, main, __doc__, argv)


if __name__ == "__main__":
    cli()
