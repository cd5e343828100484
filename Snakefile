"""pets: fast.ai Lesson 1 as a workflow. `snakemake --cores 4` runs every stage.

The rules are made in one loop from the stage specs (src/pets/stages/), the same specs dvc.yaml is
written from, so a stage's paths, params and command line are declared once: a loop rather than
twelve hand-written rules that would each only repeat the spec. Each rule runs
workflow/scripts/<stage>.py, the command dvc.yaml runs, and depends on the stage's code (its
imports) and its inputs record (its params and the user's own files it reads; src/pets/dag.py).
"""

import os
import platform
import sys

from pets.config import load_params
from pets.dag import check, rule_inputs, rule_log, rule_shell, write_inputs
from pets.errors import PetsError
from pets.paths import EXPORT, MODELS, REPORT
from pets.pipeline import ProjectHold, commit_finished
from pets.processes import (
    PIPELINE_ENV,
    PIPELINE_HOST_ENV,
    PIPELINE_PID_ENV,
    new_pipeline_key,
)
from pets.stage import resolve
from pets.stages import specs
from pets.recorder import wait_recorded
from pets.tracking import prepare

PROJECT = Path(workflow.basedir)
if config:
    sys.exit(
        "error: settings live in params.yaml (stage scripts read it): edit it, or use "
        "`dvc exp run -S key=value`, instead of --config"
    )
try:
    PARAMS = load_params("params.yaml")
    write_inputs(PROJECT, PARAMS)
except PetsError as error:
    sys.exit(f"error: {error}")
try:
    check(PROJECT)
except PetsError as error:
    print(f"warning: {error}", file=sys.stderr)
# One MLflow parent run per invocation; cluster jobs inherit the key through the environment.
os.environ.setdefault(PIPELINE_ENV, new_pipeline_key("snakemake"))
os.environ.setdefault(PIPELINE_PID_ENV, str(os.getpid()))
os.environ.setdefault(PIPELINE_HOST_ENV, platform.node())
HOLD = ProjectHold(PROJECT, os.environ[PIPELINE_ENV])
# A training stage uses launch.processes GPUs (data-parallel above 1); raise the profile's
# `gpu` limit (or pass --resources gpu=N) to the GPUs of the machine.
GPUS = {"trains": PARAMS.launch.processes, "gpu": 1}


wildcard_constraints:
    model="|".join(MODELS),


def gpus(spec):
    """The GPUs a rule takes: launch.processes to train, one to run a model, none otherwise."""
    taken = next((n for kind, n in GPUS.items() if getattr(spec, kind)), 0)
    return {"gpu": taken} if taken else {}


def outputs(spec):
    """A rule's named outputs: folders as `directory()`, figures in Snakemake's report."""
    named = {}
    for key, template in spec.outputs.items():
        path = resolve(template, PARAMS, "{model}" if spec.per_model else None)
        if key in spec.folders:
            path = directory(path)
        elif key in spec.figures:
            path = report(path, category=spec.figures[key])
        named[key] = path
    return named


onstart:
    try:  # one pipeline at a time: a second snakemake or a dvc repro stops at once
        HOLD.take()
    except PetsError as error:
        sys.exit(f"error: {error}")
    prepare(PROJECT, PARAMS)


onsuccess:
    commit_finished(
        PROJECT, HOLD
    )  # so `dvc repro` sees what was built as up to date
    wait_recorded(PROJECT)  # every stage's run is in MLflow once snakemake ends
    HOLD.release()


onerror:
    commit_finished(PROJECT, HOLD)  # the stages that finished are kept for DVC too
    wait_recorded(PROJECT)
    HOLD.release()


rule all:
    input:
        REPORT,
        EXPORT,


def stage_rule(spec):
    """The rule of one stage (a function, so that the job's shell command, read again when it
    runs, sees this stage's spec rather than the loop's last)."""

    rule:
        name:
            spec.name
        input:
            **rule_inputs(PROJECT, spec, PARAMS),
        output:
            **outputs(spec),
        log:
            rule_log(spec),
        conda:
            "envs/pets.yaml"
        threads: workflow.cores if spec.threads == 0 else spec.threads
        resources:
            **gpus(spec),
        shell:
            rule_shell(spec)


for spec in specs().values():
    stage_rule(spec)
