"""Where every stage's outputs live, relative to the project root: written here once, read by the
stage specs (and through them by the Snakefile, dvc.yaml and each stage's command line).

`{model}` stands for one of the trained models (`MODELS`); Snakemake fills it from a wildcard,
DVC from its `foreach` item, a person with `--name`."""

from __future__ import annotations

MODELS = ("stage-1", "stage-2", "resnet50")  # the lesson's three trained models, in order

DATASET = "data/dataset"
MANIFEST = "data/dataset.json"
SPLIT = "data/split.csv"
CLASSES = "data/classes.json"
QUALITY = "reports/data_quality.json"
CACHE = "data/cache"
SHOW_BATCH = "reports/show_batch.png"
LR_FIND_CURVE = "reports/lr_find.csv"
LR_FIND_FIGURE = "reports/lr_find.png"
LR_FIND = "metrics/lr_find.json"

CHECKPOINT = "models/{model}.pth"
METRICS = "metrics/{model}.json"
HISTORY = "reports/{model}/history.csv"
MODEL_INFO = "reports/{model}/model.json"
PREDICTIONS = "reports/{model}/predictions.csv"
INTERPRETATION = "reports/{model}"  # interpret's figures and tables
TOP_LOSSES = "reports/{model}/top_losses.png"
CONFUSION = "reports/{model}/confusion_matrix.png"
CONFUSION_NORMALIZED = "reports/{model}/confusion_matrix_normalized.png"
CONFUSION_TABLE = "reports/{model}/confusion_matrix.csv"
MOST_CONFUSED = "reports/{model}/most_confused.csv"
PER_CLASS = "reports/{model}/per_class.csv"
INTERPRET_METRICS = "metrics/interpret/{model}.json"

REPORTS = "reports"
METRICS_FOLDER = "metrics"
REPORT = "reports/index.html"
FLIPS = "reports/flips.csv"
EXPORT = "models/export"
EXPORT_CHECKS = "reports/export.json"

# Each stage's record of what it reads that no other stage makes (its params and the content of
# the user's own files: an archive, a label function's module, a weights file); see pets.dag.
INPUTS = "data/inputs/{stage}.json"
LOGS = "logs/{stage}.log"


def for_model(template: str, model: str) -> str:
    """A path of one trained model: `for_model(CHECKPOINT, "stage-1")` is models/stage-1.pth."""
    return template.replace("{model}", model)
