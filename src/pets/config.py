"""Typed, validated params: one frozen model per `params.yaml` section, every field documented.

An unknown key, a wrong type or an out-of-range value stops a stage with one line that names the
key and what it accepts (`PetsError`)."""

from __future__ import annotations

import re
import reprlib
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pets.errors import PetsError

PETS_URL = "https://s3.amazonaws.com/fast-ai-imageclas/oxford-iiit-pet.tgz"
NAME_RE = r"/([^/]+)_\d+.jpg$"
# torchvision classification CNNs with a known split into the lesson's three layer groups; any
# timm CNN is also accepted as `timm:<name>`.
TORCHVISION_ARCHS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "efficientnet_v2_s",
    "efficientnet_v2_m",
    "efficientnet_v2_l",
    "convnext_tiny",
    "convnext_small",
    "convnext_base",
    "convnext_large",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
)


# Seeds offset per purpose (data.py adds up to ~2e6) must stay within what torch's and numpy's
# generators take (unsigned 64 and 32 bits): a seed is at most 2**32 - 1.
MAX_SEED = 2**32 - 1


class Section(BaseModel):
    """A params section: unknown keys are errors, values cannot change once loaded, types are
    strict (`bs: true` is not 1, `size: 224.0` is not 224) and numbers finite (no .nan, .inf)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _relative(value: str) -> str:
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError("must be a relative path inside the data set folder")
    return value


class TrackingParams(Section):
    """MLflow tracking; not a dependency of any stage, so changing it reruns nothing."""

    enabled: bool = Field(True, description="log each stage to MLflow")
    experiment: str = Field("pets", min_length=1, description="MLflow experiment name")
    log_models: bool = Field(False, description="also copy model files into MLflow (80-100 MB)")
    model_name: str = Field(
        "pets",
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\- ]*$",
        description="registered model that each export adds a version to",
    )


class DataParams(Section):
    """The `download` stage (the lesson's `untar_data`)."""

    url: str = Field(PETS_URL, min_length=1, description="http(s)/file:// URL or local path")
    md5: str | None = Field(
        "auto",
        description="the archive's md5; auto: the known md5 of a lesson URL, else no check; "
        "null: no check",
    )
    # Limits no real data set meets (Pets: 0.8 GB, 15k members; ImageNet: 150 GB, 1.3M), so a
    # crafted archive cannot fill the disk or exhaust inodes.
    max_extract_bytes: int = Field(
        2**40, ge=1, le=2**50, description="most bytes an archive may extract to (1 TiB)"
    )
    max_members: int = Field(
        5_000_000, ge=1, le=10**9, description="most files and folders an archive may hold"
    )
    max_ratio: float = Field(
        200.0,
        ge=1,
        le=1e9,
        description="most extracted bytes per archive byte, past 64 MiB (photos compress ~1x)",
    )

    # URL lists (a CSV of url,label or a folder of <label>.txt): how each photo is fetched.
    workers: int = Field(8, ge=1, le=64, description="URL lists: photos fetched at once")
    timeout: float = Field(10.0, gt=0, le=600, description="URL lists: seconds per request")
    retries: int = Field(2, ge=0, le=10, description="URL lists: retries of a timeout or 5xx")
    backoff: float = Field(1.0, ge=0, le=60, description="URL lists: first retry's wait, doubling")
    max_photo_bytes: int = Field(
        20 << 20, ge=1, le=1 << 34, description="URL lists: largest photo fetched (20 MiB)"
    )

    @field_validator("md5")
    @classmethod
    def _md5_hex(cls, value: str | None) -> str | None:
        if value is None or value == "auto":
            return value
        if not re.fullmatch(r"[0-9a-fA-F]{32}", value):
            raise ValueError("must be auto, 32 hex digits or null")
        return value.lower()


class LabelsParams(Section):
    """The `labels` stage (the lesson's `get_image_files` and `ImageDataBunch.from_*`)."""

    method: Literal["name_re", "folder", "csv", "name_func", "lists"] = Field(
        "name_re", description="how a photo gets its label"
    )
    folder: str = Field("images", description="subfolder of the data set to search; '' = root")
    pattern: str = Field(NAME_RE, description="name_re: regex on '/'+path, group 1 is the label")
    train_folder: str = Field(
        "train",
        description="folder: training subfolder; '': <label>/*.jpg, split by valid_pct",
    )
    valid_folder: str = Field("valid", min_length=1, description="folder: validation subfolder")
    csv_file: str = Field(
        "labels.csv",
        min_length=1,
        description="csv: name,label[,is_valid]; ./x.csv: in the project",
    )
    func: str = Field("", description="name_func: 'module:function' taking a path")
    labels_file: str = Field(
        "labels.txt", min_length=1, description="lists: a label per line; ./x.txt: in the project"
    )
    valid_pct: float = Field(0.2, gt=0, lt=1, description="share of photos held out for valid")
    corrections: str = Field(
        "",
        description="a CSV of the project, path,label: relabel a photo, or path, to drop it "
        "(`pets clean` writes it); '': none",
    )
    stratify: bool = Field(
        False, description="hold out valid_pct of each class (at least one photo each)"
    )

    @field_validator("folder", "csv_file", "labels_file")
    @classmethod
    def _inside(cls, value: str) -> str:
        return _relative(value)

    @field_validator("corrections")
    @classmethod
    def _in_project(cls, value: str) -> str:
        path = PurePosixPath(value)
        if value and (path.is_absolute() or ".." in path.parts):
            raise ValueError("must be a relative path inside the project (e.g. corrections.csv)")
        return value

    @field_validator("pattern")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"is not a valid regular expression ({exc})") from None
        if compiled.groups < 1:
            raise ValueError("needs a capture group: group 1 is the label")
        return value

    @model_validator(mode="after")
    def _func_named(self) -> LabelsParams:
        if self.method == "name_func" and not re.fullmatch(r"[\w.]+:\w+", self.func):
            raise ValueError(
                "labels.func: name_func needs 'module:function', e.g. 'mylabels:breed'"
            )
        return self


