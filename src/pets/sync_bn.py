"""fastai's `sync_bn` for data-parallel training: every BatchNorm normalises over the whole batch
of all the processes, not each process's share.

Without it each process's BatchNorm layers see bs photos instead of processes x bs: train-mode
statistics are noisier (at 64 px efficientnet-lite0's head normalises over 4 rows at bs 4), and
two processes at bs 4 train a worse model than one at bs 8. On CUDA the layers become
`nn.SyncBatchNorm` (timm's `SyncBatchNormAct` for its norm + activation layers); that refuses CPU
tensors, so on the CPU (gloo) they become `CrossProcessBatchNorm`, which all-reduces per-channel
sums through autograd. Either keeps the layer's parameters and buffers, the same tensors: the
optimizer sees no difference and the state_dict keys are BatchNorm's."""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from pets.errors import PetsError


class _SummedAcrossProcesses(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the gradients' sum over processes: the sum feeds every
    process's loss, and DDP later averages the parameters' gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _SummedAcrossProcesses.apply(grad)


@torch.compiler.disable  # a collective: runs eagerly between compiled graphs
def summed(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over every process, differentiably."""
    return _SummedAcrossProcesses.apply(tensor)


class CrossProcessBatchNorm(_BatchNorm):
    """BatchNorm1d/2d/3d whose train-mode statistics are those of every process's batch together
    (mean and biased variance normalise, the running variance is unbiased over the whole count,
    as BatchNorm's). In eval mode, or in one process, it is BatchNorm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        synced = self.training and dist.is_available() and dist.is_initialized()
        if not synced or dist.get_world_size() == 1:
            return super().forward(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        # One all-reduce of the sums (float64, so that E[x^2] - E[x]^2 loses nothing that
        # matters); each layer then costs one collective forward and one backward.
        local = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64, device=x.device)
        sums = [x.sum(dims, dtype=torch.float64), x.square().sum(dims, dtype=torch.float64)]
        totals = summed(torch.cat([*sums, local]))
        channels, count = x.shape[1], totals[-1].detach()  # a tensor: no graph break
        mean = totals[:channels] / count
        var = (totals[channels:-1] / count - mean.square()).clamp_min(0)
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.weight is not None:
            scale, shift = scale * self.weight, shift * self.weight + self.bias
        y = torch.addcmul(shift.to(x.dtype).view(shape), x, scale.to(x.dtype).view(shape))
        if self.track_running_stats:
            with torch.no_grad():  # in place: the buffers are shared with the layer this replaced
                unbiased = var * (count / (count - 1).clamp_min(1))
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return y.to(input.dtype)


class CrossProcessBatchNormAct(CrossProcessBatchNorm):
    """timm's BatchNormAct2d (BatchNorm, then its dropout and activation) synchronised the same
    way; `drop` and `act` are the original layer's modules."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(input)))


def _kinds(cuda: bool) -> dict[type, type]:
    """Each BatchNorm class this converts, and its synchronised class."""
    plain = nn.SyncBatchNorm if cuda else CrossProcessBatchNorm
    kinds: dict[type, type] = {nn.BatchNorm1d: plain, nn.BatchNorm2d: plain, nn.BatchNorm3d: plain}
    if "timm" in sys.modules:  # a timm model is loaded: its norm + activation layers too
        from timm.layers import BatchNormAct2d, SyncBatchNormAct

        kinds[BatchNormAct2d] = SyncBatchNormAct if cuda else CrossProcessBatchNormAct
    return kinds


def _replacement(layer: _BatchNorm, kind: type) -> _BatchNorm:
    """A `kind` layer that holds `layer`'s parameters and buffers themselves (and its dropout
    and activation, for timm's layers)."""
    synced = kind(
        layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats
    )
    synced.weight, synced.bias = layer.weight, layer.bias
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        setattr(synced, name, getattr(layer, name))
    for name, child in layer.named_children():  # BatchNormAct2d's drop and act
        synced.add_module(name, child)
    synced.train(layer.training)
    return synced


def convert(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with every BatchNorm synchronised across processes (`nn.SyncBatchNorm` on CUDA,
    `CrossProcessBatchNorm` elsewhere), in place: the layers keep their tensors. A BatchNorm
    class it does not know raises `PetsError` (its forward may do more than normalise)."""
    kinds = _kinds(device.type == "cuda")
    synced = (nn.SyncBatchNorm, CrossProcessBatchNorm)
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, _BatchNorm) or isinstance(child, synced):
                continue
            kind = kinds.get(type(child))
            if kind is None:
                where = f"{parent_name}.{name}" if parent_name else name
                raise PetsError(
                    f"launch.sync_bn: cannot synchronise {type(child).__name__} layer {where} "
                    "across processes; set launch.sync_bn: false"
                )
            setattr(parent, name, _replacement(child, kind))
    return model
