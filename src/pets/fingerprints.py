"""What identifies a stage's input and output files: DVC's recorded hash, a file's md5, or a
folder's listing. A file's md5 is kept in `.pets/hashes.json` by its size, mtime and inode
(shared with pets.dag's inputs records), so a checkpoint written by one stage and read by the
next three is hashed once, not four times."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import yaml

from pets.files import atomic_path, md5_file
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


HASHES = ".pets/hashes.json"  # md5s of files, by absolute path, with their size, mtime, inode


def stat_key(path: Path) -> str:
    """What tells that a file changed without reading it: size, mtime and inode (every output
    is written to a temporary file and renamed, so a rewrite is a new inode)."""
    found = path.stat()
    return f"{found.st_size}:{found.st_mtime_ns}:{found.st_ino}"


def known_hashes(project: Path) -> dict[str, list[str]]:
    """The project's md5 cache: absolute path -> [stat key, md5]; empty when unreadable."""
    with contextlib.suppress(OSError, ValueError):
        known = json.loads((project / HASHES).read_text())
        if isinstance(known, dict):
            return known
    return {}


def save_hashes(project: Path, known: dict[str, list[str]]) -> None:
    """Write the md5 cache back, atomically, merged with entries other processes added since
    it was read (stages run in parallel; a lost entry would cost only a second hashing)."""
    merged = {**known_hashes(project), **known}
    with contextlib.suppress(OSError):
        (project / HASHES).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(project / HASHES) as temporary:
            temporary.write_text(json.dumps(merged))


def cached_md5(path: Path, known: dict[str, list[str]]) -> str:
    """A file's md5, from `known` while its stat key is unchanged, else read (and noted)."""
    key, name = stat_key(path), str(path.resolve())
    if known.get(name, [None])[0] != key:
        known[name] = [key, md5_file(path)]
    return known[name][1]


def fingerprint(
    path: Path, relative: str, recorded: dict[str, str], known: dict[str, list[str]] | None = None
) -> str:
    """What identifies an input or output (`relative`: its path from the project): DVC's
    recorded md5, else a file's md5, else for a folder `listing:` + the md5 of its file names
    and sizes (hashing gigabytes per stage would cost more than the stage; the data's content
    is pinned by the archive's md5)."""
    if relative in recorded:
        return recorded[relative]
    if path.is_file():
        return md5_file(path) if known is None else cached_md5(path, known)
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
        known = known_hashes(project)
        before = dict(known)
        tags = {}
        for path in paths:
            try:
                name = path.resolve().relative_to(project.resolve()).as_posix()
            except ValueError:
                name = str(path)
            tags[f"{kind}.{name}"] = fingerprint(path, name, recorded, known)
        if known != before:
            save_hashes(project, known)
        return tags
