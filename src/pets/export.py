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

from pets.errors import PetsError
from pets.files import atomic_path, write_json
from pets.model import create_body, create_cnn

SPEC_FORMAT = "pets.export/1"
WEIGHTS, SPEC, TORCHSCRIPT, ONNX, PROGRAM = (
    "model.safetensors",
    "model.json",
    "model.torchscript.pt",
    "model.onnx",
    "model.pt2",
)
SPEC_KEYS = ("arch", "classes", "size", "presize", "mean", "std", "head", "weights")


def spec_of(info: dict[str, Any]) -> dict[str, Any]:
    """What rebuilding and feeding a trained model needs, from its checkpoint's info."""
    missing = [key for key in SPEC_KEYS if key not in info]
    if missing:
        raise PetsError(f"the checkpoint lacks {', '.join(missing)}; retrain it with this version")
    return {
        "format": SPEC_FORMAT,
        **{key: info[key] for key in SPEC_KEYS},
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


def load_exported(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model an export folder holds (in eval mode, on the CPU) and its spec."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        spec = json.loads((folder / SPEC).read_text())
    except FileNotFoundError:
        raise PetsError(
            f"{folder}: no {SPEC}; point at an export folder or a .pth checkpoint"
        ) from None
    except json.JSONDecodeError as exc:
        raise PetsError(f"{folder / SPEC}: not valid JSON ({exc})") from None
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        found = spec.get("format") if isinstance(spec, dict) else None
        raise PetsError(f"{folder / SPEC}: not a pets export (format {found!r})")
    missing = [key for key in SPEC_KEYS if key not in spec]
    if missing:
        raise PetsError(f"{folder / SPEC}: lacks {', '.join(missing)}; export the model again")
    try:
        state = load_file(str(folder / WEIGHTS))
    except (OSError, ValueError, SafetensorError) as exc:
        raise PetsError(f"{folder / WEIGHTS}: cannot be read ({exc})") from None
    model = create_cnn(create_body(spec["arch"], "none"), len(spec["classes"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise PetsError(
            f"{folder / WEIGHTS}: does not fit {spec['arch']} with "
            f"{len(spec['classes'])} classes ({str(exc).splitlines()[0]})"
        ) from None
    return model.eval(), spec


def to_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """A traced TorchScript copy (runs from C++ or `torch.jit.load`, no Python classes)."""
    with torch.no_grad():
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
    with atomic_path(path) as tmp:
        traced.save(str(tmp))


def to_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """An ONNX copy (torch.export-based exporter) whose batch size may vary."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    with atomic_path(path) as tmp:
        torch.onnx.export(
            model.eval(),
            (example,),
            str(tmp),
            dynamo=True,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            external_data=False,
            verbose=False,
        )


def to_program(model: nn.Module, example: torch.Tensor, path: Path, spec: dict[str, Any]) -> None:
    """A torch.export program (TorchScript's successor: `torch.export.load(path).module()` runs
    it without this project's classes), exported in eval mode with its batch size free and the
    spec stored inside it as model.json."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
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


def load_program(path: Path) -> tuple[nn.Module, dict[str, Any]]:
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
        spec = json.loads(extra[SPEC])
    except json.JSONDecodeError:
        raise PetsError(f"{path}: holds no {SPEC}; export the model again") from None
    missing = [key for key in SPEC_KEYS if key not in spec] if isinstance(spec, dict) else ["all"]
    if missing or spec.get("format") != SPEC_FORMAT:
        raise PetsError(f"{path}: its {SPEC} is not a pets export spec; export the model again")
    return ProgramModule(program.module()), spec


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
