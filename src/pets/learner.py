"""The lesson's `Learner`: data, model and compute put together for one training stage, and the
files a training stage writes (checkpoint, metrics, epoch history)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from pets import distributed
from pets.cache import PixelCache
from pets.compute import Compute, pick_compute
from pets.config import Params, stage_params
from pets.data import DeviceCanvases, Loader, load_subsets, stream_seed
from pets.errors import PetsError
from pets.files import md5_file, write_csv, write_json
from pets.lr_find import spread_lr
from pets.model import create_body, create_cnn, freeze, model_from_state, unfreeze
from pets.modelspec import ModelRecord, ModelSpec
from pets.tracking import Tracker
from pets.train import (
    Best,
    EpochRow,
    Momentum,
    fit_guarded,
    fit_one_cycle,
    load_checkpoint,
    load_resume,
    save_checkpoint,
    save_resume,
)

HIDDEN, DROPOUT = 512, (0.25, 0.5)


@dataclass
class Learner:
    """A model with what it was built from, and the loaders that feed it."""

    model: nn.Sequential
    spec: ModelSpec  # what the model is: arch, classes, sizes, normalisation, head
    train: Loader | None  # None when loaded for inference only
    valid: Loader
    compute: Compute  # the device, and the forward pass's precision
    # What identifies this training's params and inputs, computed only when a fit resumes.
    fingerprint: Callable[[], str] = str
    frozen: bool = False  # the body trains only its norms
    fits: list[list[float]] = field(default_factory=list)  # lr per layer group of each fit here
    seed: int = 0  # params.seed: each fit's batches and dropout masks draw from it (`fit_stream`)
    best: Best | None = None  # `keep: best`: the best epoch of every fit so far, with weights
    momentum: Momentum = field(default_factory=Momentum)  # where the last fit's schedule ended

    @property
    def split(self) -> str:
        """Where the body's second layer group starts."""
        return self.spec.split

    def record(self, epochs: int) -> ModelRecord:
        """The spec with how this learner trained it: what its checkpoint and model.json say."""
        return ModelRecord.parse(
            {
                **self.spec.to_dict(),
                "frozen": self.frozen,
                "lr": self.fits,
                "bs": self.train.bs if self.train else None,
                "epochs": epochs,
            },
            "the trained model",
        )

    def fit_stream(self, key: str) -> str:
        """The random stream of this learner's next fit: the stage's name, and its phase for a
        second fit (train_resnet50's unfrozen epochs). Its shuffle, augmentation and dropout
        draws then follow from (seed, stream) alone, so a fit neither replays another's batches
        nor depends on how many batches ran before it; a resumed fit restores them exactly."""
        phase = len(self.fits)
        return key if phase == 0 else f"{key}:{phase}"

    def fit_one_cycle(
        self,
        epochs: int,
        lr: float | list[float],
        wd: float,
        key: str,
        tracker: Tracker,
        step_offset: int = 0,
        compile_model: bool = False,
        resume: Path | None = None,
        keep: str = "last",
        monitor: str = "valid_loss",
    ) -> list[EpochRow]:
        """Train with the one-cycle policy, logging each epoch's row to the tracker
        (`compile_model`: through torch.compile). With `resume`, the training state is saved
        there after every epoch, and a fit killed earlier continues from it when it was for
        the same params and inputs (`self.fingerprint`). With `keep: best` the model ends with
        the weights of the epoch with the lowest `monitor` over this learner's fits so far
        (`self.best`; epochs numbered from `step_offset`)."""

        def log(row: EpochRow) -> None:
            tracker.log_metrics(
                {
                    "train_loss": row.train_loss,
                    "valid_loss": row.valid_loss,
                    "error_rate": row.error_rate,
                    "epoch_seconds": row.time,
                },
                step=step_offset + row.epoch,
            )

        # Per-epoch states are one process's; a data-parallel run starts over after a kill.
        resumable = resume is not None and distributed.size() == 1
        fingerprint = self.fingerprint() if resumable else ""
        stream = self.fit_stream(key)
        self.train.reseed(stream)
        torch.manual_seed(stream_seed(self.seed, stream, "dropout", distributed.rank()))
        lrs = spread_lr(lr)
        self.fits.append(list(lrs))
        if keep == "best" and self.best is None:
            self.best = Best(monitor)
        tracker.set_tags(self.compute.tags())
        print(
            f"{key}: fit_one_cycle({epochs}) lr per layer group {[f'{x:.2e}' for x in lrs]}",
            flush=True,
        )
        return fit_guarded(
            lambda: fit_one_cycle(
                self.model,
                self.split,
                self.train,
                self.valid,
                epochs,
                lr,
                wd,
                self.compute,
                on_epoch=log,
                compile_model=compile_model,
                resume=partial(load_resume, resume, fingerprint) if resumable else None,
                checkpoint=partial(save_resume, resume, fingerprint) if resumable else None,
                best=self.best if keep == "best" else None,
                first_epoch=step_offset,
                momentum=self.momentum,
            ),
            key,
            self.train.bs,
            self.spec.size,
        )


