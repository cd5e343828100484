"""The lesson's `create_cnn`: a pretrained body, the lesson's head, three layer groups, freezing.

Architectures are torchvision's classification CNNs with a known split (resnets and their kin,
densenets, efficientnets, convnexts, mobilenet v3) and any timm CNN as `timm:<name>`."""

from __future__ import annotations

import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pets.config import TORCHVISION_ARCHS, shown
from pets.errors import PetsError
from pets.files import not_regular
from pets.transforms import IMAGENET_MEAN, IMAGENET_STD

NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.GroupNorm,
)


# The state_dict prefix of each family's original classifier (ignored when loading weights).
CLASSIFIERS = {
    "resnet": "fc.",
    "resnext": "fc.",
    "wide_resnet": "fc.",
    "densenet": "classifier.",
    "efficientnet": "classifier.",
    "convnext": "classifier.",
    "mobilenet": "classifier.",
}


def _classifier_prefix(arch: str) -> str:
    return next(prefix for family, prefix in CLASSIFIERS.items() if arch.startswith(family))


def _probe(body: nn.Sequential) -> tuple[int, str]:
    """The body's output channels, and the first child whose output is 1/16 of the input size
    or smaller: where the lesson's second layer group starts (resnet: layer3)."""
    x = torch.zeros(1, 3, 64, 64)
    split = ""
    with torch.no_grad():
        for name, child in body.eval().named_children():
            x = child(x)
            if not split and x.shape[-1] <= 64 // 16:
                split = name
    return x.shape[1], split


@dataclass(frozen=True)
class Body:
    """A pretrained feature extractor and what comes with its weights."""

    module: nn.Module
    features: int  # channels of its last feature map (the lesson's nf)
    split: str  # name of the first module of the second layer group
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str  # what initialised it: a weights name, a file, or "none"


def load_body_weights(
    model: nn.Module, state: Any, classifier: tuple[str, ...], source: str, key: str
) -> None:
    """Load `state` (its classifier's keys ignored) into `model`, accepting exactly what
    `load_state_dict(strict=True)` accepts: BatchNorm's `num_batches_tracked` buffers may be
    absent (older torch, converted TF/Keras weights), every weight must be there with its
    shape, and no key may be unknown. The first problem is one line naming the key."""
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise PetsError(f"{key}: {source} is not a state_dict")
    given: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise PetsError(
                f"{key}: {source} is not a state_dict (key {shown(name)} holds "
                f"{type(tensor).__name__}, not a tensor)"
            )
        if not name.startswith(classifier):
            given[name] = tensor
    wanted = model.state_dict()
    for name, tensor in given.items():
        if name in wanted and tuple(tensor.shape) != tuple(wanted[name].shape):
            raise PetsError(
                f"{key}: {source} key {name!r} has shape {tuple(tensor.shape)}, "
                f"the model needs {tuple(wanted[name].shape)}"
            )
    # torch decides what may be missing (BatchNorm fills in num_batches_tracked itself).
    result = model.load_state_dict(given, strict=False)
    missing = [name for name in result.missing_keys if not name.startswith(classifier)]
    if missing:
        raise PetsError(
            f"{key}: {source} has no key {missing[0]!r} (first of {len(missing)} missing)"
        )
    if result.unexpected_keys:
        extra = sorted(result.unexpected_keys)
        raise PetsError(
            f"{key}: {source} has key {extra[0]!r} that the model does not "
            f"({len(extra)} unexpected)"
        )


