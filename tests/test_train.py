"""fit_one_cycle's pieces: lr spreads, parameter groups, the schedule against fastai's formula,
the smoothed loss, and lr_find's suggestions on synthetic curves."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from pets.compute import pick_device
from pets.errors import PetsError
from pets.lr_find import minimum, slide, steep, suggest, trim, valley
from pets.model import create_body, create_cnn, freeze
from pets.train import (
    SmoothedLoss,
    adamw,
    fit_guarded,
    one_cycle,
    param_groups,
    spread_lr,
)


def test_lr_spreads_are_the_lessons_slices() -> None:
    assert spread_lr(3e-3) == [3e-3] * 3
    assert spread_lr([3e-3]) == pytest.approx([3e-4, 3e-4, 3e-3])  # slice(3e-3)
    assert spread_lr([1e-6, 1e-4]) == pytest.approx([1e-6, 1e-5, 1e-4])  # slice(1e-6, 1e-4)


@pytest.fixture(scope="module")
def resnet18() -> tuple[torch.nn.Sequential, str]:
    body = create_body("resnet18", "none")
    return create_cnn(body, 5), body.split


def test_no_weight_decay_on_norms_and_biases(resnet18) -> None:
    model, split = resnet18
    groups = param_groups(model, split, [1e-4, 1e-3, 1e-2], wd=0.01)
    assert [g["lr"] for g in groups] == [1e-4, 1e-4, 1e-3, 1e-3, 1e-2, 1e-2]
    for group in groups:
        dims = {p.ndim for p in group["params"]}
        assert (dims <= {1}) == (group["weight_decay"] == 0.0)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_frozen_parameters_are_left_out(resnet18) -> None:
    model, split = resnet18
    freeze(model, split)
    try:
        groups = param_groups(model, split, [1e-4, 1e-4, 1e-3], wd=0.01)
        body_groups = [g for g in groups if g["lr"] == 1e-4]
        assert all(p.ndim == 1 for g in body_groups for p in g["params"])  # BatchNorm only
    finally:
        for parameter in model.parameters():
            parameter.requires_grad_(True)


def _fastai_one_cycle(pct: float, lr_max: float) -> tuple[float, float]:
    """fastai's combined_cos(0.25, lr/25, lr, lr/1e5) and moms (0.95, 0.85, 0.95) at `pct`."""

    def cos(start: float, end: float, pos: float) -> float:
        return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2

    if pct < 0.25:
        return cos(lr_max / 25, lr_max, pct / 0.25), cos(0.95, 0.85, pct / 0.25)
    pos = (pct - 0.25) / 0.75
    return cos(lr_max, lr_max / 1e5, pos), cos(0.85, 0.95, pos)


def test_one_cycle_follows_fastai() -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = adamw([{"params": [parameter], "lr": 2e-3, "weight_decay": 0.0}])
    total = 1001
    scheduler = one_cycle(optimizer, total)
    seen = []
    for _ in range(total):
        group = optimizer.param_groups[0]
        seen.append((group["lr"], group["betas"][0]))
        optimizer.step()
        scheduler.step()
    for step in (0, 100, 249, 400, 625, 900, 1000):
        lr, beta = _fastai_one_cycle(step / (total - 1), 2e-3)
        assert seen[step][0] == pytest.approx(lr, rel=0.02, abs=1e-9), step
        assert seen[step][1] == pytest.approx(beta, rel=0.002), step
    assert seen[0][0] == pytest.approx(2e-3 / 25)
    assert max(s[0] for s in seen) == pytest.approx(2e-3, rel=1e-4)
    assert seen[-1][0] == pytest.approx(2e-3 / 1e5, rel=1e-3)


def test_short_schedules() -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = adamw([{"params": [parameter], "lr": 1e-3}])
    one_cycle(optimizer, 4)  # warm-up lengthened to one whole step
    with pytest.raises(PetsError, match="too few for a one-cycle schedule"):
        one_cycle(optimizer, 2)


def test_smoothed_loss_is_debiased() -> None:
    smoothed = SmoothedLoss()
    assert smoothed.update(2.0) == pytest.approx(2.0)
    assert smoothed.update(2.0) == pytest.approx(2.0)
    value = smoothed.update(4.0)
    assert 2.0 < value < 4.0


def test_device_choice() -> None:
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert pick_device("auto").type == "cpu"
        with pytest.raises(PetsError, match="device: cuda was asked for but torch sees no CUDA"):
            pick_device("cuda")


def test_out_of_memory_names_the_parameters() -> None:
    def fit():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(
        PetsError,
        match="train_resnet50: CUDA ran out of memory at bs 32, size "
        "320 .* lower train_resnet50.bs \\(e.g. 16\\)",
    ):
        fit_guarded(fit, "train_resnet50", 32, 320)


LRS = np.logspace(-7, 1, 100)


def test_minimum_and_steep_on_a_known_curve() -> None:
    x = np.log10(LRS)
    losses = 2.0 - np.tanh((x + 3) * 1.5) + 0.02 * (x + 7)  # falls fastest at 1e-3
    assert steep(LRS, losses) == pytest.approx(1e-3, rel=0.25)
    bowl = (x + 2) ** 2  # lowest at 1e-2
    assert minimum(LRS, bowl) == pytest.approx(1e-3, rel=0.25)


def test_valley_lies_in_the_longest_descent() -> None:
    x = np.log10(LRS)
    losses = np.where(x < -5, 2.0, 2.0 - (x + 5) * 0.5)  # flat, then falls until 1e-2...
    losses = np.where(x > -2, 0.5 + (x + 2) ** 2, losses)  # ...then rises
    start = int(np.argmax(x >= -5))
    end = int(np.argmin(losses))
    lr = valley(LRS, losses)
    index = int(np.argmin(np.abs(LRS - lr)))
    assert start <= index <= end
    assert index == pytest.approx(start + (end - start) / 2, abs=3)


def test_slide_stops_before_divergence() -> None:
    x = np.log10(LRS)
    losses = 2.0 - 0.1 * (x + 7) + np.where(x > -1, 10 * (x + 1) ** 2, 0)
    lr = slide(LRS, losses)
    assert LRS[0] <= lr < 1e-1


def test_suggestions_lie_on_the_curve() -> None:
    x = np.log10(LRS)
    smooth = 1.0 + (x + 3) ** 2 / 10
    curve = pd.DataFrame({"lr": LRS, "loss": smooth, "smoothed_loss": smooth})
    found = suggest(curve, 100)
    assert set(found) == {"valley", "minimum", "steep", "slide"}
    for point in found.values():
        assert point["loss"] == pytest.approx(float(np.interp(np.log10(point["lr"]), x, smooth)))
        assert LRS[0] <= point["lr"] <= LRS[-1]
    lrs, losses = trim(curve, 100)
    assert len(lrs) == len(losses) == 100 - 10 - 5


def test_nan_losses_are_trimmed() -> None:
    smooth = np.linspace(2, 1, 100)
    smooth[60:] = np.nan
    lrs, losses = trim(pd.DataFrame({"lr": LRS, "loss": smooth, "smoothed_loss": smooth}), 100)
    assert len(lrs) == 50 and np.isfinite(losses).all()
