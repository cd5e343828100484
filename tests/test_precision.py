"""`precision`: what `auto` picks on each kind of GPU (capabilities faked), and the fp16 path's
gradient scaler, run for real on the CPU (torch's GradScaler and fp16 autocast both work there)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pets.compute import Compute, pick_compute
from pets.config import parse_params
from pets.errors import PetsError
from pets.lr_find import sweep
from pets.train import fit_one_cycle
from tests import tinyfit

CPU = torch.device("cpu")


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch):
    """Fake a CUDA GPU with a given name and compute capability (nothing runs on it)."""

    def fake(name: str, capability: tuple[int, int]) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        # What torch says on a T4 (it counts emulation): the choice must not listen to it.
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)

    return fake


@pytest.mark.parametrize(
    ("name", "capability", "chosen"),
    [
        ("NVIDIA H200", (9, 0), "bf16"),
        ("NVIDIA A100-SXM4-40GB", (8, 0), "bf16"),
        ("NVIDIA GeForce RTX 3090", (8, 6), "bf16"),
        ("Tesla T4", (7, 5), "fp16"),
        ("Tesla V100-SXM2-16GB", (7, 0), "fp16"),
        ("Tesla P100-PCIE-16GB", (6, 0), "fp32"),
        ("Tesla K80", (3, 7), "fp32"),
    ],
)
def test_auto_follows_the_gpus_native_precision(gpu, name, capability, chosen) -> None:
    gpu(name, capability)
    compute = pick_compute("auto", "auto")
    assert compute.device.type == "cuda" and compute.precision == chosen
    assert f"{name} has compute capability {capability[0]}.{capability[1]}" in compute.why
    assert compute.bf16 == (chosen == "bf16")
    assert compute.grad_scaler().is_enabled() == (chosen == "fp16")  # fastai's to_fp16
    assert compute.tags() == {"precision": chosen, "precision.why": compute.why}


def test_asked_for_precision_is_kept_and_emulated_bf16_said(gpu) -> None:
    gpu("Tesla T4", (7, 5))
    emulated = pick_compute("auto", "bf16")
    assert emulated.precision == "bf16" and "Tesla T4 has no native bf16" in emulated.why
    assert pick_compute("cuda", "fp32").precision == "fp32"
    assert pick_compute("auto", "fp16").describe() == (
        "precision: fp16 autocast with a gradient scaler (asked for)"
    )
    assert pick_compute("cpu", "auto").precision == "fp32"  # the CPU, whatever the GPU


def test_the_cpu_runs_fp32_unless_asked() -> None:
    compute = pick_compute("cpu", "auto")
    assert compute == Compute(CPU, "fp32", "auto on the CPU: reproducible to the last digit")
    assert compute.describe() == "precision: fp32 (auto on the CPU: reproducible to the last digit)"
    assert not compute.grad_scaler().is_enabled()
    assert pick_compute("cpu", "bf16").precision == "bf16"
    slow = pick_compute("cpu", "fp16")
    assert slow.precision == "fp16" and "slower" in slow.why
    with pytest.raises(PetsError, match="precision: 'fp8' is none of"):
        pick_compute("cpu", "fp8")


def test_params_take_fp16_and_refuse_others() -> None:
    assert parse_params({"precision": "fp16"}).precision == "fp16"
    with pytest.raises(PetsError, match="params.yaml: precision: input should be 'auto', 'bf16'"):
        parse_params({"precision": "fp8"})


def test_fp16_autocast_runs_in_fp16_on_the_cpu() -> None:
    layer = torch.nn.Linear(4, 3)
    with Compute(CPU, "fp16").autocast():
        assert layer(torch.randn(2, 4)).dtype == torch.float16
    with Compute(CPU, "fp32").autocast():
        assert layer(torch.randn(2, 4)).dtype == torch.float32


def _step(compute: Compute, poison: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scaler = compute.grad_scaler()
    points, targets = tinyfit.blobs(12, seed=0)
    with compute.autocast():
        loss = F.cross_entropy(model(points), targets)
    scaler.scale(loss).backward()
    if poison:  # what an fp16 overflow leaves in a gradient
        model.weight.grad[0, 0] = math.inf
    return model, optimizer, scaler


def test_an_overflowing_gradient_skips_the_step_and_lowers_the_scale() -> None:
    compute = Compute(CPU, "fp16")
    model, optimizer, scaler = _step(compute, poison=True)
    before = [p.detach().clone() for p in model.parameters()]
    start = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert not optimizer.state  # AdamW never stepped: no moments, no step count
    assert scaler.get_scale() == start * 0.5  # backoff, as fastai's default
    # A finite gradient steps (unscaled first: the step is the one fp32 would take).
    model, optimizer, scaler = _step(compute, poison=False)
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(optimizer)
    scaler.update()
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert scaler.get_scale() == start and scaler.state_dict()["_growth_tracker"] == 1


def test_training_in_fp16_with_the_scaler_learns() -> None:
    model = tinyfit.model()
    train, valid = tinyfit.loaders()
    scalers = []
    rows = fit_one_cycle(
        model,
        tinyfit.SPLIT,
        train,
        valid,
        4,
        1e-2,
        0.01,
        Compute(CPU, "fp16"),
        checkpoint=lambda parts: scalers.append(parts["scaler"].state_dict()),
    )
    losses = [row.train_loss for row in rows]
    assert all(math.isfinite(x) for x in losses) and losses == sorted(losses, reverse=True)
    assert rows[-1].valid_loss < rows[0].valid_loss and rows[-1].error_rate < 0.1
    # The steps went through a live scaler: it counted them (a skipped one resets the count).
    assert scalers[-1]["scale"] > 0 and scalers[-1]["_growth_tracker"] > 0
    assert len(scalers) == 4 and scalers[-1]["_growth_tracker"] <= len(train) * 4


def test_lr_find_sweeps_through_the_scaler(monkeypatch: pytest.MonkeyPatch) -> None:
    made = []
    real = Compute.grad_scaler

    def spied(compute: Compute) -> torch.amp.GradScaler:
        made.append(real(compute))
        return made[-1]

    monkeypatch.setattr(Compute, "grad_scaler", spied)
    model = tinyfit.model()
    train, _ = tinyfit.loaders()
    curve = sweep(
        model,
        tinyfit.SPLIT,
        train,
        Compute(CPU, "fp16"),
        start_lr=1e-5,
        end_lr=10.0,
        num_it=30,
        stop_div=True,
    )
    assert 5 < len(curve) <= 30 and curve["loss"].iloc[:5].map(math.isfinite).all()
    assert curve["smoothed_loss"].min() < curve["smoothed_loss"].iloc[0]  # it learned
    (scaler,) = made
    # The largest learning rates overflow fp16's gradients: the sweep's scaler backed off.
    assert scaler.is_enabled() and scaler.get_scale() < 2.0**16
