"""pets: fast.ai Lesson 1 as a workflow. `snakemake --cores 4` runs every stage; params.yaml holds
every setting; each rule runs one workflow/scripts/<stage>.py, the same command dvc.yaml runs.
"""

import os
import platform
import sys

from pets.config import load_params, stage_params
from pets.errors import PetsError
from pets.tracking import (
    PIPELINE_ENV,
    PIPELINE_HOST_ENV,
    PIPELINE_PID_ENV,
    new_pipeline_key,
)

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
os.environ.setdefault(PIPELINE_PID_ENV, str(os.getpid()))
os.environ.setdefault(PIPELINE_HOST_ENV, platform.node())
COMMON = ["__init__", "config", "distributed", "errors", "files", "stage", "tracking"]
TRAINING = [
    "cache",
    "data",
    "images",
    "labels",
    "learner",
    "model",
    "train",
    "transforms",
]
MODELS = ["stage-1", "stage-2", "resnet50"]  # the lesson's three trained models
HELD_LOCKS = []  # the project's and DVC's locks, held while jobs run (see onstart)
# A training stage uses launch.processes GPUs (data-parallel above 1); raise the profile's
# `gpu` limit (or pass --resources gpu=N) to the GPUs of the machine.
GPUS = PARAMS.launch.processes
# Training and inference use every core (`--threads 0`) whatever the scheduler reserved: CPU
# sums depend on the thread count, and both tools must give the same numbers.


wildcard_constraints:
    model="|".join(MODELS),


def code(stage, *modules):
    """The stage's script and the src/pets modules it runs: editing one reruns the stage."""
    return [f"workflow/scripts/{stage}.py"] + [
        f"src/pets/{name}.py" for name in sorted({*COMMON, *modules})
    ]


onstart:
    from pets.pipeline import hold_project
    from pets.tracking import prepare

    try:  # one pipeline at a time: a second snakemake or a dvc repro stops at once
        HELD_LOCKS.extend(hold_project(Path(workflow.basedir)))
    except PetsError as error:
        sys.exit(f"error: {error}")
    prepare(Path(workflow.basedir), PARAMS)


rule all:
    input:
        "reports/index.html",
        "models/export",


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
    threads: 16
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
    threads: 16
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
        figure=report("reports/show_batch.png", category="Data"),
    log:
        "logs/preview.log",
    conda:
        "envs/pets.yaml"
    params:
        stage_params(PARAMS, "preview"),
    shell:
        "python workflow/scripts/preview.py --params params.yaml --split {input.split}"
        " --cache {input.cache} --figure {output.figure} 2>&1 | tee {log}"


rule train_frozen:
    input:
        code=code("train_frozen", *TRAINING),
        split="data/split.csv",
        classes="data/classes.json",
        cache="data/cache",
    output:
        model="models/stage-1.pth",
        metrics="metrics/stage-1.json",
        history="reports/stage-1/history.csv",
        info="reports/stage-1/model.json",
    log:
        "logs/train_frozen.log",
    conda:
        "envs/pets.yaml"
    threads: 4
    resources:
        gpu=GPUS,
    params:
        stage_params(PARAMS, "train_frozen"),
    shell:
        "python workflow/scripts/train_frozen.py --params params.yaml --split {input.split}"
        " --classes {input.classes} --cache {input.cache} --model {output.model}"
        " --metrics {output.metrics} --history {output.history} --model-info {output.info}"
        " --threads 0"
        " 2>&1 | tee {log}"


rule lr_find:
    input:
        code=code("lr_find", *TRAINING, "lr_find", "plots"),
        checkpoint="models/stage-1.pth",
        split="data/split.csv",
        classes="data/classes.json",
        cache="data/cache",
    output:
        curve="reports/lr_find.csv",
        figure=report("reports/lr_find.png", category="Training"),
        suggestions="metrics/lr_find.json",
    log:
        "logs/lr_find.log",
    conda:
        "envs/pets.yaml"
    threads: 4
    resources:
        gpu=GPUS,
    params:
        stage_params(PARAMS, "lr_find"),
    shell:
        "python workflow/scripts/lr_find.py --params params.yaml --checkpoint {input.checkpoint}"
        " --split {input.split} --classes {input.classes} --cache {input.cache}"
        " --curve {output.curve} --figure {output.figure} --suggestions {output.suggestions}"
        " --threads 0 2>&1 | tee {log}"


rule finetune:
    input:
        code=code("finetune", *TRAINING),
        checkpoint="models/stage-1.pth",
        lr_find="metrics/lr_find.json",
        split="data/split.csv",
        classes="data/classes.json",
        cache="data/cache",
    output:
        model="models/stage-2.pth",
        metrics="metrics/stage-2.json",
        history="reports/stage-2/history.csv",
        info="reports/stage-2/model.json",
    log:
        "logs/finetune.log",
    conda:
        "envs/pets.yaml"
    threads: 4
    resources:
        gpu=GPUS,
    params:
        stage_params(PARAMS, "finetune"),
    shell:
        "python workflow/scripts/finetune.py --params params.yaml --checkpoint {input.checkpoint}"
        " --lr-find {input.lr_find} --split {input.split} --classes {input.classes}"
        " --cache {input.cache} --model {output.model} --metrics {output.metrics}"
        " --history {output.history} --model-info {output.info} --threads 0"
        " 2>&1 | tee {log}"


