"""BatchNorm across processes (`launch.sync_bn`): two gloo processes, each with a part of a
batch, compute what one BatchNorm computes on the whole batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pets.errors import PetsError
from pets.sync_bn import CrossProcessBatchNorm, CrossProcessBatchNormAct, convert

SHARES = (3, 5)  # unequal parts: the count is all-reduced too
CPU = torch.device("cpu")


def _layers() -> dict[str, nn.Module]:
    """BatchNorm1d, BatchNorm2d (fed channels_last, as training feeds it), with trained-looking
    affine parameters and running statistics, and momentum None (cumulative averages)."""
    torch.manual_seed(0)
    layers = {"1d": nn.BatchNorm1d(6), "2d": nn.BatchNorm2d(4), "cumulative": nn.BatchNorm1d(6)}
    layers["cumulative"].momentum = None
    for layer in layers.values():
        with torch.no_grad():
            layer.weight.uniform_(0.5, 1.5)
            layer.bias.uniform_(-1, 1)
            layer.running_mean.uniform_(-1, 1)
            layer.running_var.uniform_(0.5, 2)
    return layers


def _batches(kind: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two steps' (input, upstream gradient), offset and scaled like real activations."""
    generator = torch.Generator().manual_seed(1)
    shape = (sum(SHARES), 6) if kind != "2d" else (sum(SHARES), 4, 3, 5)
    steps = []
    for _ in range(2):
        x = 3 + 2 * torch.randn(shape, generator=generator)
        if kind == "2d":
            x = x.contiguous(memory_format=torch.channels_last)
        steps.append((x, torch.randn(shape, generator=generator)))
    return steps


def _share(tensor: torch.Tensor, rank: int) -> torch.Tensor:
    start = sum(SHARES[:rank])
    return tensor[start : start + SHARES[rank]]


def _run(layer: nn.Module, steps: list, rank: int | None) -> dict[str, torch.Tensor]:
    """Outputs, input and parameter gradients of each step, then the buffers; `rank` None: the
    whole batch, else that process's share."""
    found: dict[str, torch.Tensor] = {}
    layer.train()
    for i, (x, upstream) in enumerate(steps):
        if rank is not None:
            x, upstream = _share(x, rank), _share(upstream, rank)
        x = x.clone().requires_grad_(True)
        layer.zero_grad()
        y = layer(x)
        (y * upstream).sum().backward()
        found |= {f"y{i}": y.detach(), f"dx{i}": x.grad, f"dw{i}": layer.weight.grad.clone()}
        found[f"db{i}"] = layer.bias.grad.clone()
    layer.eval()
    found["eval"] = layer(steps[0][0] if rank is None else _share(steps[0][0], rank)).detach()
    return found | {name: buffer.clone() for name, buffer in layer.named_buffers()}


def _worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        results = {}
        for kind, layer in _layers().items():
            synced = convert(nn.Sequential(layer), CPU)[0]
            found = _run(synced, _batches(kind), rank)
            for name in [n for n in found if n.startswith(("dw", "db"))]:
                dist.all_reduce(found[name])  # what DDP does with them (it averages)
            results[kind] = found | {"type": type(synced).__name__}
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_normalise_like_one_batchnorm_on_the_whole_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for kind, layer in _layers().items():
        whole = _run(layer, _batches(kind), None)
        for rank, results in enumerate(ranks):
            found = results[kind]
            assert found.pop("type") == "CrossProcessBatchNorm"
            assert found.keys() == whole.keys()
            for name, expected in whole.items():
                if name.startswith(("y", "dx", "eval")):
                    expected = _share(expected, rank)
                torch.testing.assert_close(
                    found[name],
                    expected,
                    rtol=1e-5,
                    atol=1e-5,
                    msg=lambda why, at=f"{kind} {name}": f"{at}: {why}",
                )
            # Something did change: the second step's statistics reached the buffers.
            assert not torch.equal(found["running_mean"], _layers()[kind].running_mean)


def test_one_process_and_eval_mode_are_plain_batchnorm() -> None:
    layer = _layers()["2d"]
    synced = convert(nn.Sequential(_layers()["2d"]), CPU)[0]
    x = _batches("2d")[0][0]
    for mode in (True, False):  # no process group here: BatchNorm's own forward
        torch.testing.assert_close(synced.train(mode)(x), layer.train(mode)(x), rtol=0, atol=0)
    torch.testing.assert_close(synced.running_var, layer.running_var, rtol=0, atol=0)


def test_convert_keeps_the_tensors_and_the_state_dict_keys() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(4)))
    model[1].weight.requires_grad_(False)  # a frozen layer stays frozen
    before = dict(model.state_dict(keep_vars=True))
    parameters = [id(p) for p in model.parameters()]
    convert(model, CPU)
    assert [type(m).__name__ for m in (model[1], model[2][0])] == ["CrossProcessBatchNorm"] * 2
    after = model.state_dict(keep_vars=True)
    assert list(after) == list(before)  # checkpoints load into plain BatchNorm layers
    assert all(after[name] is tensor for name, tensor in before.items())
    assert [id(p) for p in model.parameters()] == parameters  # the optimizer's, still
    assert not model[1].weight.requires_grad
    fresh = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(4)))
    fresh.load_state_dict(model.state_dict())


def test_timm_norm_act_layers_keep_their_activation() -> None:
    timm = pytest.importorskip("timm")
    layer = timm.layers.BatchNormAct2d(4, act_layer=nn.ReLU6)
    model = convert(nn.Sequential(layer), CPU)
    assert isinstance(model[0], CrossProcessBatchNormAct)
    x = 10 * _batches("2d")[0][0]
    torch.testing.assert_close(model.train()(x), layer.train()(x), rtol=0, atol=0)
    assert model(x).max() <= 6  # ReLU6 came along


def test_an_unknown_batchnorm_kind_is_refused_naming_the_layer() -> None:
    class Custom(nn.BatchNorm2d):
        pass

    with pytest.raises(PetsError, match=r"Custom layer 0.1 .*launch.sync_bn: false"):
        convert(nn.Sequential(nn.Sequential(nn.Identity(), Custom(3))), CPU)
    assert isinstance(CrossProcessBatchNorm(3), nn.modules.batchnorm._BatchNorm)  # a norm layer
