"""Photos of every kind a real data set holds: decoded to RGB, or refused with a reason."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pets.images import check_image, find_images, load_rgb


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims width x height pixels (enough for the bomb check to see it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def photos(tmp_path: Path) -> dict[str, Path]:
    """One file per kind, all named like photos."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
    made = {}

    def save(name: str, image: Image.Image, **kwargs: object) -> None:
        made[name] = tmp_path / name
        image.save(made[name], **kwargs)

    save("rgb.jpg", rgb)
    save("grey.jpg", rgb.convert("L"))
    save("palette.png", rgb.convert("P"))
    save("cmyk.jpg", rgb.convert("CMYK"))
    rgba = rgb.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: composited onto white
    save("rgba.png", rgba)
    sixteen = Image.fromarray(np.full((30, 40), 65535, dtype=np.uint16))
    save("sixteen.png", sixteen)
    frames = [rgb, rgb.rotate(90)]
    save("animated.gif", frames[0], save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: shown 90 degrees clockwise, so 30 wide x 40 high
    save("exif.jpg", rgb, exif=exif)
    save("tiny.png", Image.new("RGB", (1, 1)))
    made["empty.jpg"] = tmp_path / "empty.jpg"
    made["empty.jpg"].write_bytes(b"")
    full = (tmp_path / "rgb.jpg").read_bytes()
    made["truncated.jpg"] = tmp_path / "truncated.jpg"
    made["truncated.jpg"].write_bytes(full[: len(full) // 2])
    made["text.jpg"] = tmp_path / "text.jpg"
    made["text.jpg"].write_text("not a photo")
    made["bomb.png"] = _png_header_only(tmp_path / "bomb.png", 20000, 20000)
    return made


@pytest.mark.parametrize(
    "name",
    ["rgb.jpg", "grey.jpg", "palette.png", "cmyk.jpg", "rgba.png", "sixteen.png", "animated.gif"],
)
def test_accepted_kinds_decode_to_rgb(photos: dict[str, Path], name: str) -> None:
    check = check_image(photos[name])
    assert check.problem == "" and (check.width, check.height) == (40, 30)
    array = np.asarray(load_rgb(photos[name]))
    assert array.shape == (30, 40, 3) and array.dtype == np.uint8


def test_transparency_becomes_white_and_16_bit_scales(photos: dict[str, Path]) -> None:
    assert np.asarray(load_rgb(photos["rgba.png"])).min() == 255
    assert np.asarray(load_rgb(photos["sixteen.png"])).min() == 255


def test_exif_rotation_is_applied(photos: dict[str, Path]) -> None:
    check = check_image(photos["exif.jpg"])
    assert (check.width, check.height) == (30, 40)
    assert load_rgb(photos["exif.jpg"]).size == (30, 40)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("empty.jpg", "empty file"),
        ("truncated.jpg", "does not decode"),
        ("text.jpg", "not an image"),
        ("tiny.png", "too small (1x1)"),
        ("bomb.png", "too many pixels"),
    ],
)
def test_unusable_files_say_why(photos: dict[str, Path], name: str, problem: str) -> None:
    assert check_image(photos[name]).problem.startswith(problem)


def test_resize_keeps_aspect_with_long_side(photos: dict[str, Path]) -> None:
    assert load_rgb(photos["rgb.jpg"], longest=20).size == (20, 15)
    assert load_rgb(photos["exif.jpg"], longest=20).size == (15, 20)


def test_find_images_by_extension_recursively(tmp_path: Path) -> None:
    for name in ["b/2.JPG", "a/1.png", "c.txt", ".hidden/3.jpg", "a/x.mat", "d.webp"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a/1.png", "b/2.JPG", "d.webp"]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(error, 1e-12)))


def test_large_jpegs_decode_as_sharp_as_a_full_decode(tmp_path: Path) -> None:
    """Draft mode must not cost detail: a large photo read at its cache size matches a full
    decode resized the same way (a draft at 1x the size lost about 1 dB on such photos)."""
    from pets.synthetic import make_photo

    rng = np.random.default_rng(3)
    make_photo(1, 4, rng, (2400, 1800)).save(tmp_path / "big.jpg", quality=90)
    ours = np.asarray(load_rgb(tmp_path / "big.jpg", longest=300))
    with Image.open(tmp_path / "big.jpg") as full:
        full = full.convert("RGB").resize(
            (ours.shape[1], ours.shape[0]), Image.Resampling.BILINEAR, reducing_gap=None
        )
    assert _psnr(ours, np.asarray(full)) > 44
