"""The exported model in MLflow's model registry: the `export` stage logs it as an MLflow model
(signature: photo bytes in, class and probability out; one validation photo as the input
example) and registers a new version of `tracking.model_name` carrying the run's lineage.

The weights are not copied into MLflow unless `tracking.log_models` says so: DVC already keeps
every version of `models/export/model.safetensors` in its cache, by md5, so the logged model
holds the md5 and the project's path and finds the file there (or in `models/export` while it is
still that version). A copy would cost 80-100 MB per run for what DVC has; a path alone (no md5)
would silently load whatever export is there now."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pets.errors import PetsError
from pets.export import SPEC, WEIGHTS
from pets.files import md5_file

if TYPE_CHECKING:
    import numpy as np
    from mlflow.tracking import MlflowClient

MODEL_CODE = Path(__file__).with_name("registry_model.py")


def _no_progress_bars() -> None:
    # MLflow draws a progress bar per artifact download on stderr: noise in a stage's log,
    # and it would bury `pets predict`'s one-line errors.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


ARTIFACT = "model"  # the logged model's name in its run
# The stage run's tags a model version carries: where the model came from.
LINEAGE = (
    "git.commit",
    "git.dirty",
    "pets.version",
    "pets.pipeline",
    "python",
    "torch",
    "torchvision",
    "cuda",
    "host",
    "seed",
    "data.archive_md5",
    "dvc.exp_name",
)


def dvc_cache_file(project: Path, md5: str) -> Path:
    """Where DVC 3 keeps a file with this md5 in the project's default cache."""
    return project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def referenced_weights(config: dict[str, Any]) -> Path:
    """The weights file a logged model names by md5 (its `model_config`): in the project's DVC
    cache, else the project's export while it still has that md5."""
    md5, project = config.get("weights_md5"), config.get("project")
    if not isinstance(md5, str) or not isinstance(project, str):
        raise PetsError("MLflow model: its config names no weights (weights_md5, project)")
    root = Path(project)
    for candidate in (dvc_cache_file(root, md5), root / config.get("export", "") / WEIGHTS):
        if candidate.is_file() and md5_file(candidate) == md5:
            return candidate
    raise PetsError(
        f"MLflow model: its weights (md5 {md5}) are neither in {root}/.dvc/cache nor in "
        f"{root}/{config.get('export')} any more; `dvc checkout` that export, or set "
        "tracking.log_models: true so MLflow keeps a copy"
    )


def example_jpeg(photo: np.ndarray) -> bytes:
    """A photo (uint8 height x width x 3) as JPEG bytes: the logged model's input example."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def signature() -> Any:
    """Photo bytes (`image`) in; the top `class` and its `probability` out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("binary", "image")]),
        outputs=Schema([ColSpec("string", "class"), ColSpec("double", "probability")]),
    )


def requirements() -> list[str]:
    """What the model needs installed, stated rather than inferred (MLflow's inference runs the
    model in a subprocess: seconds per export)."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("torch", "torchvision", "safetensors", "pillow", "numpy", "pandas", "mlflow"):
        try:
            found.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return found


def log_exported(
    client: MlflowClient,
    run_id: str,
    folder: Path,
    project: Path,
    *,
    export: Path | None = None,
    name: str,
    copy_weights: bool,
    example: bytes,
    tags: dict[str, str],
) -> str:
    """Log the export in `folder` (its spec and weights; `export`: the project's export folder
    it was, when `folder` is a copy) as an MLflow model of run `run_id` and register it as a
    new version of `name` with `tags`; returns the version."""
    import mlflow
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from pets.tracking import mlflow_uri

    _no_progress_bars()
    md5 = md5_file(folder / WEIGHTS)
    artifacts = {"spec": str(folder / SPEC)}
    if copy_weights:
        artifacts["weights"] = str(folder / WEIGHTS)
    where = (export or folder).resolve()
    config = {
        "weights_md5": md5,
        "spec_md5": md5_file(folder / SPEC),
        "project": str(project.resolve()),
        "export": str(where.relative_to(project.resolve()))
        if where.is_relative_to(project.resolve())
        else str(where),
    }
    with mlflow_uri(client.tracking_uri):
        info = mlflow.models.Model.log(
            artifact_path=None,
            name=ARTIFACT,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            python_model=str(MODEL_CODE),
            artifacts=artifacts,
            model_config=config,
            signature=signature(),
            input_example=pd.DataFrame({"image": [example]}),
            pip_requirements=requirements(),
        )
        # The registry resolves the version's models:/ source through MLflow's global URI too.
        try:
            client.create_registered_model(
                name, description="pets: the lesson's exported breed classifier"
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = client.create_model_version(
            name,
            source=info.model_uri,
            run_id=run_id,
            tags={**tags, "weights.md5": md5, "weights.copied": str(copy_weights).lower()},
            model_id=info.model_id,
        )
    return str(version.version)


def load_registered(uri: str) -> tuple[Any, Any]:
    """The model and spec behind an MLflow model URI (`models:/pets/3`), loaded through MLflow;
    one line naming the URI when MLflow cannot find or load it."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    from pets.tracking import quiet_mlflow

    quiet_mlflow()
    _no_progress_bars()
    try:
        loaded = mlflow.pyfunc.load_model(uri)
    except MlflowException as exc:
        first = (str(exc).strip().splitlines() or ["not found"])[0][:300]
        raise PetsError(f"{uri}: {first}") from None
    except OSError as exc:
        raise PetsError(f"{uri}: cannot be read ({exc})") from None
    python_model = loaded.unwrap_python_model()
    predictor = getattr(python_model, "predictor", None)
    if predictor is None:
        raise PetsError(f"{uri}: not a pets model")
    return predictor.model.cpu(), predictor.spec
