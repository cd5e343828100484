"""Training: the lesson's `fit_one_cycle`, one epoch, evaluation, and checkpoints.

The schedule is `torch.optim.lr_scheduler.OneCycleLR` in fastai's shape (warm-up over 25% of the
steps from lr/25, cosine down to lr/1e5, beta1 0.95 -> 0.85 -> 0.95), stepped every batch, on
AdamW (betas 0.9/0.99, eps 1e-5, decoupled weight decay, none on norms and biases). Tensors are
channels_last everywhere; on CUDA the forward pass runs in bf16 autocast, or fp16 autocast with
a gradient scaler on GPUs without native bf16 (`precision`, pets.compute). With `keep: best` a
fit keeps the weights of its best epoch (fastai's `SaveModelCallback`)."""

from __future__ import annotations

import contextlib
import math
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from pets import distributed
from pets.compute import Compute
from pets.errors import PetsError
from pets.files import atomic_path
from pets.lr_find import spread_lr
from pets.model import layer_groups, norm_parameters

CHECKPOINT_FORMAT = "pets.checkpoint/1"
# What torch's schedulers say when an fp16 step was skipped (gradients overflowed).
SKIPPED_STEP_WARNING = "Detected call of `lr_scheduler.step()` before `optimizer.step()`"
SMOOTHING = 0.98  # fastai's smoothed training loss: a debiased exponential moving average


def param_groups(model: nn.Sequential, split: str, lrs: list[float], wd: float) -> list[dict]:
    """AdamW parameter groups: each layer group twice, with weight decay and without it (norm
    layers and biases); frozen parameters are left out."""
    norms = norm_parameters(model)
    groups = []
    for lr, parameters in zip(lrs, layer_groups(model, split), strict=True):
        trainable = [p for p in parameters if p.requires_grad]
        plain = [p for p in trainable if id(p) in norms or p.ndim <= 1]
        decayed = [p for p in trainable if not (id(p) in norms or p.ndim <= 1)]
        groups += [
            {"params": ps, "lr": lr, "weight_decay": w}
            for ps, w in ((decayed, wd), (plain, 0.0))
            if ps
        ]
    return groups


def one_cycle(
    optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.OneCycleLR:
    """fastai's one-cycle schedule for the optimizer's groups (each group's `lr` is its peak)."""
    if total_steps < 3:
        raise PetsError(
            f"{total_steps} batches in all are too few for a one-cycle schedule; "
            "lower bs or train more epochs"
        )
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in optimizer.param_groups],
        total_steps=total_steps,
        # The warm-up needs at least one whole step: only very short runs (tests) lengthen it.
        pct_start=max(0.25, 1.5 / total_steps),
        anneal_strategy="cos",
        cycle_momentum=True,
        base_momentum=0.85,
        max_momentum=0.95,
        div_factor=25.0,
        final_div_factor=1e5 / 25.0,
    )


def adamw(groups: list[dict], fused: bool = False, beta1: float = 0.9) -> torch.optim.AdamW:
    """fastai's Adam settings with decoupled weight decay (`fused`: one kernel per step, CUDA;
    `beta1`: the momentum, which a one-cycle schedule then sets every batch)."""
    return torch.optim.AdamW(groups, betas=(beta1, 0.99), eps=1e-5, fused=fused or None)


@dataclass
class Momentum:
    """The momentum (AdamW's beta1) a one-cycle fit ended at. fastai's `unfreeze()` clears its
    optimizer's moment averages but keeps its hyperparameters, so the lesson's `lr_find()`
    sweeps at the momentum stage-1's schedule left (about 0.95), not at Adam's default 0.9;
    fitting resets it (the schedule sets it every batch)."""

    value: float | None = None


@dataclass
class SmoothedLoss:
    """fastai's smoothed training loss (EMA with beta 0.98, debiased)."""

    value: float = 0.0
    count: int = 0

    def update(self, loss: float) -> float:
        """Add one batch's loss and return the smoothed value."""
        self.count += 1
        self.value = SMOOTHING * self.value + (1 - SMOOTHING) * loss
        return self.value / (1 - SMOOTHING**self.count)


def _progress(total: int, description: str) -> tqdm:
    # Shown in a terminal; left out of log files (Snakemake's logs), where it would be noise.
    return tqdm(
        total=total,
        desc=description,
        leave=False,
        file=sys.stderr,
        disable=None if distributed.is_main() else True,
        mininterval=0.5,
        dynamic_ncols=True,
    )


