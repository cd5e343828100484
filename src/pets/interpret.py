"""The lesson's `ClassificationInterpretation`, as pure functions over a predictions table.

`predictions_table` turns one inference pass into rows (path, actual, predicted, loss, the
probabilities of the actual and predicted classes, the top 3); everything else (top losses, the
confusion matrix, most confused pairs, per-class scores, bootstrap intervals, what changed
between two models) is computed from such tables, never by running a model again."""

from __future__ import annotations

import numpy as np
import pandas as pd

TOP = 3


def predictions_table(
    paths: list[str], targets: np.ndarray, log_probs: np.ndarray, classes: list[str]
) -> pd.DataFrame:
    """One row per validation photo from its log-probabilities (photos x classes)."""
    probs = np.exp(log_probs)
    rows = np.arange(len(paths))
    predicted = log_probs.argmax(axis=1)
    order = np.argsort(-log_probs, axis=1, kind="stable")[:, :TOP]
    names = np.asarray(classes, dtype=object)
    table = pd.DataFrame(
        {
            "path": paths,
            "actual": names[targets],
            "predicted": names[predicted],
            "loss": -log_probs[rows, targets],
            "p_actual": probs[rows, targets],
            "p_predicted": probs[rows, predicted],
        }
    )
    for rank in range(min(TOP, len(classes))):
        table[f"top{rank + 1}"] = names[order[:, rank]]
        table[f"p_top{rank + 1}"] = probs[rows, order[:, rank]]
    return table


def top_losses(predictions: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k photos with the largest loss, largest first (ties by path)."""
    ranked = predictions.sort_values(["loss", "path"], ascending=[False, True], kind="stable")
    return ranked.head(k).reset_index(drop=True)


def confusion_matrix(predictions: pd.DataFrame, classes: list[str]) -> np.ndarray:
    """Counts with rows = actual class, columns = predicted class, in `classes` order."""
    index = {name: i for i, name in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(
        matrix,
        (
            predictions["actual"].map(index).to_numpy(),
            predictions["predicted"].map(index).to_numpy(),
        ),
        1,
    )
    return matrix


def most_confused(matrix: np.ndarray, classes: list[str], min_val: int = 2) -> pd.DataFrame:
    """The lesson's `most_confused(min_val)`: off-diagonal (actual, predicted, count) with
    count >= min_val, most frequent first (ties by names)."""
    actual, predicted = np.nonzero(matrix)
    rows = [
        (classes[a], classes[p], int(matrix[a, p]))
        for a, p in zip(actual, predicted, strict=True)
        if a != p and matrix[a, p] >= min_val
    ]
    rows.sort(key=lambda row: (-row[2], row[0], row[1]))
    return pd.DataFrame(rows, columns=["actual", "predicted", "count"])


def per_class(predictions: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Precision, recall, F1, support and error rate (1 - recall) for every class (a class
    never predicted, or never present, scores 0 where its ratio is undefined, as scikit-learn's
    `zero_division=0`). Counted with numpy: importing scikit-learn costs the stage 0.7 s."""
    actual = predictions["actual"].to_numpy()
    predicted = predictions["predicted"].to_numpy()
    names = np.asarray(classes, dtype=object)[:, None]
    is_actual, is_predicted = actual[None, :] == names, predicted[None, :] == names
    hits = (is_actual & is_predicted).sum(axis=1)
    support, chosen = is_actual.sum(axis=1), is_predicted.sum(axis=1)

    def ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
        return np.divide(top, bottom, out=np.zeros(len(classes)), where=bottom > 0)

    recall = ratio(hits, support)
    return pd.DataFrame(
        {
            "class": classes,
            "precision": ratio(hits, chosen),
            "recall": recall,
            "f1": ratio(2 * hits, support + chosen),  # 2tp / (2tp + fp + fn)
            "support": support.astype(int),
            "error_rate": np.where(support > 0, 1 - recall, np.nan),
        }
    )


def bootstrap_interval(
    correct: np.ndarray, samples: int, confidence: float, seed: int, chunk: int = 200
) -> tuple[float, float]:
    """A percentile bootstrap interval for the error rate of `correct` (bools): resample the
    validation photos with replacement `samples` times, in chunks to bound memory."""
    errors = (~np.asarray(correct, dtype=bool)).astype(np.float64)
    if len(errors) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    rates = []
    for start in range(0, samples, chunk):
        picks = rng.integers(0, len(errors), size=(min(chunk, samples - start), len(errors)))
        rates.append(errors[picks].mean(axis=1))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(np.concatenate(rates), [tail, 100 - tail])
    return float(low), float(high)


def summary(
    predictions: pd.DataFrame, samples: int, confidence: float, seed: int
) -> dict[str, float]:
    """Error rate and accuracy with their bootstrap interval."""
    correct = (predictions["actual"] == predictions["predicted"]).to_numpy()
    low, high = bootstrap_interval(correct, samples, confidence, seed)
    error = float(1 - correct.mean()) if len(correct) else float("nan")
    return {
        "error_rate": error,
        "accuracy": 1 - error,
        "error_rate_low": low,
        "error_rate_high": high,
        "confidence": confidence,
        "valid_images": len(correct),
    }


def flips(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Validation photos whose correctness changed between two models' predictions:
    `change` is 'fixed' (wrong -> right) or 'broken' (right -> wrong)."""
    joined = before.merge(after, on=["path", "actual"], suffixes=("_before", "_after"))
    right_before = joined["predicted_before"] == joined["actual"]
    right_after = joined["predicted_after"] == joined["actual"]
    changed = joined[right_before != right_after].copy()
    changed["change"] = np.where(right_after[right_before != right_after], "fixed", "broken")
    columns = ["path", "actual", "predicted_before", "predicted_after", "change"]
    return changed[columns].sort_values(["change", "path"]).reset_index(drop=True)


def class_changes(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """Per-class error rates of two `per_class` tables and their difference, largest change
    first."""
    joined = before[["class", "error_rate"]].merge(
        after[["class", "error_rate"]], on="class", suffixes=("_before", "_after")
    )
    joined["change"] = joined["error_rate_after"] - joined["error_rate_before"]
    order = joined["change"].abs().sort_values(ascending=False, kind="stable").index
    return joined.loc[order].reset_index(drop=True)
