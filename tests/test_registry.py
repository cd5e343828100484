"""The export in MLflow's model registry, against a real SQLite store: a registered version
predicts like the export folder through `pets predict models:/pets/N`, finds its weights by md5
in DVC's cache when the export has moved on, says in one line when they are gone, keeps a copy
with `tracking.log_models`, and answers `mlflow models serve` on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from pets.export import SPEC, WEIGHTS
from pets.files import md5_file
from pets.registry import dvc_cache_file, log_exported
from pets.synthetic import make_pets
from pets.tracking import EXPERIMENT_KIND, MODEL_TRAINING, client_for, experiment_id
from tests.helpers import SMALL_SIZES, first_address, tool_env, write_export

CLASSES = ["Abyssinian", "Bengal", "Birman"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Six generated JPEGs, two per breed."""
    root = tmp_path_factory.mktemp("photos")
    make_pets(root, 2, classes=len(CLASSES), seed=4, sizes=SMALL_SIZES)
    return sorted((root / "images").glob("*.jpg"))


def _project(root: Path) -> Path:
    """A project folder with params.yaml, an export and an MLflow store with one stage run."""
    project = root / "project"
    (project / "models").mkdir(parents=True)
    (project / "params.yaml").write_text(yaml.safe_dump({"tracking": {"experiment": "pets"}}))
    write_export(project / "models" / "export", CLASSES, seed=1)
    return project


def _register(project: Path, photo: Path, copy_weights: bool = False) -> str:
    client = client_for(project)
    experiment = experiment_id(client, "pets", project)
    run = client.create_run(experiment, run_name="export", tags={"git.commit": "abc"})
    version = log_exported(
        client,
        run.info.run_id,
        project / "models" / "export",
        project,
        name="pets",
        copy_weights=copy_weights,
        example=photo.read_bytes(),
        tags={"git.commit": "abc", "pets.run": run.info.run_id},
    )
    client.set_terminated(run.info.run_id)
    return version


def _predict(project: Path, model: str, photos: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pets.cli", "--project", str(project), "predict", model]
        + [str(p) for p in photos]
        + ["--json", "--device", "cpu"],
        capture_output=True,
        text=True,
        env=tool_env(),
        cwd=project,
    )


def _answers(done: subprocess.CompletedProcess[str]) -> list:
    assert done.returncode == 0, done.stderr[-3000:]
    return [
        (row["path"], [(p["class"], round(p["probability"], 5)) for p in row["predictions"]])
        for row in json.loads(done.stdout)
    ]


def _here(project: Path, model: str, photos: list[Path], monkeypatch: pytest.MonkeyPatch) -> list:
    """`_answers` of `pets predict` without its process: the Predictor it uses, in this one."""
    from pets.predict import Predictor

    monkeypatch.setenv("MLFLOW_TRACKING_URI", client_for(project).tracking_uri)
    found = model if model.startswith("models:/") else project / model
    predictor = Predictor(Path(found), device="cpu")
    return [(r.path, [(c, round(p, 5)) for c, p in r.top]) for r in predictor.predict(photos)]


def test_a_registered_version_predicts_like_the_export(
    tmp_path: Path, photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    project = _project(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert _register(project, photos[0]) == "1"
    assert _register(project, photos[0]) == "2"  # each export adds a version
    want = _here(project, "models/export", photos, monkeypatch)
    assert _answers(_predict(project, "models:/pets/1", photos)) == want  # as a user runs it

    client = client_for(project)
    version = client.get_model_version("pets", "1")
    md5 = md5_file(project / "models" / "export" / WEIGHTS)
    assert version.tags["weights.md5"] == md5 and version.tags["weights.copied"] == "false"
    assert version.tags["git.commit"] == "abc" and version.run_id == version.tags["pets.run"]
    experiment = client.get_experiment_by_name("pets")
    assert experiment.tags[EXPERIMENT_KIND] == MODEL_TRAINING  # the UI's model-training view
    mlflow.set_tracking_uri(client.tracking_uri)
    info = mlflow.models.get_model_info("models:/pets/1")
    assert [c["name"] for c in info.signature.inputs.to_dict()] == ["image"]
    assert [c["name"] for c in info.signature.outputs.to_dict()] == ["class", "probability"]
    assert info.saved_input_example_info is not None
    # By reference: the logged model holds the spec, not the weights.
    logged = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "d")))
    assert not list(logged.rglob(WEIGHTS)) and list(logged.rglob(SPEC))