def train_one_epoch(
    model: nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    smoothed: SmoothedLoss,
    compute: Compute,
    description: str = "train",
    scaler: torch.amp.GradScaler | None = None,
) -> float:
    """One pass over the training loader, stepping the schedule every batch; returns the
    smoothed loss at the end (the lesson's train_loss column). `scaler` is the fit's gradient
    scaler (`compute.grad_scaler()`, made here when not given)."""
    model.train()
    scaler = compute.grad_scaler() if scaler is None else scaler
    value = math.nan
    losses = []
    with _progress(len(loader), description) as bar, warnings.catch_warnings():
        # An fp16 step skipped for overflowing gradients leaves OneCycleLR thinking the
        # optimizer never stepped: its warning says nothing here (the schedule goes on).
        warnings.filterwarnings("ignore", re.escape(SKIPPED_STEP_WARNING))
        for images, targets in loader:
            # A new step for compiled CUDA graphs (their outputs are reused by the next replay).
            torch.compiler.cudagraph_mark_step_begin()
            with compute.autocast():
                loss = F.cross_entropy(model(images), targets)
            # nanoGPT's order; in bf16 and fp32 the scaler passes everything through as is.
            scaler.scale(loss).backward()
            scaler.step(optimizer)  # skipped when a gradient is inf or nan (fp16 overflow)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            losses.append(loss.detach())
            bar.update()
    # One transfer at the end instead of a GPU sync every batch; averaged over processes.
    if losses:
        averaged = distributed.reduce_sum(torch.stack(losses).float()) / distributed.size()
        for loss in averaged.cpu().tolist():
            value = smoothed.update(loss)
    if not math.isfinite(value):
        raise PetsError("training diverged (the loss is not finite); lower the learning rate")
    return value


@torch.inference_mode()
def predict(model: nn.Module, loader: Any, compute: Compute) -> torch.Tensor:
    """Logits (float32, on the CPU) for every photo of `loader`, in its order."""
    model.eval()
    outputs = []
    with _progress(len(loader), "valid") as bar:
        for images, _ in loader:
            torch.compiler.cudagraph_mark_step_begin()
            with compute.autocast():
                # A copy: a compiled model's output buffer is overwritten by its next call.
                outputs.append(model(images).float().clone())
            bar.update()
    return torch.cat(outputs).cpu() if outputs else torch.zeros(0)


def evaluate(model: nn.Module, loader: Any, compute: Compute) -> tuple[float, float]:
    """(valid_loss, error_rate) over the validation loader (every process's share, summed)."""
    logits = predict(model, loader, compute)
    targets = loader.targets_in_order()
    totals = torch.tensor(
        [
            F.cross_entropy(logits, targets, reduction="sum").item() if len(targets) else 0.0,
            float((logits.argmax(dim=1) != targets).sum()) if len(targets) else 0.0,
            float(len(targets)),
        ],
        dtype=torch.float64,
        device=compute.device,
    )
    loss, wrong, count = distributed.reduce_sum(totals).tolist()
    return loss / count, wrong / count


def data_parallel(model: nn.Module, compute: Compute) -> nn.Module:
    """`model` in DistributedDataParallel when several processes train (gradients averaged
    across them after each backward); `model` itself otherwise."""
    if distributed.size() == 1:
        return model
    return DistributedDataParallel(
        model, device_ids=[compute.device.index] if compute.device.type == "cuda" else None
    )


def compiled(model: nn.Module, compute: Compute) -> nn.Module:
    """`torch.compile`d model sharing `model`'s parameters: CUDA graphs ("reduce-overhead") on a
    GPU, inductor's C++ kernels on the CPU. It pays only past a break-even number of images
    (benchmarks/input_pipeline.py --compile measures it)."""
    mode = "reduce-overhead" if compute.device.type == "cuda" else None
    return torch.compile(model, mode=mode)


@dataclass
class EpochRow:
    """One row of the lesson's epoch table."""

    epoch: int
    train_loss: float
    valid_loss: float
    error_rate: float
    time: float

    def line(self, first_epoch: int = 0) -> str:
        """The row as fastai prints it, its epoch counted from `first_epoch` (a second fit's
        rows go on from the first's)."""
        minutes, seconds = divmod(round(self.time), 60)
        return (
            f"{first_epoch + self.epoch:<9} {self.train_loss:<11.6f} {self.valid_loss:<11.6f} "
            f"{self.error_rate:<11.6f} {minutes:02d}:{seconds:02d}"
        )


HEADER = f"{'epoch':<9} {'train_loss':<11} {'valid_loss':<11} {'error_rate':<11} time"
BETTER = "  * best so far"  # after a row, with `keep: best` (fastai: "Better model found")


