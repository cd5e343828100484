"""pets: fast.ai Lesson 1 as a workflow. `snakemake --cores 4` runs every stage; params.yaml holds
every setting; each rule runs one workflow/scripts/<stage>.py, the same command dvc.yaml runs.
"""

import os
import sys

from pets.config import load_params, stage_params
from pets.errors import PetsError
from pets.tracking import PIPELINE_ENV, new_pipeline_key

if config:
    sys.exit(
        "error: settings live in params.yaml (stage scripts read it): edit it, or use "
        "`dvc exp run -S key=value`, instead of --config"
    )
try:
    PARAMS = load_params("params.yaml")
except PetsError as error:
    sys.exit(f"error: {error}")
# One MLflow parent run per invocation; cluster jobs inherit the key through the environment.
os.environ.setdefault(PIPELINE_ENV, new_pipeline_key("snakemake"))
COMMON = ["__init__", "config", "errors", "files", "stage", "tracking"]


def code(stage, *modules):
    """The stage's script and the src/pets modules it runs: editing one reruns the stage."""
    return [f"workflow/scripts/{stage}.py"] + [
        f"src/pets/{name}.py" for name in sorted({*COMMON, *modules})
    ]


onstart:
    from pets.tracking import prepare

    prepare(Path(workflow.basedir), PARAMS)


rule all:
    input:
        "reports/show_batch.png",


rule download:
    input:
        code=code("download", "archive"),
    output:
        dataset=directory("data/dataset"),
        manifest="data/dataset.json",
    log:
        "logs/download.log",
    conda:
        "envs/pets.yaml"
    params:
        stage_params(PARAMS, "download"),
    shell:
        "python workflow/scripts/download.py --params params.yaml"
        " --dataset {output.dataset} --manifest {output.manifest} 2>&1 | tee {log}"


rule labels:
    input:
        code=code("labels", "labels", "images"),
        dataset="data/dataset",
    output:
        split="data/split.csv",
        classes="data/classes.json",
        quality="reports/data_quality.json",
    log:
        "logs/labels.log",
    conda:
        "envs/pets.yaml"
    threads: 4
    params:
        stage_params(PARAMS, "labels"),
    shell:
        "python workflow/scripts/labels.py --params params.yaml --dataset {input.dataset}"
        " --split {output.split} --classes {output.classes} --quality {output.quality}"
        " --threads {threads} 2>&1 | tee {log}"


rule cache:
    input:
        code=code("cache", "cache", "images", "labels"),
        dataset="data/dataset",
        split="data/split.csv",
    output:
        cache=directory("data/cache"),
    log:
        "logs/cache.log",
    conda:
        "envs/pets.yaml"
    threads: 4
    params:
        stage_params(PARAMS, "cache"),
    shell:
        "python workflow/scripts/cache.py --params params.yaml --dataset {input.dataset}"
        " --split {input.split} --cache {output.cache} --threads {threads} 2>&1 | tee {log}"


rule preview:
    input:
        code=code("preview", "cache", "images", "labels", "plots", "transforms"),
        split="data/split.csv",
        cache="data/cache",
    output:
        figure="reports/show_batch.png",
    log:
        "logs/preview.log",
    conda:
        "envs/pets.yaml"
    params:
        stage_params(PARAMS, "preview"),
    shell:
        "python workflow/scripts/preview.py --params params.yaml --split {input.split}"
        " --cache {input.cache} --figure {output.figure} 2>&1 | tee {log}"
