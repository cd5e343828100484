"""Finding photos (the lesson's `get_image_files`), checking they decode, decoding them to RGB."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
# PIL's own guard is 89M pixels (warning) and 179M (error); a 20000x20000 "photo" is refused.
MAX_PIXELS = 178_956_970


def find_images(folder: Path) -> list[Path]:
    """Every image file under `folder` by extension (any case), recursively, sorted, skipping
    hidden files and folders."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder).parts
        if any(part.startswith(".") for part in relative):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


@dataclass(frozen=True)
class ImageCheck:
    """What opening a photo once found: its size, or why it cannot be used."""

    width: int = 0
    height: int = 0
    problem: str = ""


def _open(path: Path | IO[bytes]) -> Image.Image:
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(path)


def check_image(path: Path) -> ImageCheck:
    """Decode `path` fully (in JPEG draft mode, 1/8 scale, which still reads every byte) and
    return its upright size, or the reason it cannot be used."""
    try:
        if path.stat().st_size == 0:
            return ImageCheck(problem="empty file")
        with _open(path) as image:
            width, height = image.size
            if width < 2 or height < 2:
                return ImageCheck(problem=f"too small ({width}x{height})")
            if image.format == "JPEG":
                image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            image.load()
            orientation = image.getexif().get(0x0112, 1)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return ImageCheck(problem=f"too many pixels (limit {MAX_PIXELS:,})")
    except UnidentifiedImageError:
        return ImageCheck(problem="not an image")
    except (OSError, SyntaxError, ValueError) as exc:
        return ImageCheck(problem=f"does not decode ({exc})")
    if orientation in (5, 6, 7, 8):  # EXIF says the photo is stored rotated by 90 degrees
        width, height = height, width
    return ImageCheck(width, height)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB: 16-bit scaled down, transparency composited onto white, CMYK and
    palette converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    return image.convert("RGB") if image.mode != "RGB" else image


# JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale in the DCT; asking for at least this many
# times the final size leaves the last step to an antialiased resize (Pillow's `thumbnail` does
# the same). Measured on 2592x1984 JPEGs: a draft at 1x loses 1.0 dB against a full decode,
# one at 2x nothing (benchmarks/README.md, "large photos").
DRAFT_GAP = 2.0


def load_rgb(path: Path | IO[bytes], longest: int | None = None) -> Image.Image:
    """Decode `path` (a file, or bytes in memory) upright (EXIF orientation applied) as RGB;
    with `longest`, resized so its longer side is `longest` pixels, using JPEG draft mode to
    decode no more than needed."""
    with _open(path) as image:
        if longest is not None and image.format == "JPEG":
            width, height = image.size
            scale = min(1.0, DRAFT_GAP * longest / max(width, height))
            image.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
        image.load()
        upright = ImageOps.exif_transpose(image)
        rgb = to_rgb(upright)
    if longest is not None:
        width, height = rgb.size
        scale = longest / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if size != rgb.size:
            rgb = rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)
    return rgb


def load_onto_canvas(path: Path | IO[bytes], canvas: np.ndarray) -> tuple[int, int]:
    """Decode `path` (a file, or bytes in memory as `pets serve` holds uploads) with its long
    side the canvas's side and place it at the canvas's top-left (how the pixel cache stores
    photos, and how `pets predict` reads them); returns its (height, width)."""
    image = np.asarray(load_rgb(path, longest=canvas.shape[0]))
    height, width = image.shape[:2]
    canvas[:height, :width] = image
    return height, width