@dataclass
class Best:
    """`keep: best` (fastai's `SaveModelCallback`): the epoch with the lowest `monitor` so far,
    its value and its weights (on the CPU). A tie keeps the earlier epoch, as fastai's
    `np.less` does; a nan never beats a number."""

    monitor: str = "valid_loss"
    epoch: int = -1
    value: float = math.inf
    state: dict[str, torch.Tensor] | None = None

    def better(self, row: EpochRow) -> bool:
        """Whether `row` beats the best so far (the first row always does)."""
        value = getattr(row, self.monitor)
        return self.epoch < 0 or (not math.isnan(value) and value < self.value)

    def observe(self, row: EpochRow, epoch: int, model: nn.Module | None = None) -> bool:
        """Take `row` (numbered `epoch` in the whole training) as the best when it is better,
        with a copy of `model`'s weights; returns whether it was."""
        if not self.better(row):
            return False
        value = getattr(row, self.monitor)
        self.epoch, self.value = epoch, math.inf if math.isnan(value) else value
        if model is not None:
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return True

    def to_dict(self) -> dict[str, Any]:
        """What a resume state keeps of it (plain values and tensors: `weights_only` loads it)."""
        return {
            "monitor": self.monitor,
            "epoch": self.epoch,
            "value": self.value,
            "state": self.state,
        }


def kept_epoch(history: list[EpochRow], keep: str, monitor: str = "valid_loss") -> int:
    """The epoch whose weights and numbers a training keeps: the last, or (`keep: best`) the
    first with the lowest `monitor`."""
    if keep == "last":
        return history[-1].epoch
    best = Best(monitor)
    for row in history:
        best.observe(row, row.epoch)
    return best.epoch


@dataclass
class FitState:
    """Everything a one-cycle fit needs to continue after an interruption."""

    epoch: int = 0
    history: list[EpochRow] = field(default_factory=list)
    smoothed: SmoothedLoss = field(default_factory=SmoothedLoss)
    best: Best | None = None  # with `keep: best`: the best epoch so far, weights included


def fit_one_cycle(
    model: nn.Sequential,
    split: str,
    train_loader: Any,
    valid_loader: Any,
    epochs: int,
    lr: float | list[float],
    wd: float,
    compute: Compute,
    on_epoch: Callable[[EpochRow], None] | None = None,
    compile_model: bool = False,
    resume: Callable[[dict], FitState] | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    best: Best | None = None,
    first_epoch: int = 0,
    momentum: Momentum | None = None,
) -> list[EpochRow]:
    """The lesson's `fit_one_cycle(epochs, lr)`: prints the epoch table as it goes and returns
    it; `compile_model` runs the model through `torch.compile`. `checkpoint` receives the full
    training state after each epoch; `resume` may return a state to continue from (after
    loading it into the model, optimizer, scheduler and gradient scaler). With `best` (`keep:
    best`, possibly carrying an earlier fit's best) the fit updates it after each epoch and ends
    with the best epoch's weights in `model`. The epochs are numbered from `first_epoch` in the
    printed table and in `best` (the returned rows count from 0). `momentum` gets the beta1
    the schedule ended at. Every fit starts with a new optimizer, as each of fastai's does after
    `freeze()` or `unfreeze()` (both clear its state)."""
    lrs = spread_lr(lr)
    optimizer = adamw(param_groups(model, split, lrs, wd), fused=compute.device.type == "cuda")
    scheduler = one_cycle(optimizer, epochs * len(train_loader))
    scaler = compute.grad_scaler()
    parts = {
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "scaler": scaler,
        "train_loader": train_loader,
    }
    carried = Best(**best.to_dict()) if best is not None else None  # before a resume's
    state = resume(parts) if resume else FitState()
    if best is not None:
        if state.best is not None:  # the resumed fit's best so far, this fit's epochs included
            best.__dict__.update(state.best.to_dict())
        state.best = best
    evaluator = compiled(model, compute) if compile_model else model
    # Validation runs outside DDP: its forward broadcasts buffers (a collective), and processes
    # may hold different numbers of validation batches.
    runner = data_parallel(evaluator, compute)
    print(HEADER, flush=True)
    for row in state.history:
        # The marks the rows had when they ran: the best so far as of each.
        marked = carried is not None and carried.observe(row, first_epoch + row.epoch)
        print(row.line(first_epoch), "(resumed)" + (BETTER if marked else ""), flush=True)
        if on_epoch:  # this run's tracker gets the whole table
            on_epoch(row)
    for epoch in range(state.epoch, epochs):
        start = time.perf_counter()
        train_loss = train_one_epoch(
            runner,
            train_loader,
            optimizer,
            scheduler,
            state.smoothed,
            compute,
            f"epoch {epoch}",
            scaler,
        )
        distributed.broadcast_buffers(model)  # every process validates process 0's model
        valid_loss, error_rate = evaluate(evaluator, valid_loader, compute)
        row = EpochRow(epoch, train_loss, valid_loss, error_rate, time.perf_counter() - start)
        state.history.append(row)
        state.epoch = epoch + 1
        marked = state.best is not None and state.best.observe(row, first_epoch + epoch, model)
        if checkpoint:  # saved before the row is shown: a shown row is never lost
            checkpoint({**parts, "state": state})
        print(row.line(first_epoch) + (BETTER if marked else ""), flush=True)
        if on_epoch:
            on_epoch(row)
    if momentum is not None:
        momentum.value = float(optimizer.param_groups[0]["betas"][0])
    if state.best is not None and state.best.state is not None:
        # fastai's SaveModelCallback loads the best model once the fit ends: so does this.
        model.load_state_dict(state.best.state)
    return state.history


