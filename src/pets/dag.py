"""The DAG, derived from the stage specs: the code each stage runs (from its imports), each
stage's inputs record (its params and the content of the user's own files it reads), dvc.yaml
(`pets dag write`, checked by `pets dag check`) and what the Snakefile's rules are made of.

The inputs record, `data/inputs/<stage>.json`, is how both tools track what no other stage makes:
a local archive, the module behind `labels.func`, a weights file, and the stage's params. It is
rewritten only when its content changes: by the Snakefile each time snakemake starts, and by
DVC's first stage, `inputs` (always run; it costs a fraction of a second). A stage depends on its
record, so replacing an archive at the same path, or editing a label function, reruns exactly the
stages that read it. Snakemake then needs only file times (`rerun-triggers: mtime` in the
profile), so outputs that DVC built are up to date for Snakemake as they are."""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from pets.config import Params, load_params, section_values
from pets.errors import PetsError
from pets.experiments import borrow, origin
from pets.files import atomic_path
from pets.fingerprints import cached_md5, known_hashes, save_hashes
from pets.paths import HISTORY, INPUTS, LOGS, LR_FIND_CURVE, MODELS, for_model
from pets.stage import StageSpec, command, expand
from pets.stages import main_of, specs

DVC_YAML = "dvc.yaml"
INPUTS_STAGE = "inputs"  # DVC's first stage: rewrites the inputs records


def inputs_record_path(name: str) -> str:
    """The inputs record of stage `name`."""
    return INPUTS.replace("{stage}", name)


# -- the code a stage runs ------------------------------------------------------------------


def _module_file(package: Path, name: str) -> Path | None:
    parts = name.split(".")[1:]
    base = package.joinpath(*parts) if parts else package
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if parts and candidate.is_file():
            return candidate
    return package / "__init__.py" if not parts else None


def _imported(tree: ast.AST) -> list[str]:
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If)
        and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for node in ast.walk(block)
    }
    names = []
    for node in ast.walk(tree):
        if id(node) in typing_only:  # imported for type checkers only: never runs
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "pets":
                names.append(node.module)
                names += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names if alias.name.split(".")[0] == "pets"]
    return names


# (path, mtime, size) -> the pets modules a file imports: the Snakefile and `pets dag check`
# walk the same few dozen files for each of twelve stages, and parsing was most of a no-op run.
_IMPORTS: dict[tuple[str, int, int], list[str]] = {}


def _file_imports(path: Path) -> list[str]:
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _IMPORTS:
        _IMPORTS[key] = _imported(ast.parse(path.read_text()))
    return _IMPORTS[key]


def code_files(project: Path, script: str) -> list[str]:
    """`script` and the src/pets files it imports, transitively, as sorted project-relative
    paths (imports inside functions count: that code runs in the stage; imports for type
    checkers only do not)."""
    package = project / "src" / "pets"
    found = {script}
    pending = [project / script]
    while pending:
        for name in _file_imports(pending.pop()):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # a module's packages run their __init__
                path = _module_file(package, ".".join(parts[:depth]))
                if path is None:
                    continue
                relative = path.relative_to(project).as_posix()
                if relative not in found:
                    found.add(relative)
                    pending.append(path)
    return [script, *sorted(found - {script})]


# -- the inputs records -----------------------------------------------------------------------


def content_md5(path: Path, known: dict[str, list[str]]) -> str:
    """The md5 of a file, or of a folder's files and their paths; reuses `known` (path ->
    [stat key, md5]) while a file's size, mtime and inode are unchanged, so an 800 MB archive
    is hashed once, not on every run."""
    import hashlib

    if path.is_dir():
        lines = [
            f"{file.relative_to(path).as_posix()}\t{content_md5(file, known)}"
            for file in sorted(path.rglob("*"))
            if file.is_file()
        ]
        return hashlib.md5("\n".join(lines).encode()).hexdigest()
    if not path.is_file():
        return "missing"  # the stage itself says what is wrong when it runs
    return cached_md5(path, known)


