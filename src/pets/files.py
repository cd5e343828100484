"""Outputs written atomically (a temporary sibling renamed when complete) and file hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def not_regular(path: str | os.PathLike[str]) -> str | None:
    """Why `path` is not a regular file that reading can finish on ("not found", "a FIFO (named
    pipe)", "a folder", "a character device", ...), or None when it is one (links followed).
    Asked before opening: reading a FIFO or a terminal blocks for ever."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "not found"
    except OSError as exc:
        return f"not readable ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in KINDS if test(mode)), "not a regular file")


# Characters Windows, macOS or a shell refuse or misread in a file name.
UNSAFE_CHARACTERS = set('/\\:*?"<>|')


def unsafe_name(name: str) -> str:
    """Why `name` (a label: it becomes a folder name) is not safe as a file name on every
    system, or '' when it is."""
    if not name.strip():
        return "it is empty"
    bad = sorted({c for c in name if c in UNSAFE_CHARACTERS or ord(c) < 32 or ord(c) == 127})
    if bad:
        return f"it holds {', '.join(repr(c) for c in bad)}, not safe in a file name"
    if name in (".", "..") or name != name.strip() or name.endswith("."):
        return "it starts or ends with a space, or ends with a dot (not safe in a file name)"
    return ""


def remove(path: Path) -> None:
    """Delete a file, a link or a folder tree; nothing if it does not exist."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write (a file or a folder); it becomes `path` only
    when the block finishes, so a killed stage never leaves an output that looks finished."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Leftovers of a killed run are hidden dot-files: remove them before starting again.
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        remove(stale)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if tmp.is_dir():
            remove(path)
        os.replace(tmp, path)
    finally:
        remove(tmp)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as stable, indented JSON (sorted keys, trailing newline), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_csv(path: str | os.PathLike[str], frame: pd.DataFrame) -> None:
    """Write a table as CSV without its index, atomically, floats in a stable repr."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file written by a stage."""
    return json.loads(Path(path).read_text())


# md5s already taken by this process, by (path, inode, size, mtime): a stage's MLflow tags and
# its resume fingerprint hash the same inputs; each file is read once.
_MD5S: dict[tuple[str, int, int, int], str] = {}


def md5_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """The md5 hex digest of a file's bytes, read in chunks (once per process while the file
    stays unchanged)."""
    status = os.stat(path)
    key = (os.path.realpath(path), status.st_ino, status.st_size, status.st_mtime_ns)
    if key not in _MD5S:
        digest = hashlib.md5()
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
        _MD5S[key] = digest.hexdigest()
    return _MD5S[key]
