"""Where and how a stage computes: the device, and the precision of the forward pass.

Its own module so that `train` and `distributed` (which moves a computation onto a process's
GPU) both use it without importing each other.

`precision: auto` follows what the GPU does natively: bf16 autocast from compute capability 8.0
(A100, H100, RTX 30xx and later have bf16 tensor cores); fp16 autocast with a gradient scaler on
7.x (V100, T4, RTX 20xx: fp16 tensor cores only; fastai's `to_fp16`); fp32 on older GPUs and on
the CPU. `torch.cuda.is_bf16_supported()` is no guide: it says True on a T4, where torch emulates
bf16 in fp32 (slower than fp32 itself)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch

from pets.errors import PetsError

Precision = Literal["fp32", "bf16", "fp16"]
NATIVE_BF16 = (8, 0)  # Ampere: bf16 tensor cores
FP16_TENSOR_CORES = (7, 0)  # Volta and Turing: fp16 tensor cores, no bf16
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
SHOWN = {
    "fp32": "fp32",
    "bf16": "bf16 autocast",
    "fp16": "fp16 autocast with a gradient scaler",
}


def pick_device(choice: str) -> torch.device:
    """`auto` is CUDA when present, else the CPU; `cuda` without a GPU is an error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise PetsError("device: cuda was asked for but torch sees no CUDA GPU; use auto or cpu")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


@dataclass(frozen=True)
class Compute:
    """Where and how a stage computes: its device, the forward pass's precision, and why that
    precision was chosen (printed and logged)."""

    device: torch.device
    precision: Precision = "fp32"
    why: str = ""

    @property
    def bf16(self) -> bool:
        """Whether the forward pass runs in bf16 autocast."""
        return self.precision == "bf16"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's precision context (nothing at all in fp32)."""
        if self.precision in DTYPES:
            return torch.autocast(self.device.type, dtype=DTYPES[self.precision])
        return contextlib.nullcontext()

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler for one fit: live in fp16 (whose gradients underflow to zero
        unscaled), a pass-through otherwise (`scale` returns the loss itself, `step` is
        `optimizer.step()`), so bf16 and fp32 training run exactly as without one."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def describe(self) -> str:
        """One line for the log: the precision, and why."""
        return f"precision: {SHOWN[self.precision]}" + (f" ({self.why})" if self.why else "")

    def tags(self) -> dict[str, str]:
        """The choice as MLflow tags."""
        return {"precision": self.precision, "precision.why": self.why}


def gpu_precision(name: str, capability: tuple[int, int]) -> tuple[Precision, str]:
    """`precision: auto` on a GPU called `name` with compute `capability`, and why."""
    where = f"{name} has compute capability {capability[0]}.{capability[1]}"
    if capability >= NATIVE_BF16:
        return "bf16", f"auto: {where}, with native bf16"
    if capability >= FP16_TENSOR_CORES:
        return "fp16", f"auto: {where}, with fp16 tensor cores but no native bf16"
    return "fp32", f"auto: {where}, without fp16 or bf16 tensor cores"


def pick_compute(device: str, precision: str) -> Compute:
    """The device and precision a stage computes with (see the module's docstring for `auto`);
    on the CPU `auto` is fp32, reproducible to the last digit (bf16 there is faster only on CPUs
    with bf16 units, fp16 many times slower)."""
    chosen = pick_device(device)
    asked = "asked for"
    if chosen.type == "cuda":
        name = torch.cuda.get_device_name(chosen)
        major, minor = torch.cuda.get_device_capability(chosen)
        if precision == "auto":
            return Compute(chosen, *gpu_precision(name, (major, minor)))
        if precision == "bf16" and (major, minor) < NATIVE_BF16:
            asked += f"; {name} has no native bf16: torch emulates it, slower than fp16"
        return Compute(chosen, _checked(precision), asked)
    if precision == "auto":
        return Compute(chosen, "fp32", "auto on the CPU: reproducible to the last digit")
    if precision == "fp16":
        asked += "; many times slower than fp32 on a CPU"
    return Compute(chosen, _checked(precision), asked)


def _checked(precision: str) -> Precision:
    if precision not in SHOWN:
        raise PetsError(f"precision: {precision!r} is none of auto, bf16, fp16, fp32")
    return precision  # type: ignore[return-value]
