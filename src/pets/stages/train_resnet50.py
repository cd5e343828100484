"""Stage `train_resnet50`: the lesson's `learn = create_cnn(data, models.resnet50)` on data at
size 320, bs 32, then `learn.fit_one_cycle(8, max_lr=slice(1e-3))`.

A fresh pretrained model (`train_resnet50.arch`, `weights`), frozen as in the lesson and trained
for `epochs` with `lr` ([x] is the lesson's slice(x)); with `unfreeze_epochs` > 0 it is then
unfrozen and trained that many more epochs with `unfreeze_lr`. With `keep: best` the kept epoch
is the best over both phases: the unfrozen phase starts from the best frozen epoch (as fastai's
`SaveModelCallback` leaves the model after a fit), and the model kept is the best of all the
epochs, frozen ones included.

params: train_resnet50.*, augment.*, seed, device, precision
inputs: --split, --classes, --cache
outputs: --model (models/resnet50.pth), --metrics, --history, --model-info
"""

from __future__ import annotations

import dataclasses
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
    """Create and fit the bigger model, optionally unfreeze and fit again."""
    from pets.learner import create_learner, resume_path, unfreeze_learner, write_outputs
    from pets.tracking import Tracker
    from pets.train import threads as torch_threads

    tracker = tracker or Tracker()
    cfg = params.train_resnet50
    with torch_threads(threads):
        learner = create_learner(
            params,
            "train_resnet50",
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
            "train_resnet50",
            tracker,
            compile_model=cfg.compile,
            resume=resume_path(model),
            keep=cfg.keep,
            monitor=cfg.monitor,
        )
        if cfg.unfreeze_epochs:
            frozen = learner.frozen
            unfreeze_learner(learner)
            more = learner.fit_one_cycle(
                cfg.unfreeze_epochs,
                cfg.unfreeze_lr,
                cfg.wd,
                "train_resnet50",
                tracker,
                step_offset=len(rows),
                compile_model=cfg.compile,
                resume=resume_path(model, phase=1),
                keep=cfg.keep,
                monitor=cfg.monitor,
            )
            if learner.best is not None and learner.best.epoch < len(rows):
                learner.frozen = frozen  # the weights kept are the first phase's
            rows += [dataclasses.replace(row, epoch=row.epoch + len(rows)) for row in more]
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
    name="train_resnet50",
    params=("train_resnet50", "augment", "seed", "device", "precision"),
    inputs={"split": paths.SPLIT, "classes": paths.CLASSES, "cache": paths.CACHE},
    outputs=training_outputs("resnet50"),
    trains=True,
    metrics=frozenset({"metrics"}),
    plots=frozenset({"history"}),
    gpu=True,
    sources=lambda params: weights_file(params.train_resnet50.weights),
)


def cli(argv: list[str] | None = None) -> None:
    """Command line: `python workflow/scripts/train_resnet50.py --help`."""
    stage_cli(SPEC, main, __doc__, argv)


if __name__ == "__main__":
    cli()