def load_state_file(path: Path, key: str) -> dict[str, Any]:
    """A state_dict file (.pth/.pt via `torch.load(weights_only=True)`, or .safetensors)."""
    why = not_regular(path)
    if why == "not found":
        raise PetsError(f"{key}: {path} not found (use imagenet, none or a state_dict file)")
    if why:
        raise PetsError(f"{key}: {path} is {why}, not a state_dict file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable or unsafe file: say which and why
        raise PetsError(f"{key}: cannot load {path} as a state_dict ({exc})") from None


def _torchvision_body(arch: str, weights: str, key: str) -> Body:
    import torchvision

    model = torchvision.models.get_model(arch, weights=None)
    mean, std, source = IMAGENET_MEAN, IMAGENET_STD, "none"
    if weights == "imagenet":
        enum = torchvision.models.get_model_weights(arch).DEFAULT
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        try:
            state = enum.get_state_dict(progress=True, check_hash=True)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            raise PetsError(
                f"{key}: imagenet weights for {arch} are not at {cached} and cannot be downloaded "
                f"({getattr(exc, 'reason', exc)}); put {enum.url} there, or set {key} to none or "
                "to a state_dict file"
            ) from None
        model.load_state_dict(state)
        mean, std = tuple(enum.transforms().mean), tuple(enum.transforms().std)
        source = str(enum)
    elif weights != "none":
        path = Path(weights)
        state = load_state_file(path, key)
        load_body_weights(model, state, (_classifier_prefix(arch),), str(path), key)
        source = str(path)
    if hasattr(model, "fc"):  # resnets: every child but the pooling and the classifier
        body = nn.Sequential(*list(model.children())[:-2])
    elif arch.startswith("densenet"):  # torchvision applies this ReLU in forward()
        body = nn.Sequential(*model.features, nn.ReLU(inplace=True))
    else:
        body = model.features
    features, split = _probe(body)
    return Body(body, features, split, mean, std, source)


def _timm_body(name: str, weights: str, key: str) -> Body:
    try:
        import timm
    except ImportError:
        raise PetsError(f"{key}: timm:{name} needs timm: pip install -e '.[timm]'") from None
    if not timm.is_model(name):
        raise PetsError(f"{key}: timm has no model {name!r}")
    try:
        model = timm.create_model(
            name, pretrained=weights == "imagenet", num_classes=0, global_pool=""
        )
    except Exception as exc:  # hub downloads fail in many ways offline
        raise PetsError(
            f"{key}: cannot get imagenet weights for timm:{name} ({exc}); download them into the "
            "Hugging Face cache, or set weights to none or to a state_dict file"
        ) from None
    config = model.pretrained_cfg
    source = f"timm:{config.get('tag') or name}" if weights == "imagenet" else "none"
    if weights not in ("imagenet", "none"):
        path = Path(weights)
        classifier = config.get("classifier") or "classifier"
        prefixes = tuple(
            f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier)
        )
        load_body_weights(model, load_state_file(path, key), prefixes, str(path), key)
        source = str(path)
    try:
        with torch.no_grad():
            probe = model.eval()(torch.zeros(1, 3, 64, 64))
    except Exception:  # models with fixed input sizes (transformers) fail on the probe
        probe = torch.zeros(0)
    if probe.ndim != 4:
        raise PetsError(f"{key}: timm:{name} is not a CNN (its features are not a 2D map)")
    split = _after(model, [i["module"] for i in model.feature_info if i["reduction"] <= 8][-1])
    mean = tuple(config.get("mean", IMAGENET_MEAN))
    std = tuple(config.get("std", IMAGENET_STD))
    return Body(model, model.num_features, split, mean, std, source)


def _after(model: nn.Module, stage: str) -> str:
    """The name of the first module that follows `stage` (and everything inside it)."""
    entered = False
    for name, _ in model.named_modules():
        if name == stage:
            entered = True
        elif entered and not name.startswith(stage + ".") and not stage.startswith(name + "."):
            return name
    raise PetsError(f"cannot find where the stride-16 stage starts after {stage!r}")


def create_body(arch: str, weights: str, key: str = "weights") -> Body:
    """The pretrained body of `arch` with `weights` (imagenet, none, or a state_dict file with
    the keys torchvision or timm gives that architecture; its classifier's keys are ignored)."""
    if arch.startswith("timm:"):
        return _timm_body(arch.removeprefix("timm:"), weights, key)
    if arch not in TORCHVISION_ARCHS:
        raise PetsError(
            f"{key.rsplit('.', 1)[0]}.arch: unknown architecture {arch!r}; supported: "
            f"{', '.join(TORCHVISION_ARCHS)}, or timm:<name>"
        )
    return _torchvision_body(arch, weights, key)