class CacheParams(Section):
    """The `cache` stage: every photo decoded once, resized, kept as uint8 pixels."""

    size: int = Field(448, ge=32, le=4096, description="long side of each cached photo, pixels")


class AugmentParams(Section):
    """The lesson's `get_transforms()`, used by `preview` and every training stage."""

    do_flip: bool = Field(True, description="random horizontal flip, p=0.5")
    flip_vert: bool = Field(False, description="also flip vertically and rotate by 90 degrees")
    max_rotate: float = Field(10.0, ge=0, le=180, description="rotate U(-max, max) degrees")
    max_zoom: float = Field(1.1, ge=1, le=4, description="zoom U(1, max_zoom)")
    max_warp: float = Field(0.2, ge=0, lt=1, description="perspective warp magnitude")
    p_affine: float = Field(0.75, ge=0, le=1, description="probability of each affine transform")
    max_lighting: float = Field(0.2, ge=0, lt=1, description="brightness and contrast change")
    p_lighting: float = Field(0.75, ge=0, le=1, description="probability of a lighting change")
    pad_mode: Literal["reflection", "border", "zeros"] = Field(
        "reflection", description="how pixels outside the photo are filled"
    )


class PreviewParams(Section):
    """The `preview` stage (the lesson's `show_batch`)."""

    rows: int = Field(3, ge=1, le=10, description="a rows x rows grid")
    size: int = Field(224, ge=16, le=1024, description="training size shown (train_frozen.size)")


LearningRate = float | list[float]
LR_HELP = (
    "a number (every layer group), [x] (the lesson's slice(x)) or [low, high] (slice(low, high))"
)


def _check_lr(value: Any) -> Any:
    values = value if isinstance(value, list) else [value]
    if not 1 <= len(values) <= 2 or not all(0 < v <= 1e3 for v in values):
        raise ValueError(f"must be {LR_HELP}, each above 0 and at most 1000")
    if len(values) == 2 and values[0] > values[1]:
        raise ValueError("[low, high] needs low <= high")
    return value


KEEP_HELP = "last: the last epoch's model (the lesson); best: the epoch with the lowest monitor"
MONITOR_HELP = "what keep: best compares between epochs (lower is better; a tie keeps the earlier)"
Keep = Literal["last", "best"]
Monitor = Literal["valid_loss", "error_rate"]


