"""fastai's side of benchmarks/cpu_epoch.py, run with the python of an environment that has
fastai 2.8 (not this project's): the lesson as fastai users write it today.

`ImageDataLoaders.from_df` on the same split, presizing (`Resize(460)`) and
`aug_transforms(size)` with ImageNet normalisation, `vision_learner(resnet34,
pretrained=False)`, `freeze()`, `fit_one_cycle(epochs, 3e-3)`, then `get_preds` on the
validation photos. Prints one `RESULT {json}` line with each epoch's seconds."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pandas as pd
import torch
from fastai.vision.all import (
    Callback,
    ImageDataLoaders,
    Normalize,
    Resize,
    aug_transforms,
    error_rate,
    imagenet_stats,
    models,
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


def main() -> None:
    """Train and predict as fastai does; print the timings."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--arch", default="resnet34")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--bs", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cache-size", type=int, default=448)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    split = pd.read_csv(args.split, keep_default_na=False)
    split["is_valid"] = split["is_valid"].astype(str).str.lower() == "true"
    presize = max(args.size, round(args.size * 460 / 224))  # the course's Resize(460) for 224
    dls = ImageDataLoaders.from_df(
        split,
        path=args.data,
        fn_col="path",
        label_col="label",
        valid_col="is_valid",
        item_tfms=Resize(presize),
        batch_tfms=[*aug_transforms(size=args.size), Normalize.from_stats(*imagenet_stats)],
        bs=args.bs,
        device=torch.device("cpu"),
    )
    learn = vision_learner(dls, getattr(models, args.arch), pretrained=False, metrics=error_rate)
    learn.freeze()
    timer = EpochTimer()
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(args.epochs, 3e-3, cbs=[timer])
        start = time.perf_counter()
        learn.get_preds(dl=dls.valid)
        predict = time.perf_counter() - start
    train_images = len(dls.train) * args.bs
    print(
        "RESULT "
        + json.dumps({"epochs": timer.seconds, "predict": predict, "train_images": train_images}),
        flush=True,
    )


if __name__ == "__main__":
    main()
