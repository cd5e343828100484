"""Stage `get_preds`: the lesson's `learn.get_preds()`, behind `ClassificationInterpretation`.

One inference pass of a trained model over the validation photos (centre crop at the model's
size, its own normalisation). Every interpretation figure and table is computed from the file it
writes, so re-rendering them never runs the model again.

params: get_preds.bs, device, precision
inputs: --checkpoint (models/<model>.pth), --split, --classes, --cache
outputs: --predictions (reports/<model>/predictions.csv): path, actual, predicted, loss,
p_actual, p_predicted, top1..top3 and p_top1..p_top3
"""

from __future__ import annotations

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
    checkpoint: Path,
    split: Path,
    classes: Path,
    cache: Path,
    predictions: Path,
    threads: int = 1,
    tracker: Tracker | None = None,
) -> None:
    """Predict every validation photo once and write the predictions table."""
    import torch.nn.functional as F

    from pets.files import write_csv
    from pets.interpret import predictions_table
    from pets.learner import load_learner
    from pets.tracking import Tracker
    from pets.train import predict
    from pets.train import threads as torch_threads

    tracker = tracker or Tracker()
    with torch_threads(threads):
        learner = load_learner(
            params,
            "get_preds",
            checkpoint,
            bs=params.get_preds.bs,
            split=split,
            classes=classes,
            cache=cache,
            train=False,
        )
        tracker.set_tags(learner.compute.tags())
        log_probs = F.log_softmax(predict(learner.model, learner.valid, learner.compute), dim=1)
    valid = learner.valid.subset
    table = predictions_table(
        valid.paths, valid.targets, log_probs.numpy(), list(learner.spec.classes)
    )
    write_csv(predictions, table)
    error = float((table["actual"] != table["predicted"]).mean())
    print(f"{predictions}: {len(table)} validation photos, error_rate {error:.6f}")
    tracker.log_metrics({"error_rate": error, "valid_loss": float(table["loss"].mean())})


SPEC = StageSpec(
    name="get_preds",
    params=("get_preds", "device", "precision"),
    inputs={
        "checkpoint": paths.CHECKPOINT,
        "split": paths.SPLIT,
        "classes": paths.CLASSES,
        "cache": paths.CACHE,
    },
    outputs={"predictions": paths.PREDICTIONS},
    per_model=True,
    gpu=True,
)


def cli(argv: list[str] | None = None) -> None:
    """Command line: `python workflow/scripts/get_preds.py --help`."""
    stage_cli(SPEC, main, __doc__, argv)


if __name__ == "__main__":
    cli()
