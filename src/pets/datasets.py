"""The data set a run used, as an MLflow dataset input (the runs table's Dataset column): where it
came from (`data.url`, credentials cut out), what it was (the archive's md5 and the split's md5,
digested together), and how many photos each side of the split holds."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import re
from pathlib import Path

from pets.archive import redact_url
from pets.paths import CLASSES, MANIFEST, SPLIT

SPLIT_COLUMNS = [
    {"type": "string", "name": "path"},
    {"type": "string", "name": "label"},
    {"type": "boolean", "name": "is_valid"},
]


def reads_split(project: Path, inputs: list[Path]) -> bool:
    """Whether a stage reading `inputs` trains or evaluates on the split."""
    split = (project / SPLIT).resolve()
    return any(path.resolve() == split for path in inputs)


def dataset_name(url: str) -> str:
    """A short name for the data set at `url`: its last path part without archive suffixes."""
    last = redact_url(url).rstrip("/").split("?")[0].rsplit("/", 1)[-1] or "dataset"
    return re.sub(r"(\.tar)?\.(tgz|gz|zip|tar|bz2|xz|csv)$", "", last) or "dataset"


def split_profile(split: Path, classes: Path) -> dict[str, int]:
    """Photo counts of the split (all, train, valid) and the number of classes."""
    train = valid = 0
    with split.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if str(row.get("is_valid", "")).lower() in ("true", "1"):
                valid += 1
            else:
                train += 1
    count = 0
    with contextlib.suppress(OSError, ValueError, TypeError):
        count = len(json.loads(classes.read_text()))
    return {"photos": train + valid, "train": train, "valid": valid, "classes": count}


def dataset_fields(project: Path, url: str, split_md5: str) -> dict[str, str]:
    """The project's split (made by the labels stage) as the fields of an MLflow `Dataset`:
    name, digest, source, schema and profile."""
    archive_md5 = ""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        archive_md5 = str(json.loads((project / MANIFEST).read_text()).get("md5") or "")
    digest = hashlib.md5(f"{archive_md5}:{split_md5}".encode()).hexdigest()[:8]
    shown = redact_url(url)
    remote = shown.startswith(("http://", "https://"))
    source = {"url": shown} if remote else {"uri": shown}
    profile = {
        **split_profile(project / SPLIT, project / CLASSES),
        "archive_md5": archive_md5,
        "split_md5": split_md5,
    }
    return {
        "name": dataset_name(url),
        "digest": digest,
        "source_type": "http" if remote else "local",
        "source": json.dumps(source),
        "schema": json.dumps({"mlflow_colspec": SPLIT_COLUMNS}),
        "profile": json.dumps(profile),
    }
