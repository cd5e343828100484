"""Where and how a stage computes: the device, and the precision of the forward pass.

Its own module so that `train` and `distributed` (which moves a computation onto a process's
GPU) both use it without importing each other."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from pets.errors import PetsError


def pick_device(choice: str) -> torch.device:
    """`auto` is CUDA when present, else the CPU; `cuda` without a GPU is an error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise PetsError("device: cuda was asked for but torch sees no CUDA GPU; use auto or cpu")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


@dataclass(frozen=True)
class Compute:
    """Where and how a stage computes: its device, and bf16 autocast or full precision."""

    device: torch.device
    bf16: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's precision context."""
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def pick_compute(device: str, precision: str) -> Compute:
    """`precision: auto` is bf16 on GPUs that support it and fp32 on the CPU (where fp32 is
    reproducible to the last digit; bf16 there is faster only on CPUs with bf16 units)."""
    chosen = pick_device(device)
    if precision == "auto":
        bf16 = chosen.type == "cuda" and torch.cuda.is_bf16_supported()
    else:
        bf16 = precision == "bf16"
    return Compute(chosen, bf16)
