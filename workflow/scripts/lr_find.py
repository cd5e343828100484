"""Stage `lr_find`: the lesson's `learn.load('stage-1'); learn.unfreeze(); learn.lr_find();
learn.recorder.plot()`.

Loads stage-1, unfreezes it, and trains for up to `lr_find.num_it` batches while the learning
rate grows exponentially from `start_lr` to `end_lr`, stopping once the smoothed loss passes four
times its best. Writes the curve, its plot (log x axis) and fastai's four suggestions (valley,
minimum/10, steepest slope, slide), each with the loss where it lies on the curve. The model is
not saved: stage-1 stays as it was. `finetune.lr: auto` takes the valley suggestion.

params: lr_find.*, augment.*, seed, device
inputs: --checkpoint (models/stage-1.pth), --split, --classes, --cache
outputs: --curve (CSV: lr, loss, smoothed_loss), --figure (PNG), --suggestions (JSON)
"""

from __future__ import annotations

from pathlib import Path

from pets import distributed
from pets.config import Params
from pets.files import write_csv, write_json
from pets.learner import load_learner, unfreeze_learner
from pets.lr_find import suggest, sweep
from pets.plots import lr_find_plot, save
from pets.stage import data_arguments, run_stage, stage_arguments, stage_parser
from pets.tracking import Tracker
from pets.train import threads as torch_threads


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
    tracker = tracker or Tracker()
    cfg = params.lr_find
    with torch_threads(threads):
        learner = load_learner(
            params, "lr_find", checkpoint, bs=cfg.bs, split=split, classes=classes, cache=cache
        )
        unfreeze_learner(learner)
        table = sweep(
            learner.model,
            learner.split,
            learner.train,
            learner.compute,
            start_lr=cfg.start_lr,
            end_lr=cfg.end_lr,
            num_it=cfg.num_it,
            stop_div=cfg.stop_div,
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


def cli(argv: list[str] | None = None) -> None:
    """Command line: `python workflow/scripts/lr_find.py --help`."""
    parser = stage_parser(__doc__)
    data_arguments(parser, checkpoint="stage-1")
    parser.add_argument("--curve", type=Path, default=Path("reports/lr_find.csv"))
    parser.add_argument("--figure", type=Path, default=Path("reports/lr_find.png"))
    parser.add_argument("--suggestions", type=Path, default=Path("metrics/lr_find.json"))
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads for tensor maths; 0: every core"
    )
    args = parser.parse_args(argv)
    run_stage(
        "lr_find",
        args.params,
        lambda params, tracker: main(params, tracker=tracker, **stage_arguments(args)),
        inputs=[args.checkpoint, args.split, args.classes, args.cache],
        outputs=[args.suggestions],
    )


if __name__ == "__main__":
    cli()
