"""What a trained model is, as one frozen, validated value.

`ModelSpec` holds what rebuilding and feeding a model needs (arch, classes, sizes,
normalisation, head layout); `ModelRecord` adds how it was trained (frozen or not, the learning
rates of each fit, batch size, epochs). A training stage makes the record once and writes it,
unchanged, into the checkpoint and `reports/<model>/model.json`; the export writes the spec into
`model.json`. Every reader (the stages that load a checkpoint, the export, `pets predict`,
`Predictor`, the report) parses the file through these classes, so a spec that is wrong in type,
range or class count stops with one line naming the file and the field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from pets.config import check_arch, describe
from pets.errors import PetsError


def _tuple(value: Any) -> Any:
    """JSON and `torch.load` give lists where the spec keeps tuples."""
    return tuple(value) if isinstance(value, list) else value


Mean = Annotated[float, Field(ge=0, le=1)]  # pixels are scaled to [0, 1] first
Std = Annotated[float, Field(ge=1e-3, le=10)]  # > 0: a zero std divides by zero (NaN)
Rate = Annotated[float, Field(gt=0, le=1e3)]
Triple = tuple[Any, Any, Any]
ClassName = Annotated[str, Field(min_length=1, max_length=1000)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Head(_Frozen):
    """The lesson's head: concat pool, BN, dropout, linear to `hidden`, ReLU, BN, dropout,
    linear to the classes."""

    features: int = Field(ge=1, le=65536, description="channels of the body's last feature map")
    hidden: int = Field(ge=1, le=65536, description="width of the hidden linear layer")
    dropout: Annotated[
        tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]],
        BeforeValidator(_tuple),
    ] = Field(description="dropout before each linear layer")


class ModelSpec(_Frozen):
    """What rebuilding a trained model and feeding it photos needs. Sizes have the bounds of
    `train_frozen.size` and `cache.size`."""

    arch: str = Field(min_length=1, max_length=200, description="torchvision or timm:<name>")
    weights: str = Field(min_length=1, max_length=4096, description="what initialised the body")
    classes: Annotated[tuple[ClassName, ...], BeforeValidator(_tuple)] = Field(
        min_length=2, max_length=100_000, description="class names, in output order"
    )
    size: int = Field(ge=16, le=2048, description="square input size the model was trained at")
    presize: int = Field(ge=32, le=4096, description="canvas photos are decoded onto first")
    mean: Annotated[tuple[Mean, Mean, Mean], BeforeValidator(_tuple)] = Field(
        description="per-channel RGB mean subtracted"
    )
    std: Annotated[tuple[Std, Std, Std], BeforeValidator(_tuple)] = Field(
        description="per-channel RGB standard deviation divided by"
    )
    split: str = Field(min_length=1, max_length=200, description="first module of group two")
    head: Head

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        return check_arch(value)

    @field_validator("classes")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        seen: set[str] = set()
        for name in value:
            if name in seen:
                raise ValueError(f"{name[:60]!r} is listed twice")
            seen.add(name)
        return value

    @classmethod
    def parse(cls, raw: Any, source: str) -> ModelSpec:
        """Validate `raw` (a spec read from a file), or raise a one-line `PetsError` starting
        with `source` and naming the field."""
        if not isinstance(raw, Mapping):
            raise PetsError(f"{source}: must be a mapping of fields, not {type(raw).__name__}")
        try:
            return cls.model_validate(dict(raw))
        except ValidationError as exc:
            raise PetsError(describe(exc, source, cls)) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (lists for tuples)."""
        return self.model_dump(mode="json")

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with `changes`, validated like a spec read from a file."""
        return type(self).parse({**self.to_dict(), **changes}, type(self).__name__)

    @property
    def spec(self) -> ModelSpec:
        """The fields of `ModelSpec` alone (what an export holds)."""
        return ModelSpec.model_validate(
            {name: getattr(self, name) for name in ModelSpec.model_fields}
        )

    def check_weights(self, state: Mapping[str, Any], source: str) -> None:
        """Refuse a state_dict whose head does not match the spec: the last layer must give one
        output per class, from `head.hidden` inputs (other shapes are checked on loading)."""
        last = state.get("1.8.weight")
        if last is None or getattr(last, "ndim", 0) != 2:
            raise PetsError(f"{source}: the weights lack the head's last layer (1.8.weight)")
        outputs, inputs = (int(n) for n in last.shape)
        if outputs != len(self.classes):
            raise PetsError(
                f"{source}: classes: {len(self.classes)} names, but the weights give {outputs} "
                "outputs"
            )
        if inputs != self.head.hidden:
            raise PetsError(
                f"{source}: head.hidden: {self.head.hidden}, but the weights' last layer takes "
                f"{inputs} inputs"
            )


class ModelRecord(ModelSpec):
    """A trained model's spec and how it was trained: the checkpoint's header, and
    `reports/<model>/model.json`."""

    frozen: bool = Field(False, description="the body's weights (but its norms) did not train")
    lr: Annotated[
        tuple[Annotated[tuple[Rate, ...], BeforeValidator(_tuple)], ...], BeforeValidator(_tuple)
    ] = Field((), max_length=1000, description="learning rate per layer group, for each fit")
    bs: int | None = Field(None, ge=1, le=8192, description="batch size of the last fit")
    epochs: int | None = Field(None, ge=0, le=100_000, description="epochs of every fit")
