"""The exported model: weights as safetensors plus a JSON spec (arch, classes, size, presize,
normalisation, head layout), loadable without pickle and without the training code; optional
TorchScript and ONNX copies, each checked against the PyTorch model."""

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
WEIGHTS, SPEC, TORCHSCRIPT, ONNX = (
    "model.safetensors",
    "model.json",
    "model.torchscript.pt",
    "model.onnx",
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
