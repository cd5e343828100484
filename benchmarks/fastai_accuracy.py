"""fastai's side of benchmarks/accuracy.py, run with the python of an environment that has
fastai 2.8 (not this project's): the lesson's three steps as fastai users write them.

`ImageDataLoaders.from_df` on the given split, `Resize(presize)` + `aug_transforms(size)` and
`Normalize` with the statistics the project trained with (its checkpoint's: 0.5/0.5 for timm's `tf_`
models, ImageNet's for torchvision's); `vision_learner(arch, pretrained=False)` with the body's
weights loaded from the same state_dict file the project reads (checked tensor by tensor) and the
project's three layer groups (`--split-at`: fastai's own splitter gives a timm model two, so
`slice(low, high)` would train the body's second half at `low` where the project trains it at the
geometric middle); `fit_one_cycle(epochs,
slice(lr))` frozen; `unfreeze(); lr_find(valley, minimum, steep, slide)` (fastai restores the
model afterwards); `fit_one_cycle(finetune_epochs, slice(low, high))` unfrozen, where `auto` is
slice(valley/100, valley) of its own lr_find. With `--init`, the project's stage-1 model (and
the momentum its fit ended at) replaces fastai's frozen fit. Prints one `RESULT {json}` line."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pandas as pd
import torch
from fastai.callback.schedule import minimum, slide, steep, valley
from fastai.vision.all import (
    Callback,
    ImageDataLoaders,
    Normalize,
    Resize,
    aug_transforms,
    error_rate,
    models,
    set_seed,
    vision_learner,
)


class EpochTimer(Callback):
    """Seconds of each epoch, its validation included."""

    def before_fit(self) -> None:
        self.seconds = []

    def before_epoch(self) -> None:
        self.start = time.perf_counter()

    def after_epoch(self) -> None:
        self.seconds.append(time.perf_counter() - self.start)


def load_body(learn, arch: str, weights: str) -> None:
    """The same state_dict the project loads, into fastai's body (by order for torchvision's
    `children()[:-2]` body; by name for a timm body)."""
    if weights == "none":
        return
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if arch.startswith("timm:"):
        missing, unexpected = learn.model[0].model.load_state_dict(state, strict=False)
        if missing or any(not k.startswith("classifier.") for k in unexpected):
            raise SystemExit(f"{weights}: does not fit {arch} ({missing[:3]} {unexpected[:3]})")
        return
    body = learn.model[0]
    values = [v for k, v in state.items() if not k.startswith("fc.")]
    keys = list(body.state_dict())
    if len(keys) != len(values):
        raise SystemExit(f"{weights}: {len(values)} tensors for {len(keys)} in {arch}'s body")
    body.load_state_dict(dict(zip(keys, values, strict=True)))


def check_body(learn, arch: str, weights: str) -> None:
    """Every tensor of the state_dict file is what fastai's body now holds (by name for timm, by
    order for torchvision): a load that silently kept random weights stops the run."""
    if weights == "none":
        return
    state = torch.load(weights, map_location="cpu", weights_only=True)
    body = learn.model[0].model if arch.startswith("timm:") else learn.model[0]
    held = body.state_dict()
    if arch.startswith("timm:"):
        pairs = [(held[k], v) for k, v in state.items() if not k.startswith("classifier.")]
    else:
        values = [v for k, v in state.items() if not k.startswith("fc.")]
        pairs = list(zip(held.values(), values, strict=True))
    wrong = sum(not torch.equal(a, b) for a, b in pairs)
    if wrong or not pairs:
        raise SystemExit(f"{weights}: {wrong} of {len(pairs)} tensors differ in fastai's body")


def splitter_at(split_at: str, timm_body: bool):
    """The project's layer groups: the body up to the module `split_at`, the rest of the body,
    the head (for resnets the same as fastai's own `_resnet_split`)."""
    prefix = "model." if timm_body else ""

    def split(model):
        first, second = [], []
        current = first
        for name, parameter in model[0].named_parameters():
            name = name.removeprefix(prefix)
            if name == split_at or name.startswith(split_at + "."):
                current = second
            current.append(parameter)
        if not second:
            raise SystemExit(f"--split-at {split_at}: no such module in the body")
        return [first, second, list(model[1].parameters())]

    return split


def build(args: argparse.Namespace):
    """fastai's DataLoaders and frozen Learner for the recipe, the body's weights loaded."""
    split = pd.read_csv(args.split, keep_default_na=False)
    split["is_valid"] = split["is_valid"].astype(str).str.lower() == "true"
    dls = ImageDataLoaders.from_df(
        split,
        path=args.data,
        fn_col="path",
        label_col="label",
        valid_col="is_valid",
        item_tfms=Resize(args.presize),
        batch_tfms=[*aug_transforms(size=args.size), Normalize.from_stats(args.mean, args.std)],
        bs=args.bs,
        device=torch.device("cpu"),
        num_workers=0,
    )
    arch = args.arch.removeprefix("timm:") if args.arch.startswith("timm:") else None
    extra = {"splitter": splitter_at(args.split_at, arch is not None)} if args.split_at else {}
    learn = vision_learner(
        dls, arch or getattr(models, args.arch), pretrained=False, metrics=error_rate, **extra
    )
    load_body(learn, args.arch, args.weights)
    check_body(learn, args.arch, args.weights)
    learn.freeze()
    return learn


def load_project_model(learn, checkpoint: Path) -> None:
    """The project's trained model (`--init`: its stage-1 checkpoint) in place of fastai's:
    every tensor by order (the two build the same body and head), and the momentum its
    schedule ended at, which fastai's optimizer would hold after its own fit (`unfreeze()`
    then clears the moment averages, and keeps that)."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ours, theirs = saved["model"], learn.model.state_dict()
    if len(ours) != len(theirs):
        raise SystemExit(f"{checkpoint}: {len(ours)} tensors for {len(theirs)} in fastai's model")
    for (mine, tensor), (their, held) in zip(ours.items(), theirs.items(), strict=True):
        if tensor.shape != held.shape:
            raise SystemExit(f"{checkpoint}: {mine} does not fit fastai's {their}")
    learn.model.load_state_dict(dict(zip(theirs, ours.values(), strict=True)))
    if learn.opt is None:
        learn.create_opt()
    if saved.get("momentum") is not None:
        learn.opt.set_hyper("mom", saved["momentum"])


def fit(learn, epochs: int, lr: slice) -> dict:
    """One `fit_one_cycle` with the epoch table's last row and each epoch's seconds."""
    timer = EpochTimer()
    learn.fit_one_cycle(epochs, lr, cbs=[timer])
    valid_loss, error = learn.recorder.values[-1][1:3]
    train_loss = learn.recorder.values[-1][0]
    return {
        "error_rate": float(error),
        "valid_loss": float(valid_loss),
        "train_loss": float(train_loss),
        "epoch_seconds": timer.seconds,
    }


def arguments() -> argparse.ArgumentParser:
    """The recipe's options (benchmarks/accuracy.py passes every one)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--arch", default="resnet34")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--mean", type=float, nargs=3, required=True)
    parser.add_argument("--std", type=float, nargs=3, required=True)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--presize", type=int, default=460)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--num-it", type=int, default=100)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--finetune-lr", default="auto", help="auto or low,high")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--split-at", default="", help="where the second layer group starts")
    parser.add_argument(
        "--init",
        type=Path,
        help="start from the project's stage-1 checkpoint (weights and momentum) in "
        "place of fastai's own frozen fit: lr_find and finetune on the very same model",
    )
    parser.add_argument(
        "--save-stage1",
        type=Path,
        help="save fastai's stage-1 model here after its frozen fit (every tensor, in order, "
        "and the momentum its schedule ended at), for the project's stages to start from",
    )
    return parser


