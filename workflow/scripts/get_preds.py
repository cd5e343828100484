"""Stage `get_preds`: the lesson's `learn.get_preds()`, behind `ClassificationInterpretation`.

One inference pass of a trained model over the validation photos (centre crop at the model's
size, its own normalisation). Every interpretation figure and table is computed from the file it
writes, so re-rendering them never runs the model again.

params: get_preds.bs, device
inputs: --checkpoint (models/<model>.pth), --split, --classes, --cache
outputs: --predictions (reports/<model>/predictions.csv): path, actual, predicted, loss,
p_actual, p_predicted, top1..top3 and p_top1..p_top3
"""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F

from pets.config import Params
from pets.files import write_csv
from pets.interpret import predictions_table
from pets.learner import load_learner
from pets.stage import data_arguments, run_stage, stage_arguments, stage_parser
from pets.tracking import Tracker
from pets.train import predict
from pets.train import threads as torch_threads


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
        log_probs = F.log_softmax(predict(learner.model, learner.valid, learner.compute), dim=1)
    valid = learner.valid.subset
    table = predictions_table(
        valid.paths, valid.targets, log_probs.numpy(), list(learner.spec.classes)
    )
    write_csv(predictions, table)
    error = float((table["actual"] != table["predicted"]).mean())
    print(f"{predictions}: {len(table)} validation photos, error_rate {error:.6f}")
    tracker.log_metrics({"error_rate": error, "valid_loss": float(table["loss"].mean())})


def cli(argv: list[str] | None = None) -> None:
    """Command line: `python workflow/scripts/get_preds.py --help`."""
    parser = stage_parser(__doc__)
    data_arguments(parser, checkpoint="stage-1")
    parser.add_argument("--predictions", type=Path, default=Path("reports/stage-1/predictions.csv"))
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads for tensor maths; 0: every core"
    )
    args = parser.parse_args(argv)
    run_stage(
        f"get_preds@{args.checkpoint.stem}",
        args.params,
        lambda params, tracker: main(params, tracker=tracker, **stage_arguments(args)),
        inputs=[args.checkpoint, args.split, args.classes, args.cache],
        outputs=[args.predictions],
    )


if __name__ == "__main__":
    cli()
