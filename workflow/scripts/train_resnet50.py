"""Stage `train_resnet50`: the lesson's `learn = create_cnn(data, models.resnet50)` on data at
size 320, bs 32, then `learn.fit_one_cycle(8, max_lr=slice(1e-3))`.

A fresh pretrained model (`train_resnet50.arch`, `weights`), frozen as in the lesson and trained
for `epochs` with `lr` ([x] is the lesson's slice(x)); with `unfreeze_epochs` > 0 it is then
unfrozen and trained that many more epochs with `unfreeze_lr`.

params: train_resnet50.*, augment.*, seed, device
inputs: --split, --classes, --cache
outputs: --model (models/resnet50.pth), --metrics, --history, --model-info
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pets.config import Params
from pets.learner import create_learner, resume_path, unfreeze_learner, write_outputs
from pets.stage import run_stage, stage_arguments, stage_parser, training_arguments
from pets.tracking import Tracker
from pets.train import threads as torch_threads


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
        )
        if cfg.unfreeze_epochs:
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
            )
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


def cli(argv: list[str] | None = None) -> None:
    """Command line: `python workflow/scripts/train_resnet50.py --help`."""
    parser = training_arguments(stage_parser(__doc__), "resnet50")
    args = parser.parse_args(argv)
    run_stage(
        "train_resnet50",
        args.params,
        lambda params, tracker: main(params, tracker=tracker, **stage_arguments(args)),
        inputs=[args.split, args.classes, args.cache],
        outputs=[args.model, args.metrics],
    )


if __name__ == "__main__":
    cli()