def check_arch(value: str) -> str:
    """`value` if it names a supported architecture; ValueError otherwise."""
    if value in TORCHVISION_ARCHS or (value.startswith("timm:") and len(value) > 5):
        return value
    raise ValueError(
        f"unknown architecture {value!r}; supported: {', '.join(TORCHVISION_ARCHS)}, or "
        "timm:<name> (pip install -e '.[timm]')"
    )


class TrainParams(Section):
    """A training stage that builds a model from pretrained weights (`train_frozen`)."""

    arch: str = Field("resnet34", description="torchvision name, or timm:<name>")
    weights: str = Field(
        "imagenet", min_length=1, description="imagenet, none, or a state_dict file"
    )
    size: int = Field(224, ge=16, le=2048, description="square training size, pixels")
    bs: int = Field(64, ge=1, le=4096, description="batch size")
    epochs: int = Field(4, ge=1, le=1000, description="fit_one_cycle(epochs)")
    lr: LearningRate = Field([3.0e-3], description=LR_HELP)
    wd: float = Field(0.01, ge=0, le=1, description="decoupled weight decay (not on norms, biases)")
    compile: bool = Field(False, description="torch.compile (CUDA graphs): pays on long runs")
    keep: Keep = Field("last", description=KEEP_HELP)
    monitor: Monitor = Field("valid_loss", description=MONITOR_HELP)

    _arch = field_validator("arch")(classmethod(lambda cls, v: check_arch(v)))
    _lr = field_validator("lr")(classmethod(lambda cls, v: _check_lr(v)))


class TrainResnet50Params(TrainParams):
    """`train_resnet50`: the lesson's bigger model, frozen, then optionally unfrozen."""

    arch: str = Field("resnet50", description="torchvision name, or timm:<name>")
    size: int = Field(320, ge=16, le=2048, description="square training size, pixels")
    bs: int = Field(32, ge=1, le=4096, description="batch size")
    epochs: int = Field(8, ge=1, le=1000, description="frozen fit_one_cycle(epochs)")
    lr: LearningRate = Field([1.0e-3], description=LR_HELP)
    unfreeze_epochs: int = Field(0, ge=0, le=1000, description="unfrozen epochs after (0: none)")
    unfreeze_lr: LearningRate = Field([1.0e-6, 1.0e-4], description=LR_HELP)
    keep: Keep = Field(
        "last", description=f"{KEEP_HELP}, over the frozen and the unfrozen epochs together"
    )

    _unfreeze_lr = field_validator("unfreeze_lr")(classmethod(lambda cls, v: _check_lr(v)))


class LrFindParams(Section):
    """`lr_find`: the learning-rate range test on the unfrozen stage-1 model."""

    bs: int = Field(64, ge=1, le=4096, description="batch size")
    start_lr: float = Field(1e-7, gt=0, le=1e3, description="first learning rate")
    end_lr: float = Field(10.0, gt=0, le=1e3, description="last learning rate")
    num_it: int = Field(100, ge=5, le=10000, description="batches, lr growing exponentially")
    stop_div: bool = Field(True, description="stop once the smoothed loss passes 4x its best")

    @model_validator(mode="after")
    def _range(self) -> LrFindParams:
        if self.start_lr >= self.end_lr:
            raise ValueError("lr_find.start_lr: must be below lr_find.end_lr")
        return self


class FinetuneParams(Section):
    """`finetune`: unfreeze stage-1 and train every layer with discriminative learning rates."""

    bs: int = Field(64, ge=1, le=4096, description="batch size")
    epochs: int = Field(2, ge=1, le=1000, description="fit_one_cycle(epochs)")
    lr: LearningRate | Literal["auto"] = Field(
        [1.0e-6, 1.0e-4], description=f"{LR_HELP}; auto: [valley/100, valley] from lr_find"
    )
    wd: float = Field(0.01, ge=0, le=1, description="decoupled weight decay (not on norms, biases)")
    compile: bool = Field(False, description="torch.compile (CUDA graphs): pays on long runs")
    keep: Keep = Field("last", description=KEEP_HELP)
    monitor: Monitor = Field("valid_loss", description=MONITOR_HELP)

    @field_validator("lr")
    @classmethod
    def _lr_or_auto(cls, value: Any) -> Any:
        return value if value == "auto" else _check_lr(value)


