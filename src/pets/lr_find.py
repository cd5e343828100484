"""The lesson's `lr_find()`: a learning-rate range test, and fastai's four suggestions.

The sweep raises the learning rate exponentially batch by batch, records the loss, and stops
when the smoothed loss passes four times its best. The suggestions are pure functions of the
recorded curve, so each can be tested on synthetic curves."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pets.errors import PetsError

if TYPE_CHECKING:
    from torch import nn

    from pets.compute import Compute

SUGGESTIONS = ("valley", "minimum", "steep", "slide")
# What `finetune.lr: auto` reads, and why: fastai's default since 2.3 (valley replaced
# minimum/10 and steep, which land too low on curves with a long flat start or a noisy dip).
AUTO = "valley"
AUTO_WHY = (
    "fastai's default: the middle of the longest stretch where the loss keeps falling, clear of "
    "both the flat start (too low to learn) and the rise (divergence)"
)


def spread_lr(lr: float | list[float], groups: int = 3) -> list[float]:
    """One learning rate per layer group: a number for every group; `[x]` is the lesson's
    `slice(x)` (x/10 on the body groups, x on the head); `[low, high]` is `slice(low, high)`,
    spaced geometrically."""
    if not isinstance(lr, list):
        return [float(lr)] * groups
    if len(lr) == 1:
        return [lr[0] / 10] * (groups - 1) + [float(lr[0])]
    low, high = lr
    return [low * (high / low) ** (i / (groups - 1)) for i in range(groups)]


def sweep(
    model: nn.Sequential,
    split: str,
    loader: Any,
    compute: Compute,
    *,
    start_lr: float,
    end_lr: float,
    num_it: int,
    stop_div: bool,
    wd: float = 0.01,
    momentum: float | None = None,
) -> pd.DataFrame:
    """Train for up to `num_it` batches with lr = start * (end/start)^(i/num_it) on every layer
    group; returns lr, loss and smoothed loss per batch. The caller's model is changed: reload
    it afterwards if it is used again (fastai restores it for you). `momentum`: AdamW's beta1,
    by default the one the model's last fit ended at (`pets.train.Momentum`), else Adam's 0.9."""
    # Here, not at the top: the report reads the suggestions' helpers without torch (1.9 s).
    import torch.nn.functional as F

    from pets import distributed
    from pets.train import SmoothedLoss, adamw, data_parallel, param_groups

    cuda = compute.device.type == "cuda"
    groups = param_groups(model, split, [start_lr] * 3, wd)
    optimizer = adamw(groups, fused=cuda, **({} if momentum is None else {"beta1": momentum}))
    scaler = compute.grad_scaler()  # fp16: as in training (a pass-through otherwise)
    smoothed, best = SmoothedLoss(), math.inf
    rows = []
    model.train()
    runner = data_parallel(model, compute)  # one model whatever the number of processes
    while len(rows) < num_it:
        for images, targets in loader:
            lr = start_lr * (end_lr / start_lr) ** (len(rows) / num_it)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with compute.autocast():
                loss = F.cross_entropy(runner(images), targets)
            scaler.scale(loss).backward()
            scaler.step(optimizer)  # skipped when fp16 gradients overflow; the lr still grows
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            value = (distributed.reduce_sum(loss.detach().float()) / distributed.size()).item()
            smooth = smoothed.update(value)
            rows.append((lr, value, smooth))
            best = min(best, smooth)
            diverged = not math.isfinite(smooth) or (stop_div and smooth > 4 * best)
            if diverged or len(rows) >= num_it:
                return pd.DataFrame(rows, columns=["lr", "loss", "smoothed_loss"])
        if not len(loader):
            break
    return pd.DataFrame(rows, columns=["lr", "loss", "smoothed_loss"])


def trim(curve: pd.DataFrame, num_it: int) -> tuple[np.ndarray, np.ndarray]:
    """The part of the curve fastai suggests from: the first tenth of `num_it` and the last 5
    batches dropped, and nothing from the first non-finite loss on. In float32, as fastai's
    tensors are, so that near-ties between losses fall the same way."""
    lrs = curve["lr"].to_numpy(np.float32)[num_it // 10 : -5]
    losses = curve["smoothed_loss"].to_numpy(np.float32)[num_it // 10 : -5]
    bad = np.flatnonzero(~np.isfinite(losses))
    if len(bad):
        lrs, losses = lrs[: bad[0]], losses[: bad[0]]
    return lrs, losses


def minimum(lrs: np.ndarray, losses: np.ndarray) -> float:
    """A tenth of the learning rate with the lowest loss."""
    return float(lrs[int(np.argmin(losses))] / 10)


def steep(lrs: np.ndarray, losses: np.ndarray) -> float:
    """The learning rate where the loss falls fastest against log(lr)."""
    slopes = np.diff(losses) / np.diff(np.log(lrs))
    return float(lrs[int(np.argmin(slopes))])


def valley(lrs: np.ndarray, losses: np.ndarray) -> float:
    """fastai's default: the longest stretch where the loss keeps falling (a longest decreasing
    subsequence); the suggestion lies past the stretch's first third, half way into the second."""
    count = len(losses)
    length = [1] * count
    best_end = best_start = 0
    for i in range(1, count):
        for j in range(i):
            if losses[i] < losses[j] and length[i] < length[j] + 1:
                length[i] = length[j] + 1
            # Inside the inner loop, as in fastai 2.8: the stretch's start is taken when its
            # length first passes the best, which can differ from its final length.
            if length[best_end] < length[i]:
                best_end, best_start = i, i - length[i]
    third = (best_end - best_start) / 3
    return float(lrs[min(count - 1, best_start + int(third) + int(third / 2))])


