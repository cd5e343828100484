"""ClassificationInterpretation as pure functions over predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pets.interpret import (
    bootstrap_interval,
    class_changes,
    confusion_matrix,
    flips,
    most_confused,
    per_class,
    predictions_table,
    summary,
    top_losses,
)

CLASSES = ["cat", "dog", "fox"]


@pytest.fixture
def predictions() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(60, 3))
    targets = rng.integers(0, 3, size=60)
    logits[np.arange(60), targets] += 1.5  # mostly right
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return predictions_table([f"img/{i:02d}.jpg" for i in range(60)], targets, log_probs, CLASSES)


def test_predictions_table(predictions: pd.DataFrame) -> None:
    row = predictions.iloc[0]
    assert row["loss"] == pytest.approx(-np.log(row["p_actual"]))
    assert row["top1"] == row["predicted"] and row["p_top1"] == row["p_predicted"]
    assert row["p_top1"] >= row["p_top2"] >= row["p_top3"]
    total = predictions[["p_top1", "p_top2", "p_top3"]].sum(axis=1)
    assert np.allclose(total, 1.0)  # three classes: the top 3 are all of them


def test_top_losses_are_the_largest(predictions: pd.DataFrame) -> None:
    worst = top_losses(predictions, 9)
    assert len(worst) == 9 and worst["loss"].is_monotonic_decreasing
    assert worst["loss"].min() >= predictions["loss"].nlargest(9).min()


def test_confusion_and_most_confused(predictions: pd.DataFrame) -> None:
    matrix = confusion_matrix(predictions, CLASSES)
    assert matrix.sum() == len(predictions)
    assert np.trace(matrix) == (predictions["actual"] == predictions["predicted"]).sum()
    assert matrix[0].sum() == (predictions["actual"] == "cat").sum()  # rows are actual classes
    confused = most_confused(matrix, CLASSES, min_val=2)
    assert confused["count"].is_monotonic_decreasing and (confused["count"] >= 2).all()
    off_diagonal = {
        (CLASSES[a], CLASSES[p]): matrix[a, p]
        for a in range(3)
        for p in range(3)
        if a != p and matrix[a, p] >= 2
    }
    assert {(r.actual, r.predicted): r.count for r in confused.itertuples()} == off_diagonal
    assert most_confused(np.array([[5, 2], [2, 5]]), ["a", "b"], 2).values.tolist() == [
        ["a", "b", 2],
        ["b", "a", 2],
    ]


def test_per_class_scores(predictions: pd.DataFrame) -> None:
    table = per_class(predictions, [*CLASSES, "owl"])
    assert table["support"].sum() == len(predictions)
    cat = table.set_index("class").loc["cat"]
    actual_cat = predictions["actual"] == "cat"
    recall = (predictions["predicted"][actual_cat] == "cat").mean()
    assert cat["recall"] == pytest.approx(recall)
    assert cat["error_rate"] == pytest.approx(1 - recall)
    assert np.isnan(table.set_index("class").loc["owl", "error_rate"])
    # The same numbers as scikit-learn's, which the stage no longer imports (0.7 s).
    from sklearn.metrics import precision_recall_fscore_support

    expected = precision_recall_fscore_support(
        predictions["actual"], predictions["predicted"], labels=[*CLASSES, "owl"], zero_division=0
    )
    for column, values in zip(("precision", "recall", "f1", "support"), expected, strict=True):
        np.testing.assert_allclose(table[column].to_numpy(dtype=float), values.astype(float))


def test_bootstrap_interval_brackets_the_error_rate(predictions: pd.DataFrame) -> None:
    numbers = summary(predictions, 1000, 0.95, seed=2)
    assert numbers["error_rate_low"] <= numbers["error_rate"] <= numbers["error_rate_high"]
    assert numbers["error_rate"] + numbers["accuracy"] == pytest.approx(1)
    assert summary(predictions, 1000, 0.95, seed=2) == numbers  # seeded
    assert bootstrap_interval(np.ones(50, bool), 500, 0.95, 0) == (0.0, 0.0)
    wide = bootstrap_interval(np.arange(20) % 2 == 0, 2000, 0.95, 0)
    assert wide[0] < 0.5 < wide[1]


def test_flips_between_models(predictions: pd.DataFrame) -> None:
    after = predictions.copy()
    wrong = predictions.index[predictions["actual"] != predictions["predicted"]][:2]
    right = predictions.index[predictions["actual"] == predictions["predicted"]][:1]
    after.loc[wrong, "predicted"] = after.loc[wrong, "actual"]
    after.loc[right, "predicted"] = next(c for c in CLASSES if c != after.loc[right[0], "actual"])
    changed = flips(predictions, after)
    assert sorted(changed[changed["change"] == "fixed"]["path"]) == sorted(
        predictions.loc[wrong, "path"]
    )
    assert changed[changed["change"] == "broken"]["path"].tolist() == [
        predictions.loc[right[0], "path"]
    ]
    deltas = class_changes(per_class(predictions, CLASSES), per_class(after, CLASSES))
    assert deltas["change"].abs().is_monotonic_decreasing
