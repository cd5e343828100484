"""What identifies a stage's input and output files: DVC's recorded hash, a file's md5, or a
folder's listing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import yaml

from pets.files import md5_file
from pets.timings import CLOCK


def recorded_hashes(project: Path) -> dict[str, str]:
    """Output hashes in dvc.lock, trusted only while `dvc repro` runs this stage (DVC writes each
    upstream stage's entry as that stage finishes); otherwise empty."""
    if "DVC_STAGE" not in os.environ:
        return {}
    try:
        lock = yaml.safe_load((project / "dvc.lock").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return {
        out["path"]: out["md5"]
        for stage in lock.get("stages", {}).values()
        for out in stage.get("outs", [])
        if "md5" in out
    }


def fingerprint(path: Path, relative: str, recorded: dict[str, str]) -> str:
    """What identifies an input or output (`relative`: its path from the project): DVC's
    recorded md5, else a file's md5, else for a folder `listing:` + the md5 of its file names
    and sizes (hashing gigabytes per stage would cost more than the stage; the data's content
    is pinned by the archive's md5)."""
    if relative in recorded:
        return recorded[relative]
    if path.is_file():
        return md5_file(path)
    if path.is_dir():
        lines = sorted(
            f"{f.relative_to(path).as_posix()}\t{f.stat().st_size}"
            for f in path.rglob("*")
            if f.is_file()
        )
        return "listing:" + hashlib.md5("\n".join(lines).encode()).hexdigest()
    return "missing"


def file_tags(kind: str, paths: list[Path], project: Path) -> dict[str, str]:
    """`input.<path>` / `output.<path>` tags with each path's fingerprint."""
    with CLOCK.count("fingerprints"):
        recorded = recorded_hashes(project)
        tags = {}
        for path in paths:
            try:
                name = path.resolve().relative_to(project.resolve()).as_posix()
            except ValueError:
                name = str(path)
            tags[f"{kind}.{name}"] = fingerprint(path, name, recorded)
        return tags