class AdaptiveConcatPool2d(nn.Module):
    """Max and average pooling side by side (fastai's head starts with it: twice the features)."""

    def __init__(self) -> None:
        super().__init__()
        self.max = nn.AdaptiveMaxPool2d(1)
        self.avg = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.max(x), self.avg(x)], dim=1)


def create_head(
    features: int, classes: int, hidden: int = 512, dropout: tuple[float, float] = (0.25, 0.5)
) -> nn.Sequential:
    """The lesson's head: concat pool, flatten, BN, dropout, linear to `hidden` (no bias), ReLU,
    BN, dropout, linear to `classes` (no bias); linear weights Kaiming-normal initialised."""
    head = nn.Sequential(
        AdaptiveConcatPool2d(),
        nn.Flatten(),
        nn.BatchNorm1d(2 * features),
        nn.Dropout(dropout[0]),
        nn.Linear(2 * features, hidden, bias=False),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(hidden),
        nn.Dropout(dropout[1]),
        nn.Linear(hidden, classes, bias=False),
    )
    for layer in head:
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight)
    return head


def create_cnn(body: Body, classes: int) -> nn.Sequential:
    """`nn.Sequential(body, head)`: module 0 is the body, module 1 the lesson's head."""
    return nn.Sequential(body.module, create_head(body.features, classes))


def model_from_state(
    arch: str, classes: int, state: Mapping[str, torch.Tensor], key: str = "weights"
) -> nn.Sequential:
    """`create_cnn` of `arch` for `classes` holding `state` (a saved state_dict), on the CPU;
    RuntimeError (torch's) when the tensors do not fit; `key` as `create_body` takes it."""
    # Built on the meta device, then handed the saved tensors: initialising a resnet50 at random
    # only to overwrite it costs 1.5 s of CPU. Fresh row-major copies (not `.contiguous()`,
    # which keeps a channels_last 1x1 conv's strides): the kernels then run, to the last digit,
    # as on a model the tensors were copied into.
    with torch.device("meta"):
        model = create_cnn(create_body(arch, "none", key), classes)
    fresh = {k: v.clone(memory_format=torch.contiguous_format) for k, v in state.items()}
    model.load_state_dict(fresh, assign=True)
    if any(
        t.is_meta for t in [*model.parameters(), *model.buffers()]
    ):  # a buffer no state_dict holds
        model = create_cnn(create_body(arch, "none", key), classes)
        model.load_state_dict(state)
    return model


def layer_groups(model: nn.Sequential, split: str) -> list[list[nn.Parameter]]:
    """The lesson's three groups for discriminative learning rates: the body up to `split`, the
    rest of the body, the head."""
    first: list[nn.Parameter] = []
    second: list[nn.Parameter] = []
    current = first
    for name, parameter in model[0].named_parameters():
        if name == split or name.startswith(split + "."):
            current = second
        current.append(parameter)
    if not second:
        raise PetsError(f"cannot split the body at {split!r}: no such module")
    return [first, second, list(model[1].parameters())]


def norm_parameters(model: nn.Module) -> set[int]:
    """ids of every normalisation layer's parameters (kept trainable when frozen, never decayed)."""
    return {id(p) for m in model.modules() if isinstance(m, NORM_TYPES) for p in m.parameters()}


def freeze(model: nn.Sequential, split: str) -> None:
    """fastai's `freeze()`: every body parameter stops training except normalisation layers'."""
    norms = norm_parameters(model)
    for group in layer_groups(model, split)[:-1]:
        for parameter in group:
            parameter.requires_grad_(id(parameter) in norms)
    for parameter in model[1].parameters():
        parameter.requires_grad_(True)


def unfreeze(model: nn.Module) -> None:
    """fastai's `unfreeze()`: everything trains."""
    for parameter in model.parameters():
        parameter.requires_grad_(True)
