"""Labels for every photo (the lesson's five `ImageDataBunch.from_*` methods) and the split.

Each labelling method is a pure function from paths to labels; `label_dataset` finds the photos,
checks each decodes, labels them, splits them and says what it left out and why."""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from pets.config import LabelsParams
from pets.errors import PetsError
from pets.files import not_regular
from pets.images import IMAGE_EXTENSIONS, ImageCheck, check_image, find_images


def label_name_re(paths: Iterable[str], pattern: str) -> dict[str, str | None]:
    """Label = group 1 of `pattern` searched in '/' + the path (so the lesson's leading '/'
    anchors the file name); None where it does not match."""
    regex = re.compile(pattern)
    labels: dict[str, str | None] = {}
    for path in paths:
        match = regex.search("/" + path)
        labels[path] = match.group(1) if match and match.group(1) else None
    return labels


def label_folder(paths: Iterable[str], train: str, valid: str) -> dict[str, tuple[str, bool]]:
    """ImageNet layout: label = parent folder, split by the top folder (`train`/`valid`); photos
    outside those two folders, or directly inside them, are not returned. With `train` empty,
    the layout people make by hand (`<label>/*.jpg`, fastai's `from_folder(valid_pct=...)`):
    label = parent folder, every photo in a folder returned with `False` (the split is drawn
    later); photos at the top, in no label folder, are not returned."""
    labels = {}
    for path in paths:
        parts = path.split("/")
        if not train:
            if len(parts) >= 2:
                labels[path] = (parts[-2], False)
        elif len(parts) >= 3 and parts[0] in (train, valid):
            labels[path] = (parts[-2], parts[0] == valid)
    return labels


def _readable(path: Path, key: str) -> None:
    """Refuse, before opening it, a labels file that is a FIFO, a device or a folder (reading
    would block or fail obscurely); a missing one is left to the caller's message."""
    why = not_regular(path)
    if why and why != "not found":
        raise PetsError(f"{key}: {path} is {why}, not a regular file")


