"""One training step of `train_frozen`'s learner, in float64, with augmentation and dropout off
(the only draws that differ between one process and several): the first batch's logits, the
gradients and the buffers, saved by process 0. Run under torchrun for several processes.

    python tests/ddp_step.py OUT WEIGHTS SPLIT CLASSES CACHE BS SYNC_BN
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import pets.data
from pets import distributed
from pets.config import parse_params
from pets.learner import create_learner
from pets.train import data_parallel
from pets.transforms import centre_draw


def main(argv: list[str]) -> None:
    """Take the step and save what it computed (see the module's docstring)."""
    out, weights, split, classes, cache, bs, sync_bn = argv
    # Every photo centre-cropped, unflipped, unlit: what remains is the batch's content.
    pets.data.draw = lambda _aug, count, _generator: centre_draw(count)
    settings = {"arch": "timm:tf_efficientnet_lite0", "weights": weights, "size": 64, "bs": int(bs)}
    params = parse_params({"launch": {"sync_bn": sync_bn == "true"}, "train_frozen": settings})
    torch.set_num_threads(1)
    learner = create_learner(
        params,
        "train_frozen",
        arch=settings["arch"],
        weights=weights,
        size=64,
        bs=settings["bs"],
        split=Path(split),
        classes=Path(classes),
        cache=Path(cache),
    )
    for module in learner.model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    model = learner.model.double().train()
    runner = data_parallel(model, learner.compute)
    images, targets = next(iter(learner.train))
    logits = runner(images.double())
    F.cross_entropy(logits, targets).backward()
    # This process's rows of the whole batch are every size()-th from its rank on.
    whole = len(targets) * distributed.size()
    rows = torch.arange(distributed.rank(), whole, distributed.size())
    gathered = torch.zeros(whole, logits.shape[1], dtype=logits.dtype)
    gathered = distributed.reduce_sum(gathered.index_copy(0, rows, logits.detach()))
    if distributed.is_main():
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        buffers = dict(model.named_buffers())
        torch.save({"logits": gathered, "grads": grads, "buffers": buffers}, out)
    distributed.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