def save_stage1(learn, path: Path) -> None:
    """fastai's stage-1 model as its tensors in order plus the optimizer's momentum, the form
    accuracy.py lays onto a project checkpoint (the two build the same body and head)."""
    tensors = [t.detach().cpu().clone() for t in learn.model.state_dict().values()]
    momentum = float(learn.opt.hypers[-1]["mom"])
    torch.save({"tensors": tensors, "momentum": momentum}, path)


def main() -> None:
    """Train as fastai does; print the numbers."""
    args = arguments().parse_args()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    set_seed(args.seed, reproducible=True)
    learn = build(args)
    out = {}
    with learn.no_bar(), learn.no_logging():
        if args.init:
            load_project_model(learn, args.init)
            valid_loss, error = learn.validate()[:2]  # the project's model, fastai's pipeline
            out["train_frozen"] = {
                "error_rate": float(error),
                "valid_loss": float(valid_loss),
                "train_loss": None,  # no fit of its own
                "epoch_seconds": [],
            }
        else:
            out["train_frozen"] = fit(learn, args.epochs, slice(args.lr))
            if args.save_stage1:
                save_stage1(learn, args.save_stage1)
        learn.unfreeze()
        found = learn.lr_find(
            num_it=args.num_it, show_plot=False, suggest_funcs=(valley, minimum, steep, slide)
        )
        out["lr_find"] = {
            "suggestions": found._asdict(),
            "first_smoothed_loss": float(learn.recorder.losses[0]),
            "first_losses": [float(x) for x in learn.recorder.losses[:5]],
            # The whole smoothed curve, to lay beside pets' reports/lr_find.csv.
            "curve": {
                "lr": [float(x) for x in learn.recorder.lrs],
                "smoothed_loss": [float(x) for x in learn.recorder.losses],
            },
        }
        if args.finetune_lr == "auto":
            low, high = found.valley / 100, found.valley
        else:
            low, high = (float(x) for x in args.finetune_lr.split(","))
        out["finetune"] = {**fit(learn, args.finetune_epochs, slice(low, high)), "lr": [low, high]}
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