def slide(lrs: np.ndarray, losses: np.ndarray, lr_diff: int = 15, thresh: float = 0.005) -> float:
    """fastai's 'slide' rule: walk left from the largest learning rate until the loss gradients
    `lr_diff` points apart agree within `thresh`."""
    gradient = np.gradient(losses)
    lr_diff = min(lr_diff, len(losses) - 1)
    right, left = -1, -1 - lr_diff
    found = lrs[left]
    while left >= -len(losses) and abs(gradient[right] - gradient[left]) > thresh:
        found = lrs[left]
        right, left = right - 1, left - 1
    return float(found)


def suggest(curve: pd.DataFrame, num_it: int) -> dict[str, dict[str, float]]:
    """All four suggestions, each with the (smoothed) loss the curve has at it, so every
    suggestion is a point on the plotted curve."""
    lrs, losses = trim(curve, num_it)
    if len(lrs) < 3:
        lrs, losses = curve["lr"].to_numpy(), curve["smoothed_loss"].to_numpy()
    if len(lrs) < 3:
        raise PetsError(
            "lr_find: fewer than 3 batches recorded; raise lr_find.num_it or lower lr_find.bs"
        )
    found = {
        "valley": valley(lrs, losses),
        "minimum": minimum(lrs, losses),
        "steep": steep(lrs, losses),
        "slide": slide(lrs, losses),
    }
    log_lrs = np.log10(curve["lr"].to_numpy())
    smoothed = curve["smoothed_loss"].to_numpy()
    return {
        name: {"lr": lr, "loss": float(np.interp(np.log10(lr), log_lrs, smoothed))}
        for name, lr in found.items()
    }


def auto_lr(found: dict[str, dict[str, float]]) -> list[float]:
    """`finetune.lr: auto`: slice(valley/100, valley), as fastai's `fine_tune` spreads its base
    learning rate over the unfrozen layer groups."""
    return [found[AUTO]["lr"] / 100, found[AUTO]["lr"]]


def finetune_lr(setting: float | list[float] | str, suggestions: Path) -> float | list[float]:
    """`finetune.lr`, with `auto` read from lr_find's suggestions file."""
    if setting != "auto":
        return setting
    try:
        found = json.loads(suggestions.read_text())
        return auto_lr({AUTO: {"lr": float(found[AUTO]["lr"])}})
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        raise PetsError(f"finetune.lr: auto needs {suggestions} from the lr_find stage") from None


def auto_note(found: dict[str, dict[str, float]], used: list[float] | None) -> str:
    """One sentence for the report: which suggestion `finetune.lr: auto` takes and why, and
    whether the finetune stage's learning rates (`used`, per layer group) came from it."""
    auto = spread_lr(auto_lr(found))
    shown = ", ".join(f"{x:.1e}" for x in auto)
    note = (
        f"finetune.lr: auto takes the {AUTO} suggestion ({found[AUTO]['lr']:.2e}; {AUTO_WHY}) "
        f"as slice({AUTO}/100, {AUTO}): {shown} per layer group."
    )
    if used is None:
        return note
    if np.allclose(used, auto, rtol=1e-6):
        return note + " The finetune stage trained with these (finetune.lr: auto)."
    given = ", ".join(f"{x:.1e}" for x in used)
    return note + f" The finetune stage was given finetune.lr by hand: {given}."