def _loaders(
    params: Params,
    key: str,
    cache_dir: Path,
    split: Path,
    classes_json: Path,
    size: int,
    bs: int,
    mean: tuple,
    std: tuple,
    device: torch.device,
    train_too: bool = True,
) -> tuple[Loader | None, Loader, list[str]]:
    cache = PixelCache(cache_dir)
    train, valid, classes = load_subsets(split, classes_json, cache)
    if train_too and bs > len(train):
        raise PetsError(
            f"{key}.bs: {bs} is more than the {len(train)} training photos; "
            "lower it (the last partial batch is dropped, as in fastai)"
        )
    resident = DeviceCanvases(cache, device) if DeviceCanvases.fits(cache, device) else None
    common = {
        "size": size,
        "device": device,
        "mean": mean,
        "std": std,
        "seed": params.seed,
        "stream": key,  # each stage its own batches: lr_find must not replay stage-1's
        "resident": resident,
        "channels_last": True,
    }
    train_loader = (
        Loader(cache, train, bs=bs, augment_params=params.augment, **common) if train_too else None
    )
    valid_bs = bs * 2 if train_too else bs
    return train_loader, Loader(cache, valid, bs=valid_bs, augment_params=None, **common), classes


def training_fingerprint(params: Params, key: str, files: list[Path]) -> str:
    """What a resumed fit must share with the one that saved its state: the stage's params,
    its input files' contents, and torch's version."""
    described = {
        "stage": key,
        "params": stage_params(params, key),
        "torch": torch.__version__,
        "files": {str(path): md5_file(path) for path in files if path.is_file()},
    }
    return hashlib.md5(json.dumps(described, sort_keys=True).encode()).hexdigest()


def resume_path(model: Path, phase: int = 0) -> Path:
    """Where a training stage keeps its per-epoch state until its model is written: beside the
    model, in a hidden folder that no DAG tool takes for an output."""
    return model.parent / ".resume" / f"{model.stem}-{phase}.pth"


def _clear_resume(model: Path) -> None:
    """Forget the per-epoch states once the model is written."""
    folder = model.parent / ".resume"
    for path in folder.glob(f"{model.stem}-*.pth"):
        path.unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def start_compute(params: Params, key: str) -> Compute:
    """The stage's device and precision (`device`, `precision`), in the process group when
    distributed; the precision chosen, and why, is printed once."""
    compute = distributed.start(pick_compute(params.device, params.precision))
    if distributed.is_main():
        print(f"{key}: {compute.describe()}", flush=True)
    return compute


