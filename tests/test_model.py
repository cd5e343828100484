"""The lesson's create_cnn: head layout, layer groups, freezing, loading weights."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from pets.config import TORCHVISION_ARCHS
from pets.errors import PetsError
from pets.model import (
    AdaptiveConcatPool2d,
    create_body,
    create_cnn,
    create_head,
    freeze,
    layer_groups,
    model_from_state,
    unfreeze,
)


def test_head_is_the_lessons() -> None:
    head = create_head(512, 37)
    kinds = [type(m) for m in head]
    assert kinds == [
        AdaptiveConcatPool2d,
        nn.Flatten,
        nn.BatchNorm1d,
        nn.Dropout,
        nn.Linear,
        nn.ReLU,
        nn.BatchNorm1d,
        nn.Dropout,
        nn.Linear,
    ]
    assert head[2].num_features == 1024 and head[3].p == 0.25 and head[7].p == 0.5
    assert (head[4].in_features, head[4].out_features) == (1024, 512) and head[4].bias is None
    assert (head[8].in_features, head[8].out_features) == (512, 37) and head[8].bias is None
    x = torch.randn(2, 512, 7, 7)
    pooled = AdaptiveConcatPool2d()(x)
    assert torch.equal(pooled[:, :512, 0, 0], x.amax(dim=(2, 3)))  # max first, as fastai
    assert torch.allclose(pooled[:, 512:, 0, 0], x.mean(dim=(2, 3)))
    assert head.eval()(x).shape == (2, 37)


def test_resnet34_groups_and_freeze() -> None:
    body = create_body("resnet34", "none")
    assert body.features == 512 and body.split == "6"
    model = create_cnn(body, 37)
    first, second, head = layer_groups(model, body.split)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)].split(".")[1] for p in first} == {"0", "1", "4", "5"}  # conv1 bn1 l1 l2
    assert {names[id(p)].split(".")[1] for p in second} == {"6", "7"}  # layer3 layer4
    assert {names[id(p)].split(".")[0] for p in head} == {"1"}
    freeze(model, body.split)
    for module in model[0].modules():
        for parameter in module.parameters(recurse=False):
            assert parameter.requires_grad == isinstance(module, nn.BatchNorm2d)
    assert all(p.requires_grad for p in model[1].parameters())
    unfreeze(model)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    "arch",
    [
        "resnet50",
        "densenet121",
        "efficientnet_b0",
        "convnext_tiny",
        "mobilenet_v3_large",
        "timm:resnet18",
    ],
)
def test_other_architectures_split_at_stride_16(arch: str) -> None:
    body = create_body(arch, "none")
    model = create_cnn(body, 3)
    groups = layer_groups(model, body.split)
    assert all(groups) and sum(map(len, groups)) == len(list(model.parameters()))
    assert model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 3)


def test_every_listed_arch_is_known_to_torchvision() -> None:
    available = set(torchvision.models.list_models(module=torchvision.models))
    assert set(TORCHVISION_ARCHS) <= available


def test_unknown_architectures() -> None:
    with pytest.raises(
        PetsError,
        match="train_frozen.arch: unknown architecture 'resnet35'; supported: resnet18, resnet34",
    ):
        create_body("resnet35", "none", "train_frozen.weights")
    with pytest.raises(PetsError, match="timm has no model 'nonsense'"):
        create_body("timm:nonsense", "none")
    with pytest.raises(PetsError, match="is not a CNN"):
        create_body("timm:vit_tiny_patch16_224", "none")


def test_state_dict_files(tmp_path: Path) -> None:
    reference = torchvision.models.resnet18(weights=None)
    state = reference.state_dict()
    state["fc.weight"] = torch.zeros(10, 512)  # another classifier: ignored
    state["fc.bias"] = torch.zeros(10)
    torch.save(state, tmp_path / "good.pth")
    body = create_body("resnet18", str(tmp_path / "good.pth"))
    assert torch.equal(body.module[0].weight, reference.conv1.weight)
    assert body.weights == str(tmp_path / "good.pth")

    missing = {k: v for k, v in state.items() if k != "layer1.0.conv1.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(PetsError, match="has no key 'layer1.0.conv1.weight'"):
        create_body("resnet18", str(tmp_path / "missing.pth"), "train_frozen.weights")
    wrong = dict(state, **{"conv1.weight": torch.zeros(64, 3, 3, 3)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(PetsError, match=r"key 'conv1.weight' has shape \(64, 3, 3, 3\), the model"):
        create_body("resnet18", str(tmp_path / "wrong.pth"))
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(PetsError, match="has key 'layer1.2.bn1.bias' that the model does not"):
        create_body("resnet18", str(tmp_path / "r34.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PetsError, match="cannot load .*junk.pth as a state_dict"):
        create_body("resnet18", str(tmp_path / "junk.pth"))
    with pytest.raises(PetsError, match="not found"):
        create_body("resnet18", str(tmp_path / "absent.pth"))


def test_pickled_code_in_a_weights_file_is_refused(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"conv1.weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(PetsError, match="cannot load"):
        create_body("resnet18", str(tmp_path / "evil.pth"))


def test_imagenet_offline_says_where_to_put_the_file(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PetsError) as error:
        create_body("resnet34", "imagenet", "train_frozen.weights")
    message = str(error.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet34-b627a593.pth") in message
    assert "https://download.pytorch.org/models/resnet34-b627a593.pth" in message
    assert "train_frozen.weights to none" in message


def test_state_dicts_without_batch_norm_counters_load_as_torch_loads_them(tmp_path: Path) -> None:
    # Older torch, TF/Keras conversions and many published checkpoints have no
    # num_batches_tracked buffers; torch's strict load accepts them, and so must `weights:`.
    reference = torchvision.models.resnet18(weights=None)
    state = {k: v for k, v in reference.state_dict().items() if "num_batches_tracked" not in k}
    torchvision.models.resnet18(weights=None).load_state_dict(state, strict=True)  # torch: fine
    torch.save(state, tmp_path / "converted.pth")
    body = create_body("resnet18", str(tmp_path / "converted.pth"), "train_frozen.weights")
    assert torch.equal(body.module[1].running_mean, reference.bn1.running_mean)
    # Still refused: a missing weight, a missing running statistic, a wrong shape.
    for dropped in ("layer2.0.bn1.weight", "layer2.0.bn1.running_var"):
        torch.save({k: v for k, v in state.items() if k != dropped}, tmp_path / "less.pth")
        with pytest.raises(PetsError, match=f"has no key '{dropped}' \\(first of 1 missing\\)"):
            create_body("resnet18", str(tmp_path / "less.pth"), "train_frozen.weights")
    torch.save(dict(state, **{"bn1.weight": torch.ones(3)}), tmp_path / "shape.pth")
    with pytest.raises(PetsError, match=r"key 'bn1.weight' has shape \(3,\), the model needs"):
        create_body("resnet18", str(tmp_path / "shape.pth"))


def test_weights_files_that_are_not_state_dicts(tmp_path: Path) -> None:
    import os

    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save({"epoch": 3, **state}, tmp_path / "training.pth")
    with pytest.raises(PetsError, match="is not a state_dict \\(key 'epoch' holds int"):
        create_body("resnet18", str(tmp_path / "training.pth"), "train_frozen.weights")
    torch.save({"state_dict": state}, tmp_path / "wrapped.pth")  # Lightning-style: unwrapped
    create_body("resnet18", str(tmp_path / "wrapped.pth"))
    os.mkfifo(tmp_path / "fifo.pth")
    with pytest.raises(PetsError, match="is a FIFO \\(named pipe\\), not a state_dict file"):
        create_body("resnet18", str(tmp_path / "fifo.pth"))


@pytest.mark.parametrize("arch", ["resnet18", "timm:tf_efficientnet_lite0"])
def test_a_model_from_saved_weights_is_the_model_they_were_copied_into(arch: str) -> None:
    torch.manual_seed(0)
    saved = create_cnn(create_body(arch, "none"), 3)
    # channels_last, as a training stage saves a conv body: the rebuilt copy is contiguous
    saved = saved.to(memory_format=torch.channels_last).eval()
    state = saved.state_dict()
    copied = create_cnn(create_body(arch, "none"), 3)
    copied.load_state_dict(state)
    rebuilt = model_from_state(arch, 3, state).eval()
    tensors = [*rebuilt.parameters(), *rebuilt.buffers()]
    assert not any(t.is_meta for t in tensors)
    copied_tensors = [*copied.parameters(), *copied.buffers()]
    assert [t.stride() for t in tensors] == [t.stride() for t in copied_tensors]
    assert all(p.requires_grad and isinstance(p, nn.Parameter) for p in rebuilt.parameters())
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(images), copied.eval()(images))
    with pytest.raises(RuntimeError, match="size mismatch"):
        model_from_state(arch, 5, state)
