"""Stage `export`: the lesson's `learn.export()`, without pickle.

Writes the model named by `export.model` (resnet50, the lesson's best, by default) as
model.safetensors plus model.json (arch, classes, size, presize, normalisation, head layout):
`pets predict models/export PHOTOS...` and `pets.export.load_exported` load it without this
project's training code and without unpickling anything. With `export.pt2`, `export.onnx` and
`export.torchscript` it also writes model.pt2 (a torch.export program), model.onnx and
model.torchscript.pt. Each copy (the reloaded safetensors model too) is run on up to
`export.check_images` validation photos against the checkpoint's PyTorch model; the largest
absolute difference in logits must stay within `export.tolerance`, or the stage fails.

params: export.*
inputs: --checkpoint (models/<export.model>.pth), --split, --classes, --cache
outputs: --out (models/export/), --checks (reports/export.json: the differences)

With tracking on, the export is also logged as an MLflow model (photo bytes in, class and
probability out) and registered as a new version of `tracking.model_name` (pets.registry):
`pets predict models:/pets/<version>` and `mlflow models serve -m models:/pets/<version>`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pets import paths
from pets.config import Params
from pets.errors import PetsError
from pets.stage import StageSpec, stage_cli

if TYPE_CHECKING:
    import torch

    from pets.tracking import Tracker


def validation_batch(
    spec: dict, split: Path, classes: Path, cache: Path, count: int
) -> torch.Tensor:
    """Up to `count` validation photos as the model sees them (float32, NCHW, on the CPU)."""
    import torch

    from pets.cache import PixelCache
    from pets.data import Loader, load_subsets

    pixels = PixelCache(cache)
    _, valid, _ = load_subsets(split, classes, pixels)
    loader = Loader(
        pixels,
        valid,
        bs=count,
        size=spec["size"],
        device=torch.device("cpu"),
        mean=tuple(spec["mean"]),
        std=tuple(spec["std"]),
        augment_params=None,
        seed=0,
    )
    return next(iter(loader))[0].contiguous()


def example_photo(split: Path, classes: Path, cache: Path) -> bytes:
    """The first validation photo as JPEG bytes (the registered model's input example)."""
    from pets.cache import PixelCache
    from pets.data import load_subsets
    from pets.registry import example_jpeg

    pixels = PixelCache(cache)
    _, valid, _ = load_subsets(split, classes, pixels)
    return example_jpeg(pixels.photos(valid.rows[:1])[0])


def exporting(kind: str, export: Callable[[], None]) -> None:
    """Run one exporter; its failure becomes one line naming the parameter that asked for it."""
    try:
        export()
    except Exception as exc:  # the exporters raise many types; all mean "this copy failed"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise PetsError(f"export.{kind}: the exporter failed ({first}); set it to false") from None


def main(
    params: Params,
    *,
    checkpoint: Path,
    split: Path,
    classes: Path,
    cache: Path,
    out: Path,
    checks: Path,
    tracker: Tracker | None = None,
) -> None:
    """Export, reload and check every copy of the model."""
    import torch

    from pets.export import (
        ONNX,
        PROGRAM,
        TORCHSCRIPT,
        WEIGHTS,
        load_exported,
        run_onnx,
        run_program,
        run_torchscript,
        save_weights,
        spec_of,
        to_onnx,
        to_program,
        to_torchscript,
        trace,
    )
    from pets.export import SPEC as SPEC_FILE
    from pets.files import atomic_path, write_json
    from pets.learner import load_trained_model
    from pets.tracking import Tracker

    tracker = tracker or Tracker()
    cfg = params.export
    model, info = load_trained_model(checkpoint, "export")
    spec = spec_of(info)
    images = validation_batch(spec, split, classes, cache, cfg.check_images)
    with torch.no_grad():
        reference = model(images).numpy()
    with atomic_path(out) as folder:
        save_weights(model, spec, folder)
        copies = {"safetensors": lambda: load_exported(folder)[0](images).detach().numpy()}
        # A batch of two, so the exporters keep the batch dimension free.
        pair = torch.cat([images[:1], images[:1]]) if len(images) < 2 else images[:2]
        traced: list[torch.export.ExportedProgram] = []  # one trace for pt2 and ONNX

        def program() -> torch.export.ExportedProgram:
            if not traced:
                traced.append(trace(model, pair))
            return traced[0]

        if cfg.pt2:
            exporting("pt2", lambda: to_program(model, pair, folder / PROGRAM, spec, program()))
            copies["pt2"] = lambda: run_program(folder / PROGRAM, images)
        if cfg.torchscript:
            exporting(
                "torchscript", lambda: to_torchscript(model, images[:1], folder / TORCHSCRIPT)
            )
            copies["torchscript"] = lambda: run_torchscript(folder / TORCHSCRIPT, images)
        if cfg.onnx:
            exporting("onnx", lambda: to_onnx(model, pair, folder / ONNX, program()))
            copies["onnx"] = lambda: run_onnx(folder / ONNX, images)
        with torch.no_grad():
            differences = {
                name: float(abs(run() - reference).max()) for name, run in copies.items()
            }
        # `not <=`: a NaN difference fails too.
        failed = {n: v for n, v in differences.items() if not v <= cfg.tolerance}
        if failed:
            raise PetsError(
                f"export: {', '.join(failed)} differ from the PyTorch model by up to "
                f"{max(failed.values()):.2e} (export.tolerance {cfg.tolerance:.0e})"
            )
    write_json(
        checks,
        {
            "model": checkpoint.stem,
            "images": len(images),
            "tolerance": cfg.tolerance,
            "max_abs_difference": differences,
        },
    )
    for name, value in differences.items():
        print(f"{name}: max |logit difference| {value:.2e} on {len(images)} validation photos")
    tracker.log_metrics({f"export_max_abs_{name}": value for name, value in differences.items()})
    tracker.log_artifact(checks)
    if tracker.tracked:  # the export becomes a new version of the project's registered model
        tracker.register_model(out, [SPEC_FILE, WEIGHTS], example_photo(split, classes, cache))
        print(f"registered as a new version of MLflow model {params.tracking.model_name!r}")


SPEC = StageSpec(
    name="export",
    params=("export",),
    inputs={
        "checkpoint": paths.for_model(paths.CHECKPOINT, "${export.model}"),
        "split": paths.SPLIT,
        "classes": paths.CLASSES,
        "cache": paths.CACHE,
    },
    outputs={"out": paths.EXPORT, "checks": paths.EXPORT_CHECKS},
    folders=frozenset({"out"}),
    metrics=frozenset({"checks"}),
)


def cli(argv: list[str] | None = None) -> None:
    """Command line: `python workflow/scripts/export.py --help`."""
    stage_cli(SPEC, main, __doc__, argv)


if __name__ == "__main__":
    cli()
