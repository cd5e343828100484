"""Data-parallel training over several processes (DistributedDataParallel under torchrun): which
process this is, the process group (NCCL on GPUs, gloo on the CPU), sums across processes.

A training stage run with `launch.processes: N` (N > 1) starts itself again under
`torchrun --standalone --nproc_per_node=N`; one started by `torchrun` directly works too. Every
process reads the same seeded order and takes its share of each epoch; `bs` is per process (the
effective batch is N x bs); BatchNorm layers normalise over all N x bs photos
(`launch.sync_bn`, pets.sync_bn); only process 0 writes files, prints and logs to MLflow."""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:  # torch is imported where it is used: stages that never train skip it
    import torch

    from pets.compute import Compute


def rank() -> int:
    """This process's place among all of them (0 when not distributed)."""
    return int(os.environ.get("RANK", 0))


def size() -> int:
    """How many processes train together (1 when not distributed)."""
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    """Whether this process writes files, prints and logs."""
    return rank() == 0


def relaunch(processes: int) -> NoReturn:
    """Run this very command again as `processes` processes under torchrun (replaces this one)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        *sys.argv,
    ]
    os.execv(sys.executable, command)


def check_gpus(processes: int) -> None:
    """One process per GPU: raises `PetsError` naming `launch.processes` when this machine has
    some GPUs but fewer than processes (with none, the processes share the CPU)."""
    import torch

    from pets.errors import PetsError

    gpus = torch.cuda.device_count()
    if 0 < gpus < processes:
        raise PetsError(
            f"launch.processes: {processes} processes need {processes} GPUs, this machine has "
            f"{gpus} (use one process per GPU, or device: cpu)"
        )


def start(compute: Compute) -> Compute:
    """Join the process group when distributed; on CUDA each process takes GPU `LOCAL_RANK`."""
    import torch
    import torch.distributed as dist

    if size() == 1 or (dist.is_available() and dist.is_initialized()):
        return compute
    device = compute.device
    if device.type == "cuda":
        check_gpus(int(os.environ.get("LOCAL_WORLD_SIZE", size())))
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dataclasses.replace(compute, device=device)


def stop() -> None:
    """Leave the process group, if any."""
    # A process that never imported torch.distributed has no group; importing it to ask
    # would cost a stage that does not use torch (report, interpret, ...) 2 s.
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Give every process process 0's buffers (BatchNorm's running statistics)."""
    import torch.distributed as dist

    if size() > 1 and dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over every process (itself when not distributed)."""
    import torch.distributed as dist

    if size() > 1 and dist.is_initialized():
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