RESUME_FORMAT = "pets.resume/2"  # 2: the gradient scaler and the best epoch so far


def save_resume(path: Path, fingerprint: str, parts: dict[str, Any]) -> None:
    """Everything a fit needs to continue exactly after the epoch just finished: weights,
    optimizer, schedule, gradient scaler, the loader's generators, the global RNG (dropout), the
    epoch table, and with `keep: best` the best epoch so far with its weights."""
    state: FitState = parts["state"]
    payload = {
        "format": RESUME_FORMAT,
        "fingerprint": fingerprint,
        "epoch": state.epoch,
        "history": [row.__dict__ for row in state.history],
        "smoothed": [state.smoothed.value, state.smoothed.count],
        "model": parts["model"].state_dict(),
        "optimizer": parts["optimizer"].state_dict(),
        "scheduler": parts["scheduler"].state_dict(),
        "scaler": parts["scaler"].state_dict(),
        "best": state.best.to_dict() if state.best is not None else None,
        "loader": parts["train_loader"].state(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_resume(path: Path, fingerprint: str, parts: dict[str, Any]) -> FitState:
    """The state `save_resume` left for this very fit (same params and inputs), loaded into
    `parts`; a fresh state when there is none, or it belongs to another configuration."""
    if not path.is_file():
        return FitState()
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated file from a kill mid-write: start over
        payload = {}
    if payload.get("format") != RESUME_FORMAT or payload.get("fingerprint") != fingerprint:
        print(
            f"{path}: from another configuration or unreadable; starting from epoch 0", flush=True
        )
        return FitState()
    parts["model"].load_state_dict(payload["model"])
    parts["optimizer"].load_state_dict(payload["optimizer"])
    parts["scheduler"].load_state_dict(payload["scheduler"])
    if payload["scaler"]:  # empty when the scaler is a pass-through (bf16, fp32)
        parts["scaler"].load_state_dict(payload["scaler"])
    parts["train_loader"].load_state(payload["loader"])
    torch.set_rng_state(payload["rng"])
    if payload["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    print(f"resuming after epoch {payload['epoch'] - 1} from {path}", flush=True)
    smoothed = SmoothedLoss(*payload["smoothed"])
    history = [EpochRow(**row) for row in payload["history"]]
    best = Best(**payload["best"]) if payload["best"] is not None else None
    return FitState(payload["epoch"], history, smoothed, best)


def fit_guarded(fit: Callable[[], list[EpochRow]], key: str, bs: int, size: int) -> list[EpochRow]:
    """Run `fit`, turning CUDA out-of-memory into advice on which parameter to lower."""
    try:
        return fit()
    except torch.cuda.OutOfMemoryError:
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else "the GPU"
        raise PetsError(
            f"{key}: CUDA ran out of memory at bs {bs}, size {size} on {name}; lower {key}.bs "
            f"(e.g. {max(1, bs // 2)}) or {key}.size"
        ) from None


def save_checkpoint(
    path: Path, model: nn.Module, info: dict[str, Any], momentum: float | None = None
) -> None:
    """Weights plus what rebuilding the model needs (arch, classes, size, normalisation) and
    the momentum its last fit ended at (`Momentum`), as a plain dict that
    `torch.load(weights_only=True)` reads back."""
    payload = {"format": CHECKPOINT_FORMAT, **info, "model": model.state_dict()}
    if momentum is not None:
        payload["momentum"] = momentum
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, key: str = "checkpoint") -> dict[str, Any]:
    """A checkpoint written by `save_checkpoint`, loaded without unpickling code."""
    if not path.is_file():
        raise PetsError(f"{key}: {path} not found; run the stage that makes it first")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign or unsafe files all land here
        raise PetsError(f"{key}: {path} is not a readable pets checkpoint ({exc})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise PetsError(f"{key}: {path} is not a pets checkpoint")
    return checkpoint


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """Use `count` CPU threads for tensor maths (the rule's `threads`)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, count))
    try:
        yield
    finally:
        torch.set_num_threads(before)
