"""Stage `lr_find`: the lesson's `learn.load('stage-1'); learn.unfreeze(); learn.lr_find();
learn.recorder.plot()`.

Loads stage-1, unfreezes it, and trains for up to `lr_find.num_it` batches while the learning
rate grows exponentially from `start_lr` to `end_lr`, stopping once the smoothed loss passes four
times its best. Writes the curve, its plot (log x axis) and fastai's four suggestions (valley,
minimum/10, steepest slope, slide), each with the loss where it lies on the curve. The model is
not saved: stage-1 stays as it was. `finetune.lr: auto` takes the valley suggestion.

params: lr_find.*, augment.*, seed, device, precision
inputs: --checkpoint (models/stage-1.pth), --split, --classes, --cache
outputs: --curve (CSV: lr, loss, smoothed_loss), --figure (PNG), --suggestions (JSON)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pets import distributed, paths
from pets.config import Params
from pets.stage import StageSpec, stage_cli

if TYPE_CHECKING:
    from pets.tracking import Tracker


def main(
    params: Params,
    *,
    checkpoint: Path,
    split: Path,
    classes: Path,
    cache: Path,
    curve: Path,
    figure: Path,
    suggestions: Path,
    threads: int = 1,
    tracker: Tracker | None = None,
) -> None:
    """Sweep the learning rate on the unfrozen stage-1 model and suggest one."""
    from pets.files import write_csv, write_json
    from pets.learner import load_learner, unfreeze_learner
    from pets.lr_find import suggest, sweep
    from pets.plots import lr_find_plot, save
    from pets.tracking import Tracker
    from pets.train import threads as torch_threads

    tracker = tracker or Tracker()
    cfg = params.lr_find
    with torch_threads(threads):
        learner = load_learner(
            params, "lr_find", checkpoint, bs=cfg.bs, split=split, classes=classes, cache=cache
        )
        unfreeze_learner(learner)
        tracker.set_tags(learner.compute.tags())
        table = sweep(
            learner.model,
            learner.split,
            learner.train,
            learner.compute,
            start_lr=cfg.start_lr,
            end_lr=cfg.end_lr,
            num_it=cfg.num_it,
            stop_div=cfg.stop_div,
            momentum=learner.momentum.value,
        )
    found = suggest(table, cfg.num_it)
    if not distributed.is_main():  # one set of outputs, from process 0
        return
    write_csv(curve, table)
    save(lr_find_plot(table, found), figure)
    write_json(suggestions, found)
    print(
        f"lr_find: {len(table)} batches, lr {table['lr'].iloc[0]:.1e} to {table['lr'].iloc[-1]:.1e}"
    )
    print("SuggestedLRs(" + ", ".join(f"{k}={v['lr']:.2e}" for k, v in found.items()) + ")")
    tracker.log_metrics({f"lr_{name}": point["lr"] for name, point in found.items()})
    tracker.log_artifact(figure)
    tracker.log_artifact(curve)


SPEC = StageSpec(
    name="lr_find",
    params=("lr_find", "augment", "seed", "device", "precision"),
    inputs={
        "checkpoint": paths.for_model(paths.CHECKPOINT, "stage-1"),
        "split": paths.SPLIT,
        "classes": paths.CLASSES,
        "cache": paths.CACHE,
    },
    outputs={
        "curve": paths.LR_FIND_CURVE,
        "figure": paths.LR_FIND_FIGURE,
        "suggestions": paths.LR_FIND,
    },
    figures={"figure": "Training"},
    metrics=frozenset({"suggestions"}),
    trains=True,
    gpu=True,
)


def cli(argv: list[str] | None = None) -> None:
    """Command line: `python workflow/scripts/lr_find.py --help`."""
    stage_cli(SPEC, main, __doc__, argv)


if __name__ == "__main__":
    cli()
