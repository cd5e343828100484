"""The lesson's stages, in the order they run: each module holds the stage's `main()` (what tests
call), its `SPEC` (the one declaration the Snakefile, dvc.yaml and its command line come from)
and `cli()` (what `workflow/scripts/<stage>.py` runs). Stage modules import what their work
needs inside `main`, so reading the specs (the Snakefile does, on every run) stays fast."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import cache
from types import ModuleType

from pets.stage import StageSpec

NAMES = (
    "download",
    "labels",
    "cache",
    "preview",
    "train_frozen",
    "lr_find",
    "finetune",
    "train_resnet50",
    "get_preds",
    "interpret",
    "report",
    "export",
)


def module(name: str) -> ModuleType:
    """The module of stage `name`."""
    if name not in NAMES:
        raise KeyError(f"no stage {name!r}; the stages are {', '.join(NAMES)}")
    return importlib.import_module(f"pets.stages.{name}")


@cache
def specs() -> dict[str, StageSpec]:
    """Every stage's spec, by name, in running order."""
    return {name: module(name).SPEC for name in NAMES}


def main_of(name: str) -> Callable[..., None]:
    """The `main` of stage `name`."""
    return module(name).main
