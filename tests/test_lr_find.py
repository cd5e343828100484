"""lr_find's suggestions against a reference written the way fastai 2.8 computes them
(`fastai/callback/schedule.py`: valley, minimum, steep, slide on float32 tensors), on noisy
synthetic curves and on a real sweep over generated photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pets.cache import build_cache
from pets.config import LabelsParams, parse_params
from pets.files import write_csv, write_json
from pets.labels import label_dataset
from pets.learner import create_learner, load_learner, unfreeze_learner
from pets.lr_find import auto_lr, auto_note, finetune_lr, suggest, sweep
from pets.synthetic import make_pets
from pets.tracking import Tracker
from pets.train import save_checkpoint
from pets.train import threads as torch_threads

# fastai 2.8.12's suggestion functions, transcribed line for line (fastai is not a dependency).


def _fastai_valley(lrs: torch.Tensor, losses: torch.Tensor) -> float:
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if (losses[i] < losses[j]) and (lds[i] < lds[j] + 1):
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    idx = max_start + int(sections) + int(sections / 2)
    return float(lrs[idx])


def _fastai_slide(lrs: torch.Tensor, losses: torch.Tensor, lr_diff: int = 15) -> float:
    losses = losses.numpy()
    loss_grad = np.gradient(losses)
    r_idx = -1
    l_idx = r_idx - lr_diff
    local_min_lr = lrs[l_idx]
    while (l_idx >= -len(losses)) and (abs(loss_grad[r_idx] - loss_grad[l_idx]) > 0.005):
        local_min_lr = lrs[l_idx]
        r_idx -= 1
        l_idx -= 1
    return float(local_min_lr)


def _fastai_minimum(lrs: torch.Tensor, losses: torch.Tensor) -> float:
    return lrs[losses.argmin()].item() / 10


def _fastai_steep(lrs: torch.Tensor, losses: torch.Tensor) -> float:
    grads = (losses[1:] - losses[:-1]) / (lrs[1:].log() - lrs[:-1].log())
    return lrs[grads.argmin()].item()


def fastai_suggestions(curve: pd.DataFrame, num_it: int) -> dict[str, float]:
    """`Learner.lr_find`'s suggestions from a recorded curve, as fastai computes them."""
    lrs = torch.tensor(curve["lr"].tolist()[num_it // 10 : -5])
    losses = torch.tensor(curve["smoothed_loss"].tolist()[num_it // 10 : -5])
    nan_idxs = torch.nonzero(torch.isnan(losses.view(-1)))
    if len(nan_idxs) > 0:
        drop_idx = min(nan_idxs)
        lrs, losses = lrs[:drop_idx], losses[:drop_idx]
    return {
        "valley": _fastai_valley(lrs, losses),
        "minimum": _fastai_minimum(lrs, losses),
        "steep": _fastai_steep(lrs, losses),
        "slide": _fastai_slide(lrs, losses),
    }


def _assert_same(ours: dict, reference: dict) -> None:
    for name, lr in reference.items():
        assert ours[name]["lr"] == pytest.approx(lr, rel=1e-5), name


@pytest.mark.parametrize("seed", range(12))
def test_suggestions_match_fastai_on_noisy_curves(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lrs = 1e-7 * (10 / 1e-7) ** (np.arange(100) / 100)
    x = np.log10(lrs)
    dip = rng.uniform(-4, -1)
    losses = 2.0 - 1.2 / (1 + np.exp(-(x - dip + 2) * 2)) + np.maximum(0, x - dip) ** 2
    noisy = losses + rng.normal(0, 0.03, len(x))
    smoothed = pd.Series(noisy).ewm(alpha=0.02).mean().to_numpy().copy()
    if seed % 3 == 0:  # a divergence: nan from some batch on
        smoothed[80:] = np.nan
    curve = pd.DataFrame({"lr": lrs, "loss": noisy, "smoothed_loss": smoothed})
    _assert_same(suggest(curve, 100), fastai_suggestions(curve, 100))


@pytest.fixture(scope="module")
def stage1(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Generated photos and a stage-1 model trained on them for two epochs."""
    root = tmp_path_factory.mktemp("lr")
    make_pets(root / "ds", 10, classes=4, seed=9, sizes=((120, 90), (90, 120)))
    labelled = label_dataset(LabelsParams(), root / "ds", seed=2)
    write_csv(root / "split.csv", labelled.split)
    write_json(root / "classes.json", labelled.classes)
    build_cache(root / "ds", labelled.split["path"].tolist(), 64, root / "cache", threads=2)
    photos = {
        "split": root / "split.csv",
        "classes": root / "classes.json",
        "cache": root / "cache",
    }
    params = parse_params({"train_frozen": {"arch": "resnet18", "weights": "none"}})
    with torch_threads(2):
        learner = create_learner(
            params, "train_frozen", arch="resnet18", weights="none", size=48, bs=4, **photos
        )
        learner.fit_one_cycle(2, [3e-3], 0.01, "train_frozen", Tracker())
    save_checkpoint(root / "s1.pth", learner.model, learner.record(1).to_dict())
    return {**photos, "checkpoint": root / "s1.pth"}


@pytest.mark.slow
def test_a_real_sweep_suggests_what_fastai_would(stage1: dict[str, Path]) -> None:
    params = parse_params({"lr_find": {"bs": 4, "num_it": 40}})
    photos = {k: v for k, v in stage1.items() if k != "checkpoint"}
    with torch_threads(2):
        learner = load_learner(params, "lr_find", stage1["checkpoint"], bs=4, **photos)
        unfreeze_learner(learner)
        curve = sweep(
            learner.model,
            learner.split,
            learner.train,
            learner.compute,
            start_lr=1e-7,
            end_lr=10,
            num_it=40,
            stop_div=True,
        )
    assert curve["lr"].iloc[0] == pytest.approx(1e-7) and len(curve) >= 12
    found = suggest(curve, 40)
    _assert_same(found, fastai_suggestions(curve, 40))
    for point in found.values():
        assert curve["lr"].min() / 10 <= point["lr"] <= curve["lr"].max()


def test_auto_takes_the_valley_and_the_report_says_so(tmp_path: Path) -> None:
    found = {
        name: {"lr": lr, "loss": 1.0}
        for name, lr in zip(
            ("valley", "minimum", "steep", "slide"), (5.8e-4, 1e-3, 2e-4, 3.3e-4), strict=True
        )
    }
    assert auto_lr(found) == pytest.approx([5.8e-6, 5.8e-4])
    (tmp_path / "lr.json").write_text(json.dumps(found))
    assert finetune_lr("auto", tmp_path / "lr.json") == pytest.approx([5.8e-6, 5.8e-4])
    assert finetune_lr([1e-6, 1e-4], tmp_path / "lr.json") == [1e-6, 1e-4]
    with pytest.raises(Exception, match="finetune.lr: auto needs"):
        finetune_lr("auto", tmp_path / "missing.json")
    used = [5.8e-6, 5.8e-5, 5.8e-4]
    assert "valley" in auto_note(found, used) and "finetune.lr: auto)" in auto_note(found, used)
    assert "by hand" in auto_note(found, [1e-6, 1e-5, 1e-4])