class GetPredsParams(Section):
    """`get_preds`: one inference pass of each model over the validation photos."""

    bs: int = Field(128, ge=1, le=8192, description="batch size for inference")


class InterpretParams(Section):
    """`interpret` (the lesson's ClassificationInterpretation), computed from predictions."""

    k: int = Field(9, ge=1, le=100, description="plot_top_losses(k)")
    min_val: int = Field(2, ge=1, le=10**9, description="most_confused(min_val)")
    bootstrap: int = Field(1000, ge=100, le=100000, description="bootstrap resamples")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="interval level")


class ReportParams(Section):
    """`report`: the page that shows every model side by side."""

    flips_shown: int = Field(24, ge=0, le=500, description="flipped photos shown per direction")


class ExportParams(Section):
    """`export`: the model without pickle (safetensors + JSON); torch.export, ONNX and
    TorchScript copies."""

    model: Literal["stage-1", "stage-2", "resnet50"] = Field("resnet50", description="which")
    pt2: bool = Field(True, description="also write model.pt2 (a torch.export program)")
    torchscript: bool = Field(
        False, description="also write model.torchscript.pt (torch.jit.trace, deprecated)"
    )
    # Off unless asked for: converting resnet50 costs the stage about 8 s of its 19 on a CPU
    # (the exporter traces the program again), on every rerun.
    onnx: bool = Field(False, description="also write model.onnx (onnxruntime, other languages)")
    tolerance: float = Field(1e-3, gt=0, le=1e3, description="largest |logit difference| allowed")
    # An exporter's numerical differences show on every photo: a few suffice, and each copy
    # runs them all (resnet50 at 320 on a CPU: a fraction of a second per photo and copy).
    check_images: int = Field(8, ge=1, le=4096, description="validation photos checked")


class LaunchParams(Section):
    """How training stages run; not a dependency of any stage, so changing it reruns nothing."""

    processes: int = Field(1, ge=1, le=64, description=">1: data-parallel (torchrun), bs each")
    sync_bn: bool = Field(
        True, description="with processes >1, BatchNorm over all processes' batches (fastai's)"
    )


class Params(Section):
    """All of `params.yaml`: shared keys, then one section per stage."""

    seed: int = Field(
        2, ge=0, le=MAX_SEED, description="seeds the split, shuffling, augmentation and init"
    )
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="auto = cuda if present")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto",
        description="auto = bf16 autocast on GPUs with native bf16 (compute capability 8.0+), "
        "fp16 autocast with a gradient scaler on 7.x (T4, V100), else fp32 (and on the CPU)",
    )
    tracking: TrackingParams = TrackingParams()
    launch: LaunchParams = LaunchParams()
    data: DataParams = DataParams()
    labels: LabelsParams = LabelsParams()
    cache: CacheParams = CacheParams()
    augment: AugmentParams = AugmentParams()
    preview: PreviewParams = PreviewParams()
    train_frozen: TrainParams = TrainParams()
    lr_find: LrFindParams = LrFindParams()
    finetune: FinetuneParams = FinetuneParams()
    train_resnet50: TrainResnet50Params = TrainResnet50Params()
    get_preds: GetPredsParams = GetPredsParams()
    interpret: InterpretParams = InterpretParams()
    report: ReportParams = ReportParams()
    export: ExportParams = ExportParams()


def section_values(params: Params, keys: tuple[str, ...]) -> dict[str, Any]:
    """The values of params.yaml's `keys` (sections or shared keys), by name."""
    return {key: _plain(getattr(params, key)) for key in keys}


def stage_params(params: Params, stage: str) -> dict[str, Any]:
    """The values `stage` depends on (its spec's params), keyed by their params.yaml names."""
    from pets.stages import specs

    return section_values(params, specs()[stage].params)


