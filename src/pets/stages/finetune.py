"""Stage `finetune`: the lesson's `learn.load('stage-1'); learn.unfreeze();
learn.fit_one_cycle(2, max_lr=slice(1e-6, 1e-4))` and `learn.save('stage-2')`.

Loads stage-1, unfreezes every layer and trains with discriminative learning rates:
`finetune.lr` is [low, high] (the lesson's slice(low, high), spread geometrically over the three
layer groups), [x] (slice(x)), a number (every group), or `auto`: [valley/100, valley] from
lr_find's valley suggestion. The learning rates used are printed and recorded. `keep: best`
keeps the epoch with the lowest `monitor` instead of the last (as train_frozen does).

params: finetune.*, augment.*, seed, device, precision
inputs: --checkpoint (models/stage-1.pth), --lr-find (metrics/lr_find.json), --split,
--classes, --cache
outputs: --model (models/stage-2.pth), --metrics, --history, --model-info
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pets import paths
from pets.config import Params
from pets.errors import PetsError
from pets.stage import StageSpec, stage_cli, training_outputs

if TYPE_CHECKING:
    from pets.tracking import Tracker


def learning_rate(setting: float | list[float] | str, lr_find: Path) -> float | list[float]:
    """`finetune.lr`, with `auto` read from lr_find's valley suggestion."""
    from pets.files import read_json

    if setting != "auto":
        return setting
    try:
        valley = float(read_json(lr_find)["valley"]["lr"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        raise PetsError(f"finetune.lr: auto needs {lr_find} from the lr_find stage") from None
    return [valley / 100, valley]


def main(
    params: Params,
    *,
    checkpoint: Path,
    lr_find: Path,
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
    """Unfreeze stage-1 and fit it again with discriminative learning rates."""
    from pets.learner import load_learner, resume_path, unfreeze_learner, write_outputs
    from pets.tracking import Tracker
    from pets.train import threads as torch_threads

    tracker = tracker or Tracker()
    cfg = params.finetune
    lr = learning_rate(cfg.lr, lr_find)
    with torch_threads(threads):
        learner = load_learner(
            params, "finetune", checkpoint, bs=cfg.bs, split=split, classes=classes, cache=cache
        )
        unfreeze_learner(learner)
        rows = learner.fit_one_cycle(
            cfg.epochs,
            lr,
            cfg.wd,
            "finetune",
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
    name="finetune",
    params=("finetune", "augment", "seed", "device", "precision"),
    inputs={
        "checkpoint": paths.for_model(paths.CHECKPOINT, "stage-1"),
        "lr_find": paths.LR_FIND,
        "split": paths.SPLIT,
        "classes": paths.CLASSES,
        "cache": paths.CACHE,
    },
    outputs=training_outputs("stage-2"),
    trains=True,
    metrics=frozenset({"metrics"}),
    plots=frozenset({"history"}),
    gpu=True,
)


def cli(argv: list[str] | None = None) -> None:
    """Command line: `python workflow/scripts/finetune.py --help`."""
    stage_cli(SPEC, main, __doc__, argv)


if __name__ == "__main__":
    cli()