rule train_resnet50:
    input:
        code=code("train_resnet50", *TRAINING),
        split="data/split.csv",
        classes="data/classes.json",
        cache="data/cache",
    output:
        model="models/resnet50.pth",
        metrics="metrics/resnet50.json",
        history="reports/resnet50/history.csv",
        info="reports/resnet50/model.json",
    log:
        "logs/train_resnet50.log",
    conda:
        "envs/pets.yaml"
    threads: 4
    resources:
        gpu=GPUS,
    params:
        stage_params(PARAMS, "train_resnet50"),
    shell:
        "python workflow/scripts/train_resnet50.py --params params.yaml --split {input.split}"
        " --classes {input.classes} --cache {input.cache} --model {output.model}"
        " --metrics {output.metrics} --history {output.history} --model-info {output.info}"
        " --threads 0"
        " 2>&1 | tee {log}"


rule get_preds:
    input:
        code=code("get_preds", *TRAINING, "interpret"),
        checkpoint="models/{model}.pth",
        split="data/split.csv",
        classes="data/classes.json",
        cache="data/cache",
    output:
        predictions="reports/{model}/predictions.csv",
    log:
        "logs/get_preds/{model}.log",
    conda:
        "envs/pets.yaml"
    threads: 4
    resources:
        gpu=1,
    params:
        stage_params(PARAMS, "get_preds"),
    shell:
        "python workflow/scripts/get_preds.py --params params.yaml --checkpoint {input.checkpoint}"
        " --split {input.split} --classes {input.classes} --cache {input.cache}"
        " --predictions {output.predictions} --threads 0 2>&1 | tee {log}"


rule interpret:
    input:
        code=code(
            "interpret",
            "cache",
            "data",
            "images",
            "interpret",
            "labels",
            "plots",
            "transforms",
        ),
        predictions="reports/{model}/predictions.csv",
        classes="data/classes.json",
        cache="data/cache",
    output:
        top_losses=report("reports/{model}/top_losses.png", category="Interpretation"),
        confusion=report(
            "reports/{model}/confusion_matrix.png", category="Interpretation"
        ),
        normalized="reports/{model}/confusion_matrix_normalized.png",
        matrix="reports/{model}/confusion_matrix.csv",
        most_confused="reports/{model}/most_confused.csv",
        per_class="reports/{model}/per_class.csv",
        metrics="metrics/interpret/{model}.json",
    log:
        "logs/interpret/{model}.log",
    conda:
        "envs/pets.yaml"
    params:
        stage_params(PARAMS, "interpret"),
    shell:
        "python workflow/scripts/interpret.py --params params.yaml --name {wildcards.model}"
        " --predictions {input.predictions} --classes {input.classes} --cache {input.cache}"
        " --out reports/{wildcards.model} --metrics {output.metrics} 2>&1 | tee {log}"


rule report:
    input:
        code=code("report", "cache", "images", "interpret", "plots", "report"),
        quality="reports/data_quality.json",
        show_batch="reports/show_batch.png",
        lr_find=["reports/lr_find.png", "metrics/lr_find.json"],
        training=expand(
            [
                "reports/{model}/history.csv",
                "reports/{model}/model.json",
                "metrics/{model}.json",
            ],
            model=MODELS,
        ),
        interpretation=expand(
            [
                "reports/{model}/predictions.csv",
                "reports/{model}/top_losses.png",
                "reports/{model}/confusion_matrix.png",
                "reports/{model}/confusion_matrix_normalized.png",
                "reports/{model}/most_confused.csv",
                "reports/{model}/per_class.csv",
                "metrics/interpret/{model}.json",
            ],
            model=MODELS,
        ),
        cache="data/cache",
    output:
        html=report("reports/index.html", category="Report"),
        flips="reports/flips.csv",
    log:
        "logs/report.log",
    conda:
        "envs/pets.yaml"
    params:
        stage_params(PARAMS, "report"),
    shell:
        "python workflow/scripts/report.py --params params.yaml --models stage-1 stage-2 resnet50"
        " --reports reports --metrics metrics --cache {input.cache} --out {output.html}"
        " --flips {output.flips} 2>&1 | tee {log}"


rule export:
    input:
        code=code(
            "export",
            "cache",
            "data",
            "export",
            "images",
            "labels",
            "learner",
            "model",
            "train",
            "transforms",
        ),
        checkpoint=f"models/{PARAMS.export.model}.pth",
        split="data/split.csv",
        classes="data/classes.json",
        cache="data/cache",
    output:
        folder=directory("models/export"),
        checks="reports/export.json",
    log:
        "logs/export.log",
    conda:
        "envs/pets.yaml"
    params:
        stage_params(PARAMS, "export"),
    shell:
        "python workflow/scripts/export.py --params params.yaml --checkpoint {input.checkpoint}"
        " --split {input.split} --classes {input.classes} --cache {input.cache}"
        " --out {output.folder} --checks {output.checks} 2>&1 | tee {log}"
