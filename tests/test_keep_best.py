"""`keep: best` (fastai's SaveModelCallback): which epoch is kept, that the model ends with its
weights, that a resumed fit keeps the best found before it was killed, and a stage run whose
best epoch is not its last (the metrics, the epoch table and the checkpoint all agree on it)."""

from __future__ import annotations

import importlib
import json
import math
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
import torch

from pets.cache import build_cache
from pets.compute import Compute
from pets.config import LabelsParams, parse_params
from pets.files import write_csv, write_json
from pets.labels import label_dataset
from pets.learner import load_learner
from pets.synthetic import make_pets
from pets.tracking import stage_run
from pets.train import Best, EpochRow, evaluate, fit_one_cycle, kept_epoch, load_resume, save_resume
from tests import tinyfit
from tests.helpers import mlflow_client

CPU = Compute(torch.device("cpu"))


def _rows(*values: tuple[float, float]) -> list[EpochRow]:
    return [EpochRow(i, 1.0, loss, error, 0.0) for i, (loss, error) in enumerate(values)]


def test_the_kept_epoch_is_the_last_or_the_first_lowest() -> None:
    rows = _rows((0.9, 0.3), (0.5, 0.2), (0.7, 0.2), (0.6, 0.1))
    assert kept_epoch(rows, "last") == 3
    assert kept_epoch(rows, "best", "valid_loss") == 1
    assert kept_epoch(rows, "best", "error_rate") == 3
    ties = _rows((0.9, 0.2), (0.5, 0.2), (0.4, 0.3))
    assert kept_epoch(ties, "best", "error_rate") == 0  # a tie keeps the earlier, as fastai
    assert kept_epoch(_rows((math.nan, 0.5), (2.0, 0.5)), "best") == 1  # nan never wins
    assert kept_epoch(_rows((1.0, 0.5), (math.nan, 0.1)), "best") == 0


def _fit(train, valid, best=None, **options) -> tuple[torch.nn.Sequential, list[EpochRow]]:
    """The tiny model fitted 4 epochs at a learning rate that relearns the wrong labels
    given from epoch 2 on (tinyfit's poison): epoch 1 is the best by valid_loss."""
    model = tinyfit.model()
    rows = fit_one_cycle(
        model, tinyfit.SPLIT, train, valid, 4, 3e-2, 0.01, CPU, best=best, **options
    )
    return model, rows


def test_a_fit_ends_with_its_best_epochs_weights(capsys: pytest.CaptureFixture) -> None:
    best = Best("valid_loss")
    model, rows = _fit(*tinyfit.loaders(poison_from=2), best=best)
    assert best.epoch == 1 == kept_epoch(rows, "best") and best.value == rows[1].valid_loss
    assert rows[3].valid_loss > 100 * rows[1].valid_loss  # the last epoch is far worse
    saved = model.state_dict()
    assert all(torch.equal(saved[name], best.state[name]) for name in saved)
    _, valid = tinyfit.loaders()
    assert evaluate(model, valid, CPU) == (rows[1].valid_loss, rows[1].error_rate)
    marked = [
        line.split()[0] for line in capsys.readouterr().out.splitlines() if "best so far" in line
    ]
    assert marked == ["0", "1"]
    by_error = Best("error_rate")
    _fit(*tinyfit.loaders(poison_from=2), best=by_error)
    assert by_error.epoch == 0 and by_error.value == 0.0  # epochs 0 and 1 tie: the earlier
    # keep: last (no `best`) is the fit as it always was: the last epoch's weights.
    last, rows_last = _fit(*tinyfit.loaders(poison_from=2))
    assert [r.valid_loss for r in rows_last] == [r.valid_loss for r in rows]
    assert evaluate(last, valid, CPU)[0] == rows_last[3].valid_loss


class Killed(Exception):
    """Stands for the SIGKILL that ends a training between two epochs."""