def _plain(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"labels": {"valid_pct": 0.2}}` -> `{"labels.valid_pct": 0.2}` (MLflow's params shape)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _allowed(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at `loc`'s parent, for the unknown-key message."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


SHOWN = reprlib.Repr()  # attributes, not keywords: Python 3.10 and 3.11 take none
SHOWN.maxlevel, SHOWN.maxtuple, SHOWN.maxlist, SHOWN.maxdict = 3, 4, 4, 4
SHOWN.maxstring = SHOWN.maxother = 60
SHOWN_CHARS = 100


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)` cut to a readable length, without building the whole repr first (a value
    made of YAML aliases can be huge once written out)."""
    text = SHOWN.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(error: ValidationError, source: str, model: type[BaseModel] | None = None) -> str:
    """The first validation problem as one line: `source: key: what is wrong (got value)`;
    `model` is the validated class (default `Params`), for listing the keys allowed."""
    first = error.errors()[0]
    # Union members add parts that are neither keys nor positions (`float`, `list[float]`).
    loc = tuple(
        p
        for p in first["loc"]
        if isinstance(p, int) or not (p.endswith("]") or p in ("float", "int", "str", "bool"))
    )
    key = ".".join(str(part) for part in loc)
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(_allowed(model or Params, loc))
        return f"{source}: {key}: unknown key; allowed here: {allowed}"
    message = " ".join(first["msg"].removeprefix("Value error, ").split())
    if re.match(rf"{re.escape(key)}[.:]", message):
        return f"{source}: {message}"
    got = first.get("input")
    echo = "" if isinstance(got, dict) or got is None else f" (got {shown(got)})"
    prefix = f"{key}: " if key else ""
    return f"{source}: {prefix}{message[:1].lower()}{message[1:]}{echo}"


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a loaded YAML document into `Params`, or raise a one-line `PetsError`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PetsError(f"{source}: must be a mapping of sections, not {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise PetsError(describe(exc, source)) from None


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading `1e-3` as a number as YAML 1.2 (and DVC) do; PyYAML's
    YAML 1.1 rules need a dot (`1.0e-3`) and would give the string '1e-3'."""


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
# A params file is a few hundred lines: anything far bigger is refused before it is parsed, and a
# document whose aliases expand to more values than this is refused before it is built.
MAX_PARAMS_BYTES = 1 << 20
MAX_PARAMS_VALUES = 100_000


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """How many values `root` holds once every alias is written out, counting up to past
    `limit` (aliases share nodes: each node's size is computed once)."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    visiting: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        if not children_done:
            if id(node) in visiting:
                return limit + 1  # an alias to its own ancestor: endless once written out
            visiting.add(id(node))
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        if any(id(child) not in sizes for child in children):
            return limit + 1  # a child still being visited: a cycle
        sizes[id(node)] = min(limit + 1, 1 + sum(sizes[id(child)] for child in children))
        visiting.discard(id(node))
    return sizes[id(root)]


def read_yaml(path: Path) -> Any:
    """A small YAML file as plain data, or a one-line `PetsError` naming it: refused when it is
    not a regular file, is over `MAX_PARAMS_BYTES`, is not UTF-8, is not valid YAML or expands
    (through aliases) to more than `MAX_PARAMS_VALUES` values."""
    from pets.files import not_regular

    why = not_regular(path)
    if why == "not found":
        raise PetsError(f"{path}: params file not found")
    if why:
        raise PetsError(f"{path}: the params file is {why}, not a regular file")
    if path.stat().st_size > MAX_PARAMS_BYTES:
        raise PetsError(f"{path}: {path.stat().st_size:,} bytes; a params file is at most 1 MiB")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PetsError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    loader = ParamsLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, MAX_PARAMS_VALUES) > MAX_PARAMS_VALUES:
            raise PetsError(
                f"{path}: expands to more than {MAX_PARAMS_VALUES:,} values once its YAML "
                "aliases (&name, *name) are written out; write the values out instead"
            )
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise PetsError(f"{path}:{where} is not valid YAML") from None
    except RecursionError:
        raise PetsError(f"{path}: nested too deeply to be a params file") from None
    finally:
        loader.dispose()


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate `params.yaml`."""
    path = Path(path)
    return parse_params(read_yaml(path), str(path))