def inputs_record(spec: StageSpec, params: Params, known: dict[str, list[str]]) -> dict:
    """What stage `spec` reads that no other stage makes: its params, and the content of the
    user's files it names."""
    files = spec.sources(params) if spec.sources else []
    return {
        "params": section_values(params, spec.params),
        "files": {str(path): content_md5(path, known) for path in files},
    }


def write_inputs(project: Path, params: Params) -> list[str]:
    """Rewrite the inputs record of every stage whose params or files changed; returns those
    stages. Unchanged records keep their file times, so nothing reruns for them."""
    known = known_hashes(project)
    before = dict(known)
    changed = []
    previous = Path.cwd()
    os.chdir(project)  # the user's paths in params.yaml are relative to the project
    try:
        for name, spec in specs().items():
            text = json.dumps(inputs_record(spec, params, known), indent=1, sort_keys=True) + "\n"
            path = project / inputs_record_path(name)
            with contextlib.suppress(OSError):
                if path.read_text() == text:
                    continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as temporary:
                temporary.write_text(text)
            changed.append(name)
    finally:
        os.chdir(previous)
    if known != before:
        save_hashes(project, known)
    return changed


# -- dvc.yaml ---------------------------------------------------------------------------------


def _quote(value: str) -> str:
    return json.dumps(value) if any(c in value for c in ":#{}[],&*!|>'\"%@`") else value


def dvc_paths(spec: StageSpec, names: dict[str, str]) -> list[str]:
    """DVC's paths for `names`: `${item}` for the stage's own model, one per model otherwise,
    `${key}` params left to DVC's interpolation."""
    model = "${item}" if spec.per_model else None
    return [path for template in names.values() for path in expand(template, None, model)]


def dvc_command(spec: StageSpec) -> str:
    """The stage's command line in dvc.yaml."""
    model = "${item}" if spec.per_model else None
    return command(
        spec,
        main_of(spec.name),
        lambda name, template: expand(template, None, model)[0],
    )


def dvc_yaml(project: Path) -> str:
    """dvc.yaml as the stage specs describe it."""
    lines = [
        "# Made by `pets dag write` from the stage specs in src/pets/stages/: do not edit (CI",
        "# runs `pets dag check`). `dvc repro` runs these stages one at a time; `dvc exp run -S",
        "# key=value` tries params. The first stage rewrites each stage's inputs record (its",
        "# params and the content of your own files it reads) when they change: src/pets/dag.py.",
        "stages:",
        f"  {INPUTS_STAGE}:",
        "    cmd: pets dag inputs",
        "    always_changed: true",
        "    deps:",
        *(f"      - {path}" for path in code_files(project, "src/pets/dag.py")),
        "    outs:",
    ]
    # persist: DVC deletes a stage's outs before running it, which would give every record a
    # new mtime on each `dvc repro` and make Snakemake rerun every stage; `pets dag inputs`
    # rewrites only the records that changed.
    for name in specs():
        lines += [
            f"      - {inputs_record_path(name)}:",
            "          cache: false",
            "          persist: true",
        ]
    for name, spec in specs().items():
        indent = "      " if spec.per_model else "    "
        lines += ["", f"  {name}:"]
        if spec.per_model:
            lines += [f"    foreach: [{', '.join(MODELS)}]", "    do:"]
        lines += [f"{indent}cmd: {_quote(dvc_command(spec))}", f"{indent}deps:"]
        deps = [inputs_record_path(name), *code_files(project, spec.script)]
        deps += dvc_paths(spec, dict(spec.inputs))
        lines += [f"{indent}  - {_quote(path)}" for path in deps]
        lines += [f"{indent}params:", *(f"{indent}  - {key}" for key in spec.params)]
        groups: dict[str, list[str]] = {"outs": [], "metrics": [], "plots": []}
        for key, template in spec.outputs.items():
            kind = "metrics" if key in spec.metrics else "plots" if key in spec.plots else "outs"
            for path in dvc_paths(spec, {key: template}):
                entry = [f"{indent}  - {_quote(path)}"]
                options = []
                if key in spec.uncached:
                    options.append(f"cache: false  # {spec.uncached[key]}")
                if kind == "plots":
                    options += ["x: epoch", "y: valid_loss"]
                if options:
                    entry[0] += ":"
                    entry += [f"{indent}      {option}" for option in options]
                groups[kind] += entry
        for kind, entries in groups.items():
            if entries:
                lines += [f"{indent}{kind}:", *entries]
    lines += ["", *PLOTS]
    return "\n".join(lines) + "\n"


