"""The exported model: weights as safetensors plus a JSON spec (arch, classes, size, presize,
normalisation, head layout), loadable without pickle and without the training code; optional
torch.export (.pt2), ONNX and TorchScript copies, each checked against the PyTorch model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pets.config import shown
from pets.errors import PetsError
from pets.files import atomic_path, not_regular, write_json
from pets.model import model_from_state
from pets.modelspec import ModelSpec

SPEC_FORMAT = "pets.export/1"
WEIGHTS, SPEC, TORCHSCRIPT, ONNX, PROGRAM = (
    "model.safetensors",
    "model.json",
    "model.torchscript.pt",
    "model.onnx",
    "model.pt2",
)
# model.json's keys that are about the file, not the model.
EXPORT_ONLY = ("format", "input", "torch")
MAX_SPEC_BYTES = 16 << 20  # 37 class names take 1 KB; 100,000 long ones fit


def spec_of(spec: ModelSpec) -> dict[str, Any]:
    """The export's `model.json`: the model's spec (a checkpoint's record less how it was
    trained), its format, how to feed it, and the torch version that wrote it."""
    return {
        "format": SPEC_FORMAT,
        **spec.spec.to_dict(),
        "input": {
            "layout": "NCHW float32, RGB scaled to [0, 1] then (x - mean) / std",
            "preprocess": "long side resized to presize, centre square, resized to size",
        },
        "torch": torch.__version__,
    }


def save_weights(model: nn.Module, spec: dict[str, Any], folder: Path) -> None:
    """model.safetensors and model.json into `folder` (each written atomically)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {
        name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
    }
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": SPEC_FORMAT})
        tmp.chmod(0o644)  # safetensors writes it private
    write_json(folder / SPEC, spec)


def read_spec(path: Path) -> ModelSpec:
    """An export's `model.json`, validated: one line naming the file and field when it is
    wrong."""
    why = not_regular(path)
    if why == "not found":
        raise PetsError(f"{path.parent}: no {SPEC}; point at an export folder or a .pth checkpoint")
    if why:
        raise PetsError(f"{path}: is {why}, not a regular file")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise PetsError(f"{path}: {path.stat().st_size:,} bytes; a model spec is at most 16 MiB")
    try:
        raw = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise PetsError(f"{path}: not valid JSON ({shown(str(exc))})") from None
    return parse_spec(raw, str(path))


def parse_spec(raw: Any, source: str) -> ModelSpec:
    """A loaded model.json (of an export folder or inside a .pt2 program), validated."""
    if not isinstance(raw, dict) or raw.get("format") != SPEC_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise PetsError(f"{source}: not a pets export (format {shown(found)})")
    return ModelSpec.parse({k: v for k, v in raw.items() if k not in EXPORT_ONLY}, source)


def load_exported(folder: Path) -> tuple[nn.Module, ModelSpec]:
    """The model an export folder holds (in eval mode, on the CPU) and its spec."""
    return load_exported_files(folder / SPEC, folder / WEIGHTS)


def load_exported_files(spec_path: Path, weights: Path) -> tuple[nn.Module, ModelSpec]:
    """An export's model from its `model.json` and its `model.safetensors` wherever each is
    (an MLflow model keeps the spec, the weights may be in DVC's cache)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    spec = read_spec(spec_path)
    why = not_regular(weights)
    if why:
        raise PetsError(f"{weights}: cannot be read ({why})")
    try:
        state = load_file(str(weights))
    except (OSError, ValueError, SafetensorError) as exc:
        raise PetsError(f"{weights}: cannot be read ({shown(str(exc))})") from None
    spec.check_weights(state, str(weights))
    try:
        model = model_from_state(spec.arch, len(spec.classes), state, str(spec_path))
    except RuntimeError as exc:
        raise PetsError(
            f"{weights}: does not fit {spec.arch} with "
            f"{len(spec.classes)} classes ({str(exc).splitlines()[0][:300]})"
        ) from None
    return model.eval(), spec


def to_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """A traced TorchScript copy (runs from C++ or `torch.jit.load`, no Python classes)."""
    with torch.no_grad():
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
    with atomic_path(path) as tmp:
        traced.save(str(tmp))


def trace(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """`model` in eval mode as a torch.export program whose batch size may vary: the one trace
    both the pt2 and the ONNX copies are made from (tracing resnet50 costs seconds)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    return torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))


def to_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    program: torch.export.ExportedProgram | None = None,
) -> None:
    """An ONNX copy (torch.export-based exporter) whose batch size may vary, converted from
    `program` (`trace(model, example)`) when given rather than tracing the model again."""
    with atomic_path(path) as tmp:
        torch.onnx.export(
            program if program is not None else trace(model, example),
            (),
            str(tmp),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            external_data=False,
            verbose=False,
        )


def to_program(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    spec: dict[str, Any],
    program: torch.export.ExportedProgram | None = None,
) -> None:
    """A torch.export program (TorchScript's successor: `torch.export.load(path).module()` runs
    it without this project's classes), exported in eval mode with its batch size free and the
    spec stored inside it as model.json; `program` when already traced."""
    program = program if program is not None else trace(model, example)
    with atomic_path(path) as tmp:
        torch.export.save(program, str(tmp), extra_files={SPEC: json.dumps(spec)})


class ProgramModule(nn.Module):
    """A loaded torch.export program as a module to hold like any model: it was exported in
    eval mode, and `train()`/`eval()` (which exported modules refuse) leave it so."""

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of normalised NCHW images."""
        return self.program(images)

    def train(self, mode: bool = True) -> ProgramModule:
        """Nothing to switch: the program is fixed in eval mode."""
        return self


def load_program(path: Path) -> tuple[nn.Module, ModelSpec]:
    """The model a .pt2 file holds (on the CPU) and the spec stored inside it."""
    extra = {SPEC: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except FileNotFoundError:
        raise PetsError(f"{path}: no such file") from None
    except Exception as exc:  # torch raises many types for a damaged archive
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise PetsError(f"{path}: not a readable torch.export program ({first})") from None
    try:
        raw = json.loads(extra[SPEC])
    except (json.JSONDecodeError, RecursionError):
        raise PetsError(f"{path}: holds no {SPEC}; export the model again") from None
    return ProgramModule(program.module()), parse_spec(raw, f"{path}: {SPEC}")


def run_program(path: Path, images: torch.Tensor) -> np.ndarray:
    """Logits of the torch.export copy."""
    model, _ = load_program(path)
    with torch.no_grad():
        return model(images).float().numpy()


def run_torchscript(path: Path, images: torch.Tensor) -> np.ndarray:
    """Logits of the TorchScript copy."""
    module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(images).float().numpy()


def run_onnx(path: Path, images: torch.Tensor) -> np.ndarray:
    """Logits of the ONNX copy, through onnxruntime on the CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
