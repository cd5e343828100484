"""Stage `train_frozen`: the lesson's `learn = create_cnn(data, models.resnet34,
metrics=error_rate)` then `learn.fit_one_cycle(4)` and `learn.save('stage-1')`.

Builds the pretrained body (`train_frozen.arch`, `train_frozen.weights`) with the lesson's head,
freezes the body except its BatchNorm layers (nothing is frozen with `weights: none`), and trains
with the one-cycle policy at `size` and `bs`, printing the epoch table. `lr` is a number (every
layer group), [x] (the lesson's slice(x): x on the head, x/10 on the body) or [low, high].
`keep: best` keeps the epoch with the lowest `monitor` (valid_loss or error_rate; fastai's
`SaveModelCallback`) instead of the last: the model and metrics are that epoch's, and the epoch
table's `kept` column marks it.

params: train_frozen.*, augment.*, seed, device, precision
inputs: --split, --classes, --cache
outputs: --model (models/stage-1.pth: weights, arch, classes, size, normalisation), --metrics
(error_rate, valid_loss, ...), --history (the epoch table as CSV),
--model-info (arch, weights, size, bs, learning rates)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pets import paths
from pets.config import Params
from pets.stage import StageSpec, stage_cli, training_outputs, weights_file

if TYPE_CHECKING:
    from pets.tracking import Tracker


def main(
    params: Params,
    *,
    split: Path,
    classes: Path,
    cache: Path,
    model: Path,
    metrics: Path,
    history: Path,
    model_info: Path,
    threads: int = 1,
    tracker: Tracker | None = None,
) -> None:
    """Create the frozen model, fit it, write the checkpoint, metrics and epoch table."""
    from pets.learner import create_learner, resume_path, write_outputs
    from pets.tracking import Tracker
    from pets.train import threads as torch_threads

    tracker = tracker or Tracker()
    cfg = params.train_frozen
    with torch_threads(threads):
        learner = create_learner(
            params,
            "train_frozen",
            arch=cfg.arch,
            weights=cfg.weights,
            size=cfg.size,
            bs=cfg.bs,
            split=split,
            classes=classes,
            cache=cache,
        )
        rows = learner.fit_one_cycle(
            cfg.epochs,
            cfg.lr,
            cfg.wd,
            "train_frozen",
            tracker,
            compile_model=cfg.compile,
            resume=resume_path(model),
            keep=cfg.keep,
            monitor=cfg.monitor,
        )
    write_outputs(
        learner,
        rows,
        model_path=model,
        metrics_path=metrics,
        history_path=history,
        info_path=model_info,
        tracker=tracker,
    )


SPEC = StageSpec(
    name="train_frozen",
    params=("train_frozen", "augment", "seed", "device", "precision"),
    inputs={"split": paths.SPLIT, "classes": paths.CLASSES, "cache": paths.CACHE},
    outputs=training_outputs("stage-1"),
    trains=True,
    metrics=frozenset({"metrics"}),
    plots=frozenset({"history"}),
    gpu=True,
    sources=lambda params: weights_file(params.train_frozen.weights),
)


def cli(argv: list[str] | None = None) -> None:
    """Command line: `python workflow/scripts/train_frozen.py --help`."""
    stage_cli(SPEC, main, __doc__, argv)


if __name__ == "__main__":
    cli()