def read_label_csv(csv_path: Path) -> pd.DataFrame:
    """A `name,label[,is_valid]` table, checked: no empty or duplicate names, no empty labels."""
    _readable(csv_path, "labels.csv_file")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise PetsError(f"labels.csv_file: {csv_path} not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PetsError(f"labels.csv_file: {csv_path} is not a readable CSV ({exc})") from None
    missing = {"name", "label"} - set(table.columns)
    if missing:
        raise PetsError(
            f"labels.csv_file: {csv_path} needs columns name,label[,is_valid]; "
            f"missing {', '.join(sorted(missing))} (has {', '.join(table.columns)})"
        )
    table["name"] = table["name"].str.strip()
    table["label"] = table["label"].str.strip()
    for column, what in (("name", "an empty name"), ("label", "an empty label")):
        empty = table.index[table[column] == ""]
        if len(empty):
            raise PetsError(f"labels.csv_file: {csv_path} row {empty[0] + 2} has {what}")
    duplicated = table["name"][table["name"].duplicated()]
    if len(duplicated):
        raise PetsError(
            f"labels.csv_file: {csv_path} lists {duplicated.iloc[0]!r} more than once "
            f"({len(duplicated)} duplicate names)"
        )
    if "is_valid" in table.columns:
        flags = (
            table["is_valid"]
            .str.lower()
            .map({"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False})
        )
        if flags.isna().any():
            bad = table["is_valid"][flags.isna()].iloc[0]
            raise PetsError(f"labels.csv_file: {csv_path} is_valid must be true/false, got {bad!r}")
        table["is_valid"] = flags.astype(bool)
    return table


def read_label_list(labels_file: Path, count: int) -> list[str]:
    """One label per line, aligned with the sorted list of `count` photos."""
    _readable(labels_file, "labels.labels_file")
    try:
        lines = labels_file.read_bytes().decode("utf-8").splitlines()
    except FileNotFoundError:
        raise PetsError(f"labels.labels_file: {labels_file} not found") from None
    except UnicodeDecodeError as exc:
        raise PetsError(
            f"labels.labels_file: {labels_file} is not UTF-8 text (byte {exc.start})"
        ) from None
    while lines and not lines[-1].strip():
        lines.pop()
    labels = [line.strip() for line in lines]
    if len(labels) != count:
        raise PetsError(
            f"labels.labels_file: {labels_file} has {len(labels)} labels for {count} photos; "
            "it needs one line per photo, in sorted path order"
        )
    if "" in labels:
        raise PetsError(f"labels.labels_file: {labels_file} line {labels.index('') + 1} is empty")
    return labels


def label_file(dataset: Path, name: str) -> Path:
    """A labels file (`labels.csv_file`, `labels.labels_file`): `./name` is a file of the
    project (kept beside params.yaml, tracked by its content), any other name is in the data
    set."""
    return Path(name) if name.startswith("./") else dataset / name


def import_label_func(spec: str) -> Callable[[Path], str]:
    """The function named `module:function`; the project folder is importable."""
    module_name, _, func_name = spec.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may fail in any way while importing
        raise PetsError(f"labels.func: cannot import {module_name!r} ({exc})") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise PetsError(f"labels.func: {module_name!r} has no function {func_name!r}")
    return func


def random_split(count: int, valid_pct: float, seed: int) -> list[bool]:
    """fastai's `RandomSplitter`: a seeded permutation; its first `int(valid_pct * count)`
    items are validation. Uses its own generator, never the global RNG state (torch's
    permutation, so a seed gives the split it always gave; imported here: the methods that fix
    the split never need torch)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(count, generator=generator).tolist()
    is_valid = [False] * count
    for index in order[: int(valid_pct * count)]:
        is_valid[index] = True
    return is_valid


def stratified_split(labels: list[str], valid_pct: float, seed: int) -> list[bool]:
    """`valid_pct` of each class held out (rounded, at least one photo, never all of them), so
    a small or uneven data set keeps every class in both sets; classes are drawn in sorted
    order from one seeded generator of their own. A class of fewer than 2 photos is refused."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    by_class: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    is_valid = [False] * len(labels)
    for label in sorted(by_class):
        members = by_class[label]
        if len(members) < 2:
            raise PetsError(
                f"labels.stratify: class {label!r} has {len(members)} photo; a stratified "
                "split needs at least 2 per class (one to train, one to validate)"
            )
        held = min(len(members) - 1, max(1, round(valid_pct * len(members))))
        for position in torch.randperm(len(members), generator=generator)[:held].tolist():
            is_valid[members[position]] = True
    return is_valid


# A class more than this many times the size of the smallest gets a note in the report: the
# model then learns mostly the big classes, and the error rate hides the small ones.
IMBALANCE = 5.0


def balance(per_class: dict[str, dict[str, int]]) -> dict:
    """The largest and smallest class by photo count, their ratio, and a note when the ratio
    is above `IMBALANCE`."""
    totals = {label: n["train"] + n["valid"] for label, n in per_class.items()}
    largest = max(totals, key=lambda label: (totals[label], label))
    smallest = min(totals, key=lambda label: (totals[label], label))
    ratio = totals[largest] / max(1, totals[smallest])
    note = ""
    if ratio > IMBALANCE:
        note = (
            f"the largest class ({largest!r}, {totals[largest]} photos) has {ratio:.1f}x the "
            f"photos of the smallest ({smallest!r}, {totals[smallest]}): add photos to the small "
            "classes, and read the per-class error rates, not only the overall one"
        )
    return {
        "largest": [largest, totals[largest]],
        "smallest": [smallest, totals[smallest]],
        "ratio": round(ratio, 3),
        "note": note,
    }


def read_corrections(path: Path) -> dict[str, tuple[str | None, int]]:
    """`labels.corrections`: photo path (relative to the data set folder) -> (new label, or
    None to drop it; its row number). A missing file is no corrections (`pets clean` creates
    it); rows are `path,label` or `path,`; a repeated path is an error naming both rows."""
    key = "labels.corrections"
    why = not_regular(path)
    if why == "not found":
        return {}
    if why:
        raise PetsError(f"{key}: {path} is {why}, not a regular file")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return {}
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise PetsError(f"{key}: {path} is not a readable CSV ({exc})") from None
    if list(table.columns) != ["path", "label"]:
        raise PetsError(
            f"{key}: {path} needs the columns path,label (has {', '.join(table.columns)})"
        )
    corrections: dict[str, tuple[str | None, int]] = {}
    for index, (photo, label) in enumerate(zip(table["path"], table["label"], strict=True)):
        row = index + 2
        photo, label = photo.strip(), label.strip()
        if not photo:
            raise PetsError(f"{key}: {path} row {row} has no path")
        if photo in corrections:
            raise PetsError(
                f"{key}: {path} row {row} names {photo!r} again (row {corrections[photo][1]})"
            )
        corrections[photo] = (label or None, row)
    return corrections


def apply_corrections(
    split: pd.DataFrame, corrections: dict[str, tuple[str | None, int]], dataset: Path, path: Path
) -> tuple[pd.DataFrame, int, int]:
    """The split with `corrections` applied after it was drawn (so fixing one label moves no
    other photo between train and valid); returns it and the counts relabelled and dropped.
    A photo that does not exist, or a label not among the classes, is an error naming the row;
    a photo left out already (it does not decode) is passed over."""
    key = "labels.corrections"
    classes = set(split["label"])
    labelled = dict(zip(split["path"], split.index, strict=True))
    split = split.copy()
    drop, relabelled = [], 0
    for photo, (label, row) in corrections.items():
        if photo not in labelled:
            if (dataset / photo).is_file() and not PurePosixPath(photo).is_absolute():
                continue
            raise PetsError(f"{key}: {path} row {row}: no photo {photo!r} in {dataset}")
        if label is None:
            drop.append(labelled[photo])
        elif label not in classes:
            raise PetsError(
                f"{key}: {path} row {row}: label {label!r} is not one of the "
                f"{len(classes)} classes ({', '.join(sorted(classes)[:8])}"
                f"{', ...' if len(classes) > 8 else ''})"
            )
        elif split.at[labelled[photo], "label"] != label:
            split.at[labelled[photo], "label"] = label
            relabelled += 1
    return split.drop(index=drop).reset_index(drop=True), relabelled, len(drop)


@dataclass
class Labelled:
    """The labels stage's result: the split table and what was left out, and why."""

    split: pd.DataFrame
    found: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    corrections: dict = field(default_factory=dict)  # file, relabelled, dropped

    @property
    def classes(self) -> list[str]:
        """Sorted class names (the lesson's `data.classes`)."""
        return sorted(self.split["label"].unique())

    def quality(self) -> dict:
        """Per-class train/valid counts and every skipped file with its reason."""
        counts = self.split.groupby(["label", "is_valid"]).size().unstack(fill_value=0)
        per_class = {
            label: {
                "train": int(counts.loc[label].get(False, 0)),
                "valid": int(counts.loc[label].get(True, 0)),
            }
            for label in self.classes
        }
        reasons = Counter(reason.split(" (")[0] for _, reason in self.skipped)
        return {
            "images_found": self.found,
            "images_used": len(self.split),
            "train": int((~self.split["is_valid"]).sum()),
            "valid": int(self.split["is_valid"].sum()),
            "c": len(self.classes),
            "classes": self.classes,
            "per_class": per_class,
            "classes_without_valid": [c for c, n in per_class.items() if n["valid"] == 0],
            "balance": balance(per_class),
            "skipped_count": len(self.skipped),
            "skipped_by_reason": dict(sorted(reasons.items())),
            "skipped": [{"path": path, "reason": reason} for path, reason in self.skipped],
            "corrections": self.corrections,
        }


def check_images(root: Path, paths: list[str], threads: int) -> dict[str, ImageCheck]:
    """Open every photo once, in parallel (Pillow releases the GIL while decoding)."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        checks = pool.map(lambda path: check_image(root / path), paths, chunksize=16)
        return dict(zip(paths, checks, strict=True))


def _labels_by_method(
    params: LabelsParams, dataset: Path, root: Path, paths: list[str]
) -> tuple[dict[str, str | None], dict[str, bool] | None]:
    """Labels (None = unmatched) and, where the method fixes it, the split."""
    if params.method == "name_re":
        labels = label_name_re(paths, params.pattern)
        if not any(labels.values()):
            raise PetsError(
                f"labels.pattern: {params.pattern!r} matches none of the {len(paths)} photos "
                f"under {root}, e.g. '/{paths[0]}'"
            )
        return labels, None
    if params.method == "folder":
        pairs = label_folder(paths, params.train_folder, params.valid_folder)
        if not params.train_folder:  # <label>/*.jpg: split by valid_pct
            if not pairs:
                raise PetsError(f"labels.train_folder: no photos in {root}/<label>/")
            return {p: (pairs[p][0] if p in pairs else None) for p in paths}, None
        for key, name in (
            ("train_folder", params.train_folder),
            ("valid_folder", params.valid_folder),
        ):
            if not any(p.split("/")[0] == name for p in pairs):
                raise PetsError(f"labels.{key}: no photos in {root / name}/<label>/")
        labels = {p: (pairs[p][0] if p in pairs else None) for p in paths}
        return labels, {p: pairs[p][1] for p in pairs}
    if params.method == "csv":
        csv_path = label_file(dataset, params.csv_file)
        table = read_label_csv(csv_path)
        known = set(paths)
        absent = [name for name in table["name"] if name not in known]
        if absent:
            raise PetsError(
                f"labels.csv_file: {csv_path} names {len(absent)} photos not found under {root}, "
                f"e.g. {absent[0]!r}"
            )
        labels = dict.fromkeys(paths)
        labels.update(zip(table["name"], table["label"], strict=True))
        split = None
        if "is_valid" in table:
            split = dict(zip(table["name"], table["is_valid"], strict=True))
        return labels, split
    if params.method == "name_func":
        func = import_label_func(params.func)
        labels = {}
        for path in paths:
            try:
                label = func(root / path)
            except Exception as exc:  # the user's function may fail in any way
                raise PetsError(f"labels.func: {params.func} failed on {path}: {exc!r}") from None
            if not isinstance(label, str) or not label:
                raise PetsError(
                    f"labels.func: {params.func} returned {label!r} for {path}; it must return "
                    "a non-empty string"
                )
            labels[path] = label
        return labels, None
    labels_file = label_file(dataset, params.labels_file)
    return dict(zip(paths, read_label_list(labels_file, len(paths)), strict=True)), None


def label_dataset(params: LabelsParams, dataset: Path, seed: int, threads: int = 1) -> Labelled:
    """Find, check, label and split the photos of the extracted data set at `dataset`."""
    if not dataset.is_dir():
        raise PetsError(f"{dataset}: data set folder not found; run the download stage first")
    root = dataset / params.folder if params.folder else dataset
    if not root.is_dir():
        raise PetsError(f"labels.folder: {root} is not a folder")
    found, unnamed = [], []
    for path in find_images(root):
        name = path.relative_to(root).as_posix()
        (found if _utf8(name) else unnamed).append(name)
    if not found and not unnamed:
        raise PetsError(
            f"labels.folder: no image files under {root} "
            f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    if not found:
        raise PetsError(
            f"labels.folder: the {len(unnamed)} image files under {root} all have names that "
            f"are not valid UTF-8, e.g. {_printable(unnamed[0])!r}; rename them"
        )
    labels, fixed_split = _labels_by_method(params, dataset, root, found)
    unlabelled = {
        "name_re": "pattern does not match",
        "folder": (
            "not in a label folder"
            if not params.train_folder
            else "not in a train/valid label folder"
        ),
        "csv": "not in the CSV",
    }.get(params.method, "no label")
    skipped = [(p, unlabelled) for p, label in labels.items() if label is None]
    # Shown with \ufffd for the bytes that are not UTF-8: the split and JSON files hold text.
    skipped += [(_printable(p), "file name is not valid UTF-8") for p in unnamed]
    candidates = [p for p, label in labels.items() if label is not None]
    checks = check_images(root, candidates, threads)
    skipped += [(p, check.problem) for p, check in checks.items() if check.problem]
    usable = [p for p in candidates if not checks[p].problem]
    if not usable:
        example = next(iter(skipped), ("", ""))
        raise PetsError(
            f"labels: no usable photo among {len(found)} under {root}; e.g. {example[0]}: "
            f"{example[1]}"
        )
    prefix = root.relative_to(dataset).as_posix() + "/" if params.folder else ""
    if fixed_split is None and params.stratify:
        is_valid = stratified_split([str(labels[p]) for p in usable], params.valid_pct, seed)
    elif fixed_split is None:
        is_valid = random_split(len(usable), params.valid_pct, seed)
    else:
        is_valid = [bool(fixed_split[p]) for p in usable]
    split = pd.DataFrame(
        {
            "path": [prefix + p for p in usable],
            "label": [labels[p] for p in usable],
            "is_valid": is_valid,
        }
    )
    corrected: dict = {}
    if params.corrections:
        path = Path(params.corrections)
        split, relabelled, dropped = apply_corrections(split, read_corrections(path), dataset, path)
        corrected = {"file": str(path), "relabelled": relabelled, "dropped": dropped}
    validate_split(split, params)
    skipped_rows = sorted((prefix + p, reason) for p, reason in skipped)
    return Labelled(
        split=split, found=len(found) + len(unnamed), skipped=skipped_rows, corrections=corrected
    )


def _utf8(name: str) -> bool:
    """Whether a file name found on disk is valid UTF-8 (others come back with surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(name: str) -> str:
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def read_split(path: Path) -> pd.DataFrame:
    """The labels stage's `split.csv` (path, label, is_valid), checked."""
    try:
        split = pd.read_csv(path, dtype={"path": str, "label": str}, keep_default_na=False)
    except FileNotFoundError:
        raise PetsError(f"{path}: not found; run the labels stage first") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise PetsError(f"{path}: not a readable split ({exc}); rerun the labels stage") from None
    if list(split.columns) != ["path", "label", "is_valid"] or split["is_valid"].dtype != bool:
        raise PetsError(f"{path}: needs columns path,label,is_valid; rerun the labels stage")
    return split


def validate_split(split: pd.DataFrame, params: LabelsParams) -> None:
    """Stop before any training when the split cannot train or validate a classifier."""
    classes = sorted(split["label"].unique())
    if len(classes) < 2:
        raise PetsError(f"labels: only one class ({classes[0]!r}) found; a classifier needs two")
    train, valid = split[~split["is_valid"]], split[split["is_valid"]]
    if valid.empty:
        raise PetsError(
            f"labels.valid_pct: no validation photo ({params.valid_pct} of {len(split)} photos "
            "rounds down to 0); raise valid_pct or add photos"
        )
    if train.empty:
        raise PetsError("labels: every photo is in the validation split; none left to train on")
    unseen = sorted(set(valid["label"]) - set(train["label"]))
    if unseen:
        example = valid[valid["label"] == unseen[0]]["path"].iloc[0]
        raise PetsError(
            f"labels: {len(unseen)} validation classes never occur in training, e.g. "
            f"{unseen[0]!r} ({example})"
        )


def read_classes(path: Path) -> list[str]:
    """The labels stage's `classes.json`: the sorted class names (the lesson's `data.classes`)."""
    try:
        classes = json.loads(path.read_text())
    except FileNotFoundError:
        raise PetsError(f"{path}: not found; run the labels stage first") from None
    except json.JSONDecodeError as exc:
        raise PetsError(f"{path}: not valid JSON ({exc}); rerun the labels stage") from None
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise PetsError(f"{path}: must be a JSON list of class names; rerun the labels stage")
    return classes
