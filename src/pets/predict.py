"""Using a trained model on photos (`pets predict`): the model loaded without pickle, each
photo decoded and cropped exactly as validation saw it, batched inference on the GPU or CPU, and
optional test-time augmentation (the lesson's flips and crops, averaged)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pets.compute import Compute, pick_compute
from pets.errors import PetsError
from pets.export import SPEC, load_exported, load_program
from pets.files import not_regular
from pets.images import find_images, load_onto_canvas
from pets.modelspec import ModelSpec
from pets.transforms import Draw, augment, centre_draw, normalize

MLFLOW_SCHEMES = ("models:/", "runs:/")  # model URIs MLflow resolves


def load_model(path: Path) -> tuple[torch.nn.Module, ModelSpec]:
    """An export folder (or its model.json), its torch.export program (.pt2) or a training
    checkpoint (.pth), or a model in MLflow (`models:/pets/3`, `runs:/<id>/model`), as (model in
    eval mode on the CPU, its validated spec)."""
    if str(path).startswith(MLFLOW_SCHEMES):
        from pets.registry import load_registered

        return load_registered(str(path))
    if path.is_dir() or path.name == SPEC:
        return load_exported(path if path.is_dir() else path.parent)
    why = not_regular(path)
    if why:
        raise PetsError(f"{path}: {why}; give an export folder, a .pt2 program or a checkpoint")
    if path.suffix == ".pt2":
        return load_program(path)
    from pets.learner import load_trained_model

    model, record = load_trained_model(path, "predict")
    return model, record.spec


def tta_views(batch: int) -> list[Draw]:
    """Test-time views: the centre crop, its mirror, and crops at both ends of the long side
    (the lesson's flips and crops)."""
    centre = centre_draw(batch)
    flipped = dataclasses.replace(centre, dihedral=torch.ones(batch, dtype=torch.long))
    start = dataclasses.replace(centre, crop_x=torch.zeros(batch), crop_y=torch.zeros(batch))
    end = dataclasses.replace(centre, crop_x=torch.ones(batch), crop_y=torch.ones(batch))
    return [centre, flipped, start, end]


@dataclass
class Prediction:
    """One photo's top classes with probabilities, or why it could not be read."""

    path: str
    top: list[tuple[str, float]]
    error: str = ""


def _decode(path: Path, presize: int) -> tuple[np.ndarray, tuple[int, int]] | str:
    why = not_regular(path)  # opening a FIFO or a terminal would wait for ever
    if why:
        return f"cannot read {path}: {why}"
    canvas = np.zeros((presize, presize, 3), np.uint8)
    try:
        return canvas, load_onto_canvas(path, canvas)
    except Exception as exc:  # whatever the decoder raises, it is this photo's problem alone
        return f"cannot read {path}: {exc}"


class Predictor:
    """A model ready for photos: `predict(paths)` yields a `Prediction` per photo, in order."""

    def __init__(
        self,
        model_path: Path,
        device: str = "auto",
        precision: str = "auto",
        bs: int = 32,
        tta: bool = False,
        top_k: int = 3,
        threads: int = 4,
    ) -> None:
        self._ready(*load_model(model_path), device, precision, bs, tta, top_k, threads)

    @classmethod
    def from_model(
        cls, model: torch.nn.Module, spec: ModelSpec, device: str = "auto", **options: Any
    ) -> Predictor:
        """A Predictor for a model already loaded (an MLflow model's), with `Predictor`'s
        options (precision, bs, tta, top_k, threads)."""
        predictor = cls.__new__(cls)
        settings = {"precision": "auto", "bs": 32, "tta": False, "top_k": 3, "threads": 4}
        predictor._ready(model, spec, device, **{**settings, **options})
        return predictor

    def _ready(
        self,
        model: torch.nn.Module,
        spec: ModelSpec,
        device: str,
        precision: str,
        bs: int,
        tta: bool,
        top_k: int,
        threads: int,
    ) -> None:
        self.spec = spec
        self.compute: Compute = pick_compute(device, precision)
        self.model = model.to(self.compute.device, memory_format=torch.channels_last).eval()
        self.classes: list[str] = list(self.spec.classes)
        self.bs, self.tta, self.top_k, self.threads = (
            bs,
            tta,
            min(top_k, len(self.classes)),
            threads,
        )

    @torch.inference_mode()
    def probabilities(self, canvases: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """Class probabilities (batch, classes) for canvases already decoded, averaged over the
        test-time views when asked for."""
        canvases = canvases.to(self.compute.device, non_blocking=True)
        sizes = sizes.to(self.compute.device, non_blocking=True)
        views = tta_views(len(canvases)) if self.tta else [centre_draw(len(canvases))]
        total = None
        for view in views:
            images = normalize(
                augment(canvases, sizes, self.spec.size, view),
                self.spec.mean,
                self.spec.std,
            )
            with self.compute.autocast():
                logits = self.model(images.contiguous(memory_format=torch.channels_last))
            probs = torch.softmax(logits.float(), dim=1)
            total = probs if total is None else total + probs
        return (total / len(views)).cpu()

    def predict(self, paths: Sequence[Path]) -> Iterator[Prediction]:
        """Predictions for `paths`, decoded in parallel threads a batch at a time; unreadable
        files give a `Prediction` with an error and do not stop the others."""
        presize = self.spec.presize
        with ThreadPoolExecutor(max_workers=max(1, self.threads)) as pool:
            for start in range(0, len(paths), self.bs):
                chunk = paths[start : start + self.bs]
                decoded = list(pool.map(lambda p: _decode(p, presize), chunk))
                good = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
                results: dict[int, list[tuple[str, float]]] = {}
                if good:
                    canvases = torch.from_numpy(np.stack([decoded[i][0] for i in good]))
                    sizes = torch.tensor([decoded[i][1] for i in good], dtype=torch.float32)
                    probs = self.probabilities(canvases, sizes)
                    values, indices = probs.topk(self.top_k, dim=1)
                    for row, index in enumerate(good):
                        results[index] = [
                            (self.classes[c], float(v))
                            for v, c in zip(
                                values[row].tolist(), indices[row].tolist(), strict=True
                            )
                        ]
                for index, path in enumerate(chunk):
                    if index in results:
                        yield Prediction(str(path), results[index])
                    else:
                        yield Prediction(str(path), [], decoded[index])


def photo_paths(arguments: Sequence[Path]) -> list[Path]:
    """The photos named: files as given (a missing one, or one that is not a regular file such
    as a FIFO or a device, becomes an error row when predicted, not a stop or a hang), folders
    searched recursively by image extension."""
    paths: list[Path] = []
    for argument in arguments:
        if argument.is_dir():
            found = find_images(argument)
            if not found:
                raise PetsError(f"{argument}: no photos in this folder")
            paths += found
        else:
            paths.append(argument)
    return paths