def _history(column: str) -> list[str]:
    return [f"        {for_model(HISTORY, model)}: {column}" for model in MODELS]


PLOTS = [
    "# What `dvc plots show` / `dvc plots diff` draw from the stages' plot files.",
    "plots:",
    "  - losses:",
    "      x: epoch",
    "      y:",
    *_history("[train_loss, valid_loss]"),
    "  - error_rate:",
    "      x: epoch",
    "      y:",
    *_history("error_rate"),
    "  - lr_find:",
    "      x: lr",
    "      y:",
    f"        {LR_FIND_CURVE}: smoothed_loss",
]


def write(project: Path) -> bool:
    """Write dvc.yaml from the specs; returns whether it changed."""
    path = project / DVC_YAML
    text = dvc_yaml(project)
    if path.exists() and path.read_text() == text:
        return False
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return True


def check(project: Path) -> None:
    """Raise `PetsError` when dvc.yaml differs from what the specs describe."""
    path = project / DVC_YAML
    if not path.exists() or path.read_text() != dvc_yaml(project):
        raise PetsError(
            f"{path.name} differs from the stage specs (src/pets/stages/); run `pets dag write` "
            "(dvc.yaml is made from them, not edited by hand)"
        )


# -- the Snakefile's rules --------------------------------------------------------------------


def rule_inputs(project: Path, spec: StageSpec, params: Params) -> dict[str, Any]:
    """A rule's named inputs: the stage's code, its inputs record, and what it reads (a path
    with `{model}` stays a wildcard in a per-model rule, else one per model)."""
    model = "{model}" if spec.per_model else None
    named: dict[str, Any] = {
        "code": code_files(project, spec.script),
        "record": inputs_record_path(spec.name),
    }
    for key, template in spec.inputs.items():
        found = expand(template, params, model)
        named[key] = found if len(found) > 1 else found[0]
    return named


def rule_log(spec: StageSpec) -> str:
    """A rule's log file: `logs/<stage>.log`, or `logs/<stage>/<model>.log` per model."""
    return LOGS.replace("{stage}", f"{spec.name}/{{model}}" if spec.per_model else spec.name)


def rule_shell(spec: StageSpec) -> str:
    """A rule's shell command: the stage's command line, each path as `{input.x}` or
    `{output.x}`, the log kept with `tee`."""

    def placeholder(name: str, template: str) -> str:
        if name == "name":
            return "{wildcards.model}"
        return f"{{input.{name}}}" if name in spec.inputs else f"{{output.{name}}}"

    return command(spec, main_of(spec.name), placeholder) + " 2>&1 | tee {log}"


def main(argv: list[str] | None = None) -> None:
    """`pets dag write|check|inputs`."""
    parser = argparse.ArgumentParser(
        prog="pets dag", description="dvc.yaml and the inputs records, from the stage specs"
    )
    parser.add_argument(
        "action",
        choices=("write", "check", "inputs"),
        help="write: dvc.yaml from the specs; check: fail if dvc.yaml differs; inputs: rewrite "
        "the stages' inputs records that changed (what DVC's first stage runs)",
    )
    parser.add_argument("--project", type=Path, default=Path.cwd(), help="default: here")
    args = parser.parse_args(argv)
    project = args.project.resolve()
    try:
        if args.action == "write":
            print(f"{DVC_YAML}: {'written' if write(project) else 'already up to date'}")
        elif args.action == "check":
            check(project)
            print(f"{DVC_YAML} matches the stage specs")
        else:
            params = load_params(project / "params.yaml")
            source = origin(project)
            if source is not None:  # a queued experiment's copy: bring what DVC did not
                borrowed = borrow(project, source, params, specs().values())
                print(f"linked from {source}: {', '.join(borrowed) or 'nothing'}")
            changed = write_inputs(project, params)
            print(f"inputs changed: {', '.join(changed) or 'none'}")
    except PetsError as exc:
        print(f"pets dag: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
