"""Stage `labels`: the lesson's `get_image_files` and `ImageDataBunch.from_name_re` (or
`from_folder`, `from_csv`, `from_name_func`, `from_lists`: `labels.method`).

Finds the photos under `labels.folder` of the data set, opens each once to check it decodes,
labels them, splits them with a seeded generator (`labels.valid_pct`, `seed`) unless the method
fixes the split, and prints `classes` and `c` as the lesson does.

params: labels.*, seed
inputs: the data set folder (--dataset)
outputs: --split (path,label,is_valid; paths relative to the data set folder), --classes (sorted
class names, JSON), --quality (per-class counts, skipped files and why, JSON)
"""

from __future__ import annotations

from pathlib import Path

from pets.config import Params
from pets.files import write_csv, write_json
from pets.labels import label_dataset
from pets.stage import run_stage, stage_arguments, stage_parser
from pets.tracking import Tracker


def main(
    params: Params,
    *,
    dataset: Path,
    split: Path,
    classes: Path,
    quality: Path,
    threads: int = 1,
    tracker: Tracker | None = None,
) -> None:
    """Label and split the data set; write the split, the classes and the quality summary."""
    tracker = tracker or Tracker()
    labelled = label_dataset(params.labels, dataset, params.seed, threads)
    summary = labelled.quality()
    write_json(quality, summary)
    write_json(classes, labelled.classes)
    write_csv(split, labelled.split)
    print(f"classes: {labelled.classes}")
    print(f"c: {summary['c']}")
    print(
        f"photos: {summary['images_used']} used ({summary['train']} train, {summary['valid']} "
        f"valid) of {summary['images_found']} found; {summary['skipped_count']} skipped"
    )
    for reason, count in summary["skipped_by_reason"].items():
        print(f"  skipped {count}: {reason}")
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
        }
    )


def cli(argv: list[str] | None = None) -> None:
    """Command line: `python workflow/scripts/labels.py --help`."""
    parser = stage_parser(__doc__)
    parser.add_argument(
        "--dataset", type=Path, default=Path("data/dataset"), help="data set folder"
    )
    parser.add_argument("--split", type=Path, default=Path("data/split.csv"))
    parser.add_argument("--classes", type=Path, default=Path("data/classes.json"))
    parser.add_argument("--quality", type=Path, default=Path("reports/data_quality.json"))
    parser.add_argument(
        "--threads", type=int, default=1, help="photos checked in parallel; 0: every core"
    )
    args = parser.parse_args(argv)
    run_stage(
        "labels",
        args.params,
        lambda params, tracker: main(params, tracker=tracker, **stage_arguments(args)),
        inputs=[args.dataset],
        outputs=[args.split, args.classes, args.quality],
    )


if __name__ == "__main__":
    cli()
