"""The exported model as MLflow sees it (an MLflow "model from code": MLflow copies this file
into each logged model and runs it to load the model; nothing is pickled).

Input: a table with an `image` column of photo bytes (JPEG, PNG, ...; base64 in a JSON request
to `mlflow models serve`). Output: per photo its top `class` and that class's `probability`.
The weights are the export's `model.safetensors`: copied into the logged model with
`tracking.log_models: true`, else found by their md5 in the project's DVC cache or its
`models/export` (see `pets.registry`)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class ExportedPets(PythonModel):
    """A pets export behind MLflow's pyfunc interface: photo bytes in, class and probability
    out, decoded and cropped as `pets predict` does."""

    def load_context(self, context: Any) -> None:
        """Load the spec and the weights (from the artifacts, or by md5 from the project)."""
        import torch  # noqa: F401  (imported before pets.predict so errors name torch first)

        from pets.export import load_exported_files
        from pets.predict import Predictor
        from pets.registry import referenced_weights

        artifacts = dict(context.artifacts or {})
        config = dict(context.model_config or {})
        weights = (
            Path(artifacts["weights"]) if "weights" in artifacts else referenced_weights(config)
        )
        model, spec = load_exported_files(Path(artifacts["spec"]), weights)
        self.predictor = Predictor.from_model(model, spec, device=config.get("device", "auto"))

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        """The top class and its probability for each row's `image` bytes."""
        import torch

        from pets.images import load_onto_canvas

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "image" not in frame.columns:
            raise ValueError("input: an `image` column of photo bytes is required")
        presize = self.predictor.spec.presize
        canvases, sizes = [], []
        for row, data in enumerate(frame["image"]):
            if isinstance(data, str):  # a JSON client that sent base64 without a schema
                import base64

                data = base64.b64decode(data)
            canvas = np.zeros((presize, presize, 3), np.uint8)
            try:
                sizes.append(load_onto_canvas(io.BytesIO(bytes(data)), canvas))
            except Exception as exc:  # whatever the decoder raises, this row is not a photo
                raise ValueError(f"input row {row}: not a readable image ({exc})") from None
            canvases.append(canvas)
        if not canvases:
            return pd.DataFrame({"class": pd.Series([], dtype=str), "probability": []})
        probs = self.predictor.probabilities(
            torch.from_numpy(np.stack(canvases)), torch.tensor(sizes, dtype=torch.float32)
        )
        values, indices = probs.max(dim=1)
        classes = self.predictor.classes
        return pd.DataFrame(
            {
                "class": [classes[i] for i in indices.tolist()],
                "probability": values.double().numpy(),
            }
        )


mlflow.models.set_model(ExportedPets())
