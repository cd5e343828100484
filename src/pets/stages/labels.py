"""Stage `labels`: the lesson's `get_image_files` and `ImageDataBunch.from_name_re` (or
`from_folder`, `from_csv`, `from_name_func`, `from_lists`: `labels.method`).

Finds the photos under `labels.folder` of the data set, opens each once to check it decodes,
labels them, splits them with a seeded generator (`labels.valid_pct`, `seed`) unless the method
fixes the split, and prints `classes` and `c` as the lesson does.

params: labels.*, seed
inputs: the data set folder (--dataset), the download's manifest (--manifest: the URLs of a
URL list that gave no photo, and why)
outputs: --split (path,label,is_valid; paths relative to the data set folder), --classes (sorted
class names, JSON), --quality (per-class counts, skipped files and why, download failures,
JSON)
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pets import paths
from pets.config import Params
from pets.errors import PetsError
from pets.stage import StageSpec, stage_cli

if TYPE_CHECKING:
    from pets.tracking import Tracker


def main(
    params: Params,
    *,
    dataset: Path,
    manifest: Path | None = None,
    split: Path,
    classes: Path,
    quality: Path,
    threads: int = 1,
    tracker: Tracker | None = None,
) -> None:
    """Label and split the data set; write the split, the classes and the quality summary
    (with the URLs a URL list's download got no photo from, read from `manifest`)."""
    from pets.files import read_json, write_csv, write_json
    from pets.labels import label_dataset
    from pets.tracking import Tracker

    tracker = tracker or Tracker()
    labelled = label_dataset(params.labels, dataset, params.seed, threads)
    summary = labelled.quality()
    if manifest is not None and manifest.is_file():
        summary["download_failures"] = read_json(manifest).get("failures", [])
    write_json(quality, summary)
    write_json(classes, labelled.classes)
    write_csv(split, labelled.split)
    print(f"classes: {labelled.classes}")
    print(f"c: {summary['c']}")
    print(
        f"photos: {summary['images_used']} used ({summary['train']} train, {summary['valid']} "
        f"valid) of {summary['images_found']} found; {summary['skipped_count']} skipped"
    )
    if summary["corrections"]:
        fixed = summary["corrections"]
        print(
            f"corrections ({fixed['file']}): {fixed['relabelled']} labels corrected, "
            f"{fixed['dropped']} photos dropped"
        )
    for reason, count in summary["skipped_by_reason"].items():
        print(f"  skipped {count}: {reason}")
    for label, counts in summary["per_class"].items():
        print(f"  {label}: {counts['train']} train, {counts['valid']} valid")
    if summary["balance"]["note"]:
        print(f"note: {summary['balance']['note']}")
    if summary["classes_without_valid"]:
        print(
            f"warning: no validation photo for {len(summary['classes_without_valid'])} classes, "
            f"e.g. {summary['classes_without_valid'][0]!r}"
        )
    tracker.log_metrics(
        {
            "c": summary["c"],
            "train_images": summary["train"],
            "valid_images": summary["valid"],
            "skipped_images": summary["skipped_count"],
            "corrected_labels": summary["corrections"].get("relabelled", 0),
            "dropped_photos": summary["corrections"].get("dropped", 0),
        }
    )


def label_func_file(spec: str) -> Path:
    """The file of the module named in `module:function`, found without running the module
    (the project folder is searched first, as when it is imported)."""
    module_name = spec.partition(":")[0]
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as exc:
        raise PetsError(f"labels.func: cannot find module {module_name!r} ({exc})") from None
    if found is None or not found.origin or not Path(found.origin).is_file():
        raise PetsError(f"labels.func: cannot find module {module_name!r} in the project")
    return Path(found.origin)


def label_sources(params: Params) -> list[Path]:
    """The user's files that decide the labels: the module behind `labels.func` (found without
    running it), or a labels file kept in the project (`./labels.csv`), and the corrections
    file (`labels.corrections`)."""
    cfg = params.labels
    named = {"csv": cfg.csv_file, "lists": cfg.labels_file}.get(cfg.method, "")
    found = [Path(named)] if named.startswith("./") else []
    if cfg.method == "name_func":
        found = [label_func_file(cfg.func)]
    return found + ([Path(cfg.corrections)] if cfg.corrections else [])


SPEC = StageSpec(
    name="labels",
    params=("labels", "seed"),
    inputs={"dataset": paths.DATASET, "manifest": paths.MANIFEST},
    outputs={"split": paths.SPLIT, "classes": paths.CLASSES, "quality": paths.QUALITY},
    sources=label_sources,
)


def cli(argv: list[str] | None = None) -> None:
    """Command line: `python workflow/scripts/labels.py --help`."""
    stage_cli(SPEC, main, __doc__, argv)


if __name__ == "__main__":
    cli()
