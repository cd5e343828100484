"""Batch transforms: exact geometry for validation, the lesson's augmentations for training."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pets.cache import PixelCache, build_cache
from pets.config import AugmentParams
from pets.errors import PetsError
from pets.images import load_rgb
from pets.synthetic import make_pets
from pets.transforms import augment, centre_draw, draw, normalize, sampling_grid


def _canvas(height: int, width: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    canvas = np.zeros((1, size, size, 3), np.uint8)
    canvas[0, :height, :width] = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return torch.from_numpy(canvas), torch.tensor([[height, width]], dtype=torch.float32)


def _as_uint8(images: torch.Tensor) -> np.ndarray:
    return (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def test_validation_is_the_centre_square() -> None:
    canvas, sizes = _canvas(48, 64, 64)
    out = augment(canvas, sizes, 48, centre_draw(1))
    assert out.shape == (1, 3, 48, 48)
    np.testing.assert_array_equal(_as_uint8(out), canvas[0, :48, 8:56].numpy())


def test_flip_and_quarter_turns_are_exact() -> None:
    canvas, sizes = _canvas(32, 32, 40)
    photo = canvas[0, :32, :32].numpy()
    flipped = dataclasses.replace(centre_draw(1), dihedral=torch.tensor([1]))
    np.testing.assert_array_equal(_as_uint8(augment(canvas, sizes, 32, flipped)), photo[:, ::-1])
    turned = dataclasses.replace(centre_draw(1), angle=torch.tensor([math.pi / 2]))
    out = _as_uint8(augment(canvas, sizes, 32, turned)).astype(int)
    assert min(np.abs(out - np.rot90(photo, k=k).astype(int)).max() for k in (1, -1)) <= 1


def test_padding_modes_fill_outside_the_photo() -> None:
    canvas, sizes = _canvas(32, 32, 48)
    canvas[0, :32, :32] = 200
    turned = dataclasses.replace(centre_draw(1), angle=torch.tensor([math.pi / 4]))
    zeros = augment(canvas, sizes, 32, turned, pad_mode="zeros")
    assert zeros[0, :, 0, 0].max() == 0  # a corner rotated out of the photo
    reflected = augment(canvas, sizes, 32, turned, pad_mode="reflection")
    assert torch.allclose(
        reflected, torch.full_like(reflected, 200 / 255)
    )  # never the black canvas


def test_draws_are_seeded_and_keep_their_stream() -> None:
    aug = AugmentParams()
    first = draw(aug, 8, torch.Generator().manual_seed(5))
    again = draw(aug, 8, torch.Generator().manual_seed(5))
    assert all(
        torch.equal(a, b)
        for a, b in zip(dataclasses.astuple(first), dataclasses.astuple(again), strict=True)
    )
    quiet = AugmentParams(p_affine=0.0, p_lighting=0.0, do_flip=False)
    generator_a, generator_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    draw(aug, 8, generator_a)
    draw(quiet, 8, generator_b)
    assert torch.equal(torch.rand(3, generator=generator_a), torch.rand(3, generator=generator_b))
    still = draw(quiet, 8, torch.Generator())
    assert (still.angle == 0).all() and (still.zoom == 1).all() and (still.dihedral == 0).all()
    assert (still.brightness == 0).all() and (still.contrast == 1).all()


def test_augmentations_stay_in_range() -> None:
    aug = AugmentParams()
    params = draw(aug, 64, torch.Generator().manual_seed(0))
    assert params.angle.abs().max() <= math.radians(10) + 1e-6
    assert params.zoom.min() >= 1 and params.zoom.max() <= 1.1
    assert params.warp_x.abs().max() <= 0.2
    change = torch.sigmoid(params.brightness)
    assert change.min() >= 0.4 - 1e-6 and change.max() <= 0.6 + 1e-6
    assert params.contrast.min() >= 0.8 - 1e-6 and params.contrast.max() <= 1.25 + 1e-6
    assert 0.55 < (params.angle != 0).float().mean() < 0.95  # p_affine = 0.75
    canvas, sizes = _canvas(48, 64, 64)
    out = augment(canvas.repeat(64, 1, 1, 1), sizes.repeat(64, 1), 32, params)
    assert out.min() >= 0 and out.max() <= 1 and torch.isfinite(out).all()


def test_grid_stays_inside_each_photo() -> None:
    sizes = torch.tensor([[30.0, 60.0], [60.0, 30.0]])
    params = draw(
        AugmentParams(max_rotate=45, max_warp=0.5, p_affine=1), 2, torch.Generator().manual_seed(1)
    )
    grid, _ = sampling_grid(sizes, 64, 16, params)
    pixels = (grid + 1) * 64 / 2
    assert (pixels[0, ..., 0] <= 60).all() and (pixels[0, ..., 1] <= 30).all()
    assert (pixels[1, ..., 0] <= 30).all() and (pixels[1, ..., 1] <= 60).all()


def test_normalize_uses_the_given_stats() -> None:
    images = torch.full((2, 3, 4, 4), 0.5)
    out = normalize(images, (0.5, 0.25, 0.0), (1.0, 0.5, 0.25))
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.0, 0.5, 2.0]))


def test_pixel_cache_round_trip(tmp_path: Path) -> None:
    make_pets(tmp_path / "pets", 2, classes=2, sizes=((60, 45), (45, 60)))
    paths = sorted(
        p.relative_to(tmp_path / "pets").as_posix() for p in (tmp_path / "pets").rglob("*.jpg")
    )
    index = build_cache(tmp_path / "pets", paths, 32, tmp_path / "cache", threads=2)
    assert not list(tmp_path.glob(".cache*"))
    cache = PixelCache(tmp_path / "cache")
    assert len(cache) == 4 and cache.size == 32
    rows = cache.rows_for([paths[2], paths[0]])
    canvases = cache.read(rows)
    for slot, row in enumerate(rows):
        expected = np.asarray(load_rgb(tmp_path / "pets" / paths[row], longest=32))
        height, width = expected.shape[:2]
        assert (index.loc[row, "height"], index.loc[row, "width"]) == (height, width)
        np.testing.assert_array_equal(canvases[slot, :height, :width].numpy(), expected)
        assert canvases[slot, height:, :].sum() == 0 and canvases[slot, :, width:].sum() == 0
    assert cache.sizes(rows).tolist()[0] == [
        float(index.loc[rows[0], "height"]),
        float(index.loc[rows[0], "width"]),
    ]
    with pytest.raises(PetsError, match="1 photos of the split are not cached"):
        cache.rows_for(["images/unknown.jpg"])


def test_damaged_cache_is_refused(tmp_path: Path) -> None:
    make_pets(tmp_path / "pets", 1, classes=2, sizes=((40, 30),))
    paths = sorted(
        p.relative_to(tmp_path / "pets").as_posix() for p in (tmp_path / "pets").rglob("*.jpg")
    )
    build_cache(tmp_path / "pets", paths, 32, tmp_path / "cache")
    with pytest.raises(PetsError, match="not a pixel cache"):
        PixelCache(tmp_path / "nothing")
    pixels = tmp_path / "cache" / "pixels.npy"
    pixels.write_bytes(pixels.read_bytes()[:-100])
    with pytest.raises(PetsError, match="is truncated; rerun the cache stage"):
        PixelCache(tmp_path / "cache").read([1])


def test_loaders_stream_and_resident_give_the_same_batches(tmp_path: Path) -> None:
    from pets.data import DeviceCanvases, Loader, Subset

    make_pets(tmp_path / "pets", 5, classes=2, sizes=((60, 45), (45, 60)))
    paths = sorted(
        p.relative_to(tmp_path / "pets").as_posix() for p in (tmp_path / "pets").rglob("*.jpg")
    )
    build_cache(tmp_path / "pets", paths, 48, tmp_path / "cache")
    cache = PixelCache(tmp_path / "cache")
    subset = Subset(cache.rows_for(paths), np.array([i % 2 for i in range(10)]), paths)
    cpu = torch.device("cpu")
    common = {
        "bs": 4,
        "size": 32,
        "device": cpu,
        "mean": (0.5,) * 3,
        "std": (0.25,) * 3,
        "augment_params": AugmentParams(),
        "seed": 3,
    }
    streamed = Loader(cache, subset, **common)
    resident = Loader(cache, subset, resident=DeviceCanvases(cache, cpu), **common)
    assert len(streamed) == 2  # 10 photos, bs 4: the last partial batch is dropped
    for (a, ya), (b, yb) in zip(streamed, resident, strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    first_epoch = [y.tolist() for _, y in streamed]
    second_epoch = [y.tolist() for _, y in streamed]
    assert first_epoch != second_epoch or len(set(map(tuple, first_epoch))) == 1
    valid = Loader(cache, subset, **{**common, "augment_params": None})
    assert len(valid) == 3 and sum(len(y) for _, y in valid) == 10
    state = streamed.state()
    again = [x for x, _ in streamed]
    streamed.load_state(state)
    assert all(torch.equal(a, b) for a, b in zip(again, [x for x, _ in streamed], strict=True))