def test_the_best_epoch_survives_a_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fp16 = Compute(torch.device("cpu"), "fp16")  # its gradient scaler's state must come back too
    scalers: list[dict] = []

    def fit(path: Path, best: Best, stop_after: int | None = None) -> tuple[torch.nn.Module, list]:
        model = tinyfit.model(seed=5)  # not the weights it resumes: those come from the file
        train, valid = tinyfit.loaders(poison_from=2)

        def checkpoint(parts: dict) -> None:
            save_resume(path, "tiny", parts)
            scalers.append(parts["scaler"].state_dict())

        def on_epoch(row: EpochRow) -> None:
            if row.epoch == stop_after:
                raise Killed

        rows = fit_one_cycle(
            model,
            tinyfit.SPLIT,
            train,
            valid,
            4,
            3e-2,
            0.01,
            fp16,
            on_epoch=on_epoch,
            resume=partial(load_resume, path, "tiny"),
            checkpoint=checkpoint,
            best=best,
        )
        return model, rows

    whole, whole_best = tmp_path / "whole.pth", Best("valid_loss")
    model, rows = fit(whole, whole_best)
    assert whole_best.epoch == 1
    ended = scalers[-1]
    killed = tmp_path / "killed.pth"
    with pytest.raises(Killed):
        fit(killed, Best("valid_loss"), stop_after=2)  # the best (1) is behind it, 2 is worse
    capsys.readouterr()
    resumed_best = Best("valid_loss")
    resumed, resumed_rows = fit(killed, resumed_best)
    out = capsys.readouterr().out
    assert "resuming after epoch 2" in out and out.count("(resumed)  * best so far") == 2
    assert resumed_best.epoch == 1 and resumed_best.value == whole_best.value
    assert [r.valid_loss for r in resumed_rows] == [r.valid_loss for r in rows]
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in model.state_dict().items())
    # fp16 overflowed twice here (steps skipped, the scale halved each time); the resumed
    # fit's scaler went on from the saved one, to the same scale and count of good steps.
    assert scalers[-1] == ended and ended["scale"] < 2.0**16 and ended["_growth_tracker"] < 48


def _photos(root: Path) -> dict[str, Path]:
    make_pets(root / "ds", 12, classes=6, seed=3, sizes=((120, 90), (90, 120)))
    labelled = label_dataset(LabelsParams(), root / "ds", seed=2)
    write_csv(root / "split.csv", labelled.split)
    write_json(root / "classes.json", labelled.classes)
    build_cache(root / "ds", labelled.split["path"].tolist(), 96, root / "cache", threads=2)
    return {"split": root / "split.csv", "classes": root / "classes.json", "cache": root / "cache"}


def test_a_stage_keeps_its_best_epoch_not_its_last(tmp_path: Path, capsys, monkeypatch) -> None:
    """train_resnet50 whose unfrozen epoch, at a learning rate of 10, wrecks the model: the
    frozen epoch is kept, over both phases, and MLflow says which."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    photos = _photos(tmp_path)
    section = {"arch": "resnet18", "weights": "none", "size": 48, "bs": 8, "epochs": 1}
    params = parse_params(
        {
            "tracking": {"experiment": "keep"},
            "train_resnet50": {
                **section,
                "unfreeze_epochs": 1,
                "unfreeze_lr": 10.0,
                "keep": "best",
            },
        }
    )
    out = {name: tmp_path / f"out/{name}" for name in ("model", "metrics", "history", "model_info")}
    with stage_run("train_resnet50", params, tmp_path) as tracker:
        importlib.import_module("pets.stages.train_resnet50").main(
            params, **photos, **out, threads=2, tracker=tracker
        )
    printed = capsys.readouterr().out
    history = pd.read_csv(out["history"])
    assert history["epoch"].tolist() == [0, 1] and history["kept"].tolist() == [True, False]
    assert history["valid_loss"][1] > 10 * history["valid_loss"][0]
    assert "keep: best: epoch 0 kept (of 0-1), the lowest valid_loss" in printed
    assert "\n1         " in printed  # the unfrozen phase's row goes on from the frozen one's
    metrics = json.loads(out["metrics"].read_text())
    kept = history.iloc[0]
    assert metrics["kept_epoch"] == 0 and metrics["epochs"] == 2
    assert (
        metrics["valid_loss"] == kept["valid_loss"] and metrics["error_rate"] == kept["error_rate"]
    )
    assert metrics["train_loss"] == kept["train_loss"]
    # The checkpoint holds the kept epoch's weights: validated again, it gives that row.
    learner = load_learner(params, "get_preds", out["model"], bs=16, train=False, **photos)
    valid_loss, error_rate = evaluate(learner.model, learner.valid, learner.compute)
    assert valid_loss == pytest.approx(kept["valid_loss"], rel=1e-5)
    assert error_rate == kept["error_rate"]
    client = mlflow_client(tmp_path)
    (run,) = client.search_runs([client.get_experiment_by_name("keep").experiment_id])
    assert run.data.metrics["kept_epoch"] == 0
    assert run.data.metrics["final_valid_loss"] == pytest.approx(kept["valid_loss"])
    assert run.data.params["train_resnet50.keep"] == "best"
    assert run.data.tags["precision"] == "fp32" and "CPU" in run.data.tags["precision.why"]