def test_weights_are_found_in_dvcs_cache_or_the_error_is_one_line(
    tmp_path: Path, photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = _project(tmp_path)
    _register(project, photos[0])
    want = _here(project, "models/export", photos, monkeypatch)
    weights = project / "models" / "export" / WEIGHTS
    md5 = md5_file(weights)
    cached = dvc_cache_file(project, md5)
    cached.parent.mkdir(parents=True)
    shutil.copyfile(weights, cached)  # what `dvc commit` keeps
    write_export(project / "models" / "export", CLASSES, seed=2)  # the next export
    assert md5_file(weights) != md5
    assert _here(project, "models:/pets/1", photos, monkeypatch) == want

    cached.unlink()
    gone = _predict(project, "models:/pets/1", photos[:1])
    assert gone.returncode == 1 and len(gone.stderr.strip().splitlines()) == 1, gone.stderr
    assert md5 in gone.stderr and "tracking.log_models" in gone.stderr
    missing = _predict(project, "models:/pets/99", photos[:1])
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
    assert "models:/pets/99" in missing.stderr


def test_log_models_keeps_a_copy_in_mlflow(
    tmp_path: Path, photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = _project(tmp_path)
    _register(project, photos[0], copy_weights=True)
    want = _here(project, "models/export", photos, monkeypatch)
    shutil.rmtree(project / "models" / "export")
    assert _here(project, "models:/pets/1", photos, monkeypatch) == want
    assert client_for(project).get_model_version("pets", "1").tags["weights.copied"] == "true"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_mlflow_models_serve_answers_on_loopback(
    tmp_path: Path, photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = _project(tmp_path)
    _register(project, photos[0])
    want = {path: top[0] for path, top in _here(project, "models/export", photos, monkeypatch)}
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/pets/1"),
            *("--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)),
        ],
        cwd=project,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=tool_env(MLFLOW_TRACKING_URI=client_for(project).tracking_uri),
    )
    try:
        body = json.dumps(
            {
                "dataframe_split": {
                    "columns": ["image"],
                    "data": [[base64.b64encode(p.read_bytes()).decode()] for p in photos],
                }
            }
        ).encode()
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/invocations",
                    data=body,
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=30) as answer:
                    rows = json.loads(answer.read())["predictions"]
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(30)
    got = [(row["class"], round(row["probability"], 5)) for row in rows]
    assert got == [want[str(p)] for p in photos]


@pytest.mark.dag
def test_the_export_stage_registers_its_model_and_runs_carry_the_data_set(
    snakemade: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = client_for(snakemade)
    versions = client.search_model_versions("name='pets'")
    assert versions, "the export stage registered nothing"
    latest = max(versions, key=lambda v: int(v.version))
    run = client.get_run(latest.run_id)
    assert run.data.tags["pets.stage"] == "export"
    for key in ("git.commit", "pets.pipeline", "data.archive_md5", "seed"):
        assert latest.tags[key] == run.data.tags[key]
    assert latest.tags["weights.md5"] == md5_file(snakemade / "models" / "export" / WEIGHTS)
    photos = sorted((snakemade / "data" / "dataset").rglob("*.jpg"))[:4]
    assert _here(snakemade, f"models:/pets/{latest.version}", photos, monkeypatch) == _here(
        snakemade, "models/export", photos, monkeypatch
    )

    import pandas as pd

    split = pd.read_csv(snakemade / "data" / "split.csv")
    counts = {"photos": len(split), "valid": int(split["is_valid"].sum())}
    stage = client.search_runs(
        [run.info.experiment_id], "tags.`pets.stage` = 'train_frozen'", max_results=1
    )[0]
    parent = client.get_run(stage.data.tags["mlflow.parentRunId"])
    for found, context in ((stage, "training"), (parent, "training"), (run, "evaluation")):
        (used,) = found.inputs.dataset_inputs
        profile = json.loads(used.dataset.profile)
        assert {k: profile[k] for k in counts} == counts
        assert profile["archive_md5"] == run.data.tags["data.archive_md5"]
        assert used.dataset.name == "oxford-iiit-pet"
        tags = {t.key: t.value for t in used.tags}
        assert tags["mlflow.data.context"] == context, found.info.run_name
    assert client.get_experiment(run.info.experiment_id).tags[EXPERIMENT_KIND] == MODEL_TRAINING


EXPAND_PARENT = """(() => {
  const row = Array.from(document.querySelectorAll('[role=row]'))
    .find((r) => r.innerText.includes('snakemake 20'));
  const button = row && Array.from(row.querySelectorAll('button'))
    .find((b) => b.innerText.trim() === '');
  if (button) button.click();
  return Boolean(button);
})()"""


@pytest.mark.dag
def test_pets_ui_opens_on_the_runs_with_their_data_set(
    snakemade: Path, chromium: str, tmp_path: Path
) -> None:
    import asyncio
    import signal

    from tests.browser import DevTools

    project = tmp_path / "project"  # the UI's own copy of the store: it may migrate it
    project.mkdir()
    for name in ("params.yaml", "mlflow.db"):
        shutil.copy2(snakemade / name, project / name)
    port = _free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "pets.cli", "--project", str(project), "ui", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "ui.log").open("w"),
        text=True,
        env=tool_env(),
    )
    address = first_address(ui, 180, r"\S+")
    try:
        assert address, (tmp_path / "ui.log").read_text()[-3000:]
        assert address.endswith("?workflowType=machine_learning")

        async def drive() -> tuple[str, str]:
            async with DevTools(chromium, tmp_path / "profile", timeout=120) as page:
                await page.send(
                    "Emulation.setDeviceMetricsOverride",
                    width=1500,
                    height=1000,
                    deviceScaleFactor=1,
                    mobile=False,
                )
                await page.open(address)
                await page.wait_for("document.body.innerText.includes('snakemake 20')")
                parent_only = await page.evaluate("document.body.innerText")
                assert await page.evaluate(EXPAND_PARENT)
                await page.wait_for("document.body.innerText.includes('train_frozen')")
                return parent_only, await page.evaluate("document.body.innerText")

        parent_only, expanded = asyncio.run(drive())
    finally:
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(60) == 0
    assert "Model training" in parent_only and "oxford-iiit-pet (" in parent_only
    for stage in ("labels", "train_frozen", "finetune", "export", "interpret@stage-1"):
        assert stage in expanded
    with pytest.raises(ConnectionRefusedError):  # the UI's server went with it
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_pets_ui_refuses_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # this project's store, not one set

    def ui(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pets.cli", "--project", str(project), "ui", *args],
            capture_output=True,
            text=True,
            env=tool_env(),
        )

    project = _project(tmp_path)
    nothing = ui()  # no runs yet
    assert nothing.returncode == 1 and "no runs tracked yet" in nothing.stderr
    assert len(nothing.stderr.strip().splitlines()) == 1
    experiment_id(client_for(project), "pets", project)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = ui("--port", str(taken.getsockname()[1]))
    assert busy.returncode == 1 and "is in use" in busy.stderr, busy.stderr
    assert len(busy.stderr.strip().splitlines()) == 1
