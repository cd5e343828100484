"""Stages that DVC runs in a temporary copy of the project (`dvc exp run --queue`, `--temp`):
the project they belong to, the experiment's name, and the project's files that git and DVC's
cache do not bring into the copy.

DVC runs a queued experiment in `<project>/.dvc/tmp/exps/<tmp>/`, a git checkout of the
experiment's commit with DVC's cached outputs, and deletes it when the experiment is collected.
So (a) the MLflow store must be the project's, not the copy's (pets.tracking asks `origin`), and
(b) the outputs DVC does not store (`cache: false`: the extracted data set, the pixel cache) and
the user's git-ignored files the stages read are missing there: without them DVC would re-extract
and re-decode the data set for every experiment. `borrow` hard-links them in from the project
before DVC looks at those stages; DVC then compares them with dvc.lock as usual, so an
experiment that changes the data params still rebuilds them (DVC deletes a stage's outputs
before running it: a link goes, the project's file stays)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pets.config import Params
from pets.errors import PetsError

if TYPE_CHECKING:
    from pets.stage import StageSpec

DVC_ROOT = "DVC_ROOT"  # set by DVC: for a queued experiment, the project it was queued in
DVC_EXP_NAME = "DVC_EXP_NAME"  # set by `dvc exp run`: the experiment's name
DVC_EXP_BASELINE_REV = "DVC_EXP_BASELINE_REV"  # ... and the commit it started from
TEMPORARY_COPIES = (".dvc", "tmp", "exps")  # where DVC puts a queued experiment's copy


def origin(project: Path | None = None) -> Path | None:
    """The project that DVC copied `project` (default: the working directory) from to run a
    queued or `--temp` experiment: `$DVC_ROOT` when `project` lies in its `.dvc/tmp/exps/`;
    None when the stage runs in the project itself."""
    root = os.environ.get(DVC_ROOT)
    if not root:
        return None
    source = Path(root).resolve()
    here = (project or Path.cwd()).resolve()
    try:
        here.relative_to(source.joinpath(*TEMPORARY_COPIES))
    except ValueError:
        return None
    return source


def experiment_tags() -> dict[str, str]:
    """`dvc.exp_name` and `dvc.exp_baseline` of the DVC experiment this process runs in (set
    by `dvc exp run`, queued or not); empty under `dvc repro`, Snakemake or by hand."""
    names = {"dvc.exp_name": DVC_EXP_NAME, "dvc.exp_baseline": DVC_EXP_BASELINE_REV}
    return {tag: os.environ[name] for tag, name in names.items() if os.environ.get(name)}


def _link_tree(source: Path, target: Path) -> None:
    """`target` as a copy of `source` (a file or a folder) made of hard links, files copied
    where linking fails (another file system); complete or absent."""
    from pets.files import atomic_path

    with atomic_path(target) as temporary:
        files = [source] if source.is_file() else sorted(source.rglob("*"))
        if source.is_dir():
            temporary.mkdir()
        for path in files:
            made = temporary if path == source else temporary / path.relative_to(source)
            if path.is_dir() and not path.is_symlink():
                made.mkdir(parents=True, exist_ok=True)
                continue
            made.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink():
                made.symlink_to(os.readlink(path))
                continue
            try:
                os.link(path, made)
            except OSError:  # another file system, or links not allowed: a copy
                shutil.copy2(path, made)


def _within(path: Path, root: Path) -> Path | None:
    with contextlib.suppress(ValueError):
        return path.resolve().relative_to(root)
    return None


def borrowed_paths(source: Path, params: Params, stages: Iterable[StageSpec]) -> list[Path]:
    """What `borrow` brings from the project `source`, relative to it: the `stages`' outputs
    that DVC does not store (`uncached` in a spec) and the user's own files they read
    (`sources`) that lie inside the project. (The specs are passed in: importing them here
    would make every stage's code depend on every other stage's module.)"""
    from pets.stage import expand

    found: list[Path] = []
    previous = Path.cwd()
    os.chdir(source)  # the user's paths in params.yaml are relative to the project
    try:
        for spec in stages:
            for key in spec.uncached:
                found += [Path(path) for path in expand(spec.outputs[key], params, None)]
            if spec.sources:
                # A source that cannot be found (a label module gone) is the stage's own error
                # to report when it runs.
                with contextlib.suppress(PetsError, OSError):
                    for path in spec.sources(params):
                        inside = _within(source / path, source)
                        if inside is not None and inside != Path("."):
                            found.append(inside)
    finally:
        os.chdir(previous)
    return list(dict.fromkeys(found))


def borrow(project: Path, source: Path, params: Params, stages: Iterable[StageSpec]) -> list[str]:
    """Hard-link into the temporary copy `project` what `borrowed_paths` names for `stages` and
    the copy lacks but `source` has; returns those paths. Links, not copies: a data set and its
    pixel cache take no new space, and DVC unlinks an output before a stage rebuilds it."""
    done = []
    for relative in borrowed_paths(source, params, stages):
        there, here = source / relative, project / relative
        if here.exists() or here.is_symlink() or not there.exists():
            continue
        _link_tree(there, here)
        done.append(relative.as_posix())
    return done