def _prepare(model: nn.Module, device: torch.device, params: Params) -> nn.Module:
    # channels_last: oneDNN's and cuDNN's fastest layout (1.4x for resnet34 on this CPU).
    model = model.to(device, memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels
    if distributed.size() > 1 and params.launch.sync_bn:
        # Several processes train one model on one batch: BatchNorm normalises over all of it,
        # as one process at the whole batch size does (its layers keep their tensors).
        from pets.sync_bn import convert

        model = convert(model, device)
    return model


def create_learner(
    params: Params,
    key: str,
    *,
    arch: str,
    weights: str,
    size: int,
    bs: int,
    split: Path,
    classes: Path,
    cache: Path,
) -> Learner:
    """A new model from pretrained weights (the lesson's `create_cnn`), body frozen unless
    `weights` is none."""
    compute = start_compute(params, key)
    device = compute.device
    # Untrained bodies and the head's initial weights: a stream of their own, the same in every
    # process (dropout gets another, per process, when a fit starts).
    torch.manual_seed(stream_seed(params.seed, key, "init"))
    body = create_body(arch, weights, f"{key}.weights")
    train, valid, class_names = _loaders(
        params, key, cache, split, classes, size, bs, body.mean, body.std, device
    )
    model = create_cnn(body, len(class_names))
    frozen = weights != "none"
    if frozen:
        freeze(model, body.split)
    spec = ModelSpec.parse(
        {
            "arch": arch,
            "weights": body.weights,
            "classes": class_names,
            "size": size,
            "mean": list(body.mean),
            "std": list(body.std),
            "split": body.split,
            "head": {"features": body.features, "hidden": HIDDEN, "dropout": list(DROPOUT)},
            "presize": train.cache.size,  # photos reach the model from a canvas this size
        },
        key,
    )
    inputs = [split, classes, cache / "index.csv"]
    fingerprint = partial(training_fingerprint, params, key, inputs)
    return Learner(
        _prepare(model, device, params),
        spec,
        train,
        valid,
        compute,
        fingerprint,
        frozen,
        seed=params.seed,
    )


def rebuild_model(spec: ModelSpec, state: dict[str, torch.Tensor], source: str) -> nn.Sequential:
    """The model a spec describes, with its weights (nothing is downloaded); `source` starts
    every error line (`key: path`)."""
    spec.check_weights(state, source)
    try:
        model = model_from_state(spec.arch, len(spec.classes), state, source)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise PetsError(
            f"{source}: the weights do not fit {spec.arch} with {len(spec.classes)} classes "
            f"({first[:300]})"
        ) from None
    return model


def read_checkpoint(checkpoint: Path, key: str) -> tuple[ModelRecord, dict[str, torch.Tensor]]:
    """A training checkpoint's record (validated: one line naming the file and field when it
    is wrong) and its state_dict."""
    record, state, _ = _read_training_checkpoint(checkpoint, key)
    return record, state


def _read_training_checkpoint(
    checkpoint: Path, key: str
) -> tuple[ModelRecord, dict[str, torch.Tensor], Momentum]:
    saved = load_checkpoint(checkpoint, key)
    header = {k: v for k, v in saved.items() if k not in ("model", "format", "momentum")}
    state = saved.get("model")
    if not isinstance(state, dict):
        raise PetsError(f"{key}: {checkpoint}: model: must be a state_dict")
    momentum = saved.get("momentum")  # absent from checkpoints written before it was kept
    if momentum is not None and not (isinstance(momentum, float) and 0 <= momentum < 1):
        raise PetsError(f"{key}: {checkpoint}: momentum: must be a number in [0, 1)")
    return ModelRecord.parse(header, f"{key}: {checkpoint}"), state, Momentum(momentum)


def load_trained_model(checkpoint: Path, key: str) -> tuple[nn.Sequential, ModelRecord]:
    """A training checkpoint's model in eval mode on the CPU, and its record (arch, classes,
    size, normalisation, ...)."""
    record, state = read_checkpoint(checkpoint, key)
    return rebuild_model(record, state, f"{key}: {checkpoint}").eval(), record


def load_learner(
    params: Params,
    key: str,
    checkpoint: Path,
    *,
    bs: int,
    split: Path,
    classes: Path,
    cache: Path,
    train: bool = True,
) -> Learner:
    """The model saved at `checkpoint`, fed at the size it was trained at; with `train=False`
    only the validation loader is built (inference)."""
    record, state, momentum = _read_training_checkpoint(checkpoint, key)
    # What the model is; the learning rates of earlier fits are not carried into this one.
    spec = record.spec
    compute = start_compute(params, key)
    device = compute.device
    train_loader, valid, class_names = _loaders(
        params,
        key,
        cache,
        split,
        classes,
        spec.size,
        bs,
        spec.mean,
        spec.std,
        device,
        train_too=train,
    )
    if list(spec.classes) != class_names:
        raise PetsError(
            f"{key}: {checkpoint} was trained on {len(spec.classes)} classes that differ from "
            f"the {len(class_names)} in {classes}; rerun the stage that made it"
        )
    if spec.presize != valid.cache.size:  # fed from this cache from now on
        spec = spec.replace(presize=valid.cache.size)
    model = rebuild_model(spec, state, f"{key}: {checkpoint}")
    # Dropout masks of a sweep that runs without `fit_one_cycle` (lr_find): this stage's own.
    torch.manual_seed(stream_seed(params.seed, key, "dropout", distributed.rank()))
    fingerprint = partial(
        training_fingerprint, params, key, [checkpoint, split, classes, cache / "index.csv"]
    )
    return Learner(
        _prepare(model, device, params),
        spec,
        train_loader,
        valid,
        compute,
        fingerprint,
        record.frozen,
        seed=params.seed,
        momentum=momentum,
    )


def unfreeze_learner(learner: Learner) -> None:
    """The lesson's `learn.unfreeze()`."""
    unfreeze(learner.model)
    learner.frozen = False


def write_outputs(
    learner: Learner,
    history: list[EpochRow],
    *,
    model_path: Path,
    metrics_path: Path,
    history_path: Path,
    info_path: Path,
    tracker: Tracker,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Save the checkpoint, `metrics.json` (the kept epoch's numbers: the last, or with `keep:
    best` the best, as `learner.best` says; no timings, so equal runs give equal files), the
    epoch table as CSV (with `keep: best`, a `kept` column marks the kept epoch) and what the
    model is (`model.json`: the checkpoint's `ModelRecord`: spec, frozen, learning rates per
    fit, batch size, epochs), then forget the per-epoch resume states; returns the metrics."""
    if not distributed.is_main():  # one set of outputs, from process 0
        return {}
    best = learner.best
    kept = next(row for row in history if row.epoch == (best.epoch if best else history[-1].epoch))
    metrics = {
        "error_rate": kept.error_rate,
        "accuracy": 1 - kept.error_rate,
        "valid_loss": kept.valid_loss,
        "train_loss": kept.train_loss,
        "epochs": len(history),
        # Only with keep: best, so that the lesson's default writes the files it always wrote.
        **({"kept_epoch": kept.epoch} if best is not None else {}),
        **(extra or {}),
    }
    if best is not None:
        print(
            f"keep: best: epoch {kept.epoch} kept (of 0-{len(history) - 1}), the lowest "
            f"{best.monitor} ({getattr(kept, best.monitor):.6f}): the model and its metrics "
            "are that epoch's",
            flush=True,
        )
    table = pd.DataFrame([row.__dict__ for row in history])
    if best is not None:
        table["kept"] = table["epoch"] == kept.epoch
    write_csv(history_path, table)
    record = learner.record(len(history))
    save_checkpoint(model_path, learner.model, record.to_dict(), learner.momentum.value)
    write_json(info_path, record.to_dict())
    write_json(metrics_path, metrics)
    _clear_resume(model_path)
    seconds = float(table["time"].sum())
    images = len(learner.train) * learner.train.bs * len(history) * distributed.size()
    tracker.log_metrics(
        {
            "final_error_rate": kept.error_rate,
            "final_valid_loss": kept.valid_loss,
            "kept_epoch": kept.epoch,
            "train_seconds": seconds,
            "train_images_per_s": images / max(seconds, 1e-9),
        }
    )
    tracker.log_artifact(history_path)
    tracker.log_artifact(info_path)
    return metrics
