"""A Pets-like data set made from a seed: photo-like JPEGs named and sized like Oxford-IIIT Pets,
whose breed can be learned from what is drawn, for tests and benchmarks that download nothing."""

from __future__ import annotations

import argparse
import colorsys
import tarfile
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# The 37 Oxford-IIIT Pets breeds; cat breeds are capitalised, as in the data set's file names.
BREEDS = (
    "Abyssinian",
    "Bengal",
    "Birman",
    "Bombay",
    "British_Shorthair",
    "Egyptian_Mau",
    "Maine_Coon",
    "Persian",
    "Ragdoll",
    "Russian_Blue",
    "Siamese",
    "Sphynx",
    "american_bulldog",
    "american_pit_bull_terrier",
    "basset_hound",
    "beagle",
    "boxer",
    "chihuahua",
    "english_cocker_spaniel",
    "english_setter",
    "german_shorthaired",
    "great_pyrenees",
    "havanese",
    "japanese_chin",
    "keeshond",
    "leonberger",
    "miniature_pinscher",
    "newfoundland",
    "pomeranian",
    "pug",
    "saint_bernard",
    "samoyed",
    "scottish_terrier",
    "shiba_inu",
    "staffordshire_bull_terrier",
    "wheaten_terrier",
    "yorkshire_terrier",
)
# Pets photos are mostly 500 pixels on the long side, landscape or portrait.
GOLDEN = 0.6180339887  # spreads per-class angles and shapes evenly for any class count
SIZES = ((500, 375), (500, 333), (375, 500), (500, 400), (333, 500), (450, 338))


def make_photo(
    class_index: int, classes: int, rng: np.random.Generator, size: tuple[int, int]
) -> Image.Image:
    """One photo-like picture: a smooth background and an 'animal' whose colour, stripe angle
    and shape depend on the class, with per-photo jitter in place, scale, light and noise."""
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, size=3)
    slope = rng.uniform(-0.3, 0.3, size=(2, 3))
    background = base + xs[..., None] * slope[0] + ys[..., None] * slope[1]
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    hue = (class_index / classes + rng.normal(0, 0.012)) % 1.0
    colour = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.75, rng.uniform(0.6, 0.95)))
    radius = rng.uniform(0.25, 0.4) * min(width, height)
    cx, cy = rng.uniform(0.35, 0.65) * width, rng.uniform(0.35, 0.65) * height
    aspect = 0.6 + 0.8 * ((class_index * GOLDEN * 2) % 1.0)
    box = (cx - radius, cy - radius * aspect, cx + radius, cy + radius * aspect)
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    angle = np.pi * ((class_index * GOLDEN) % 1.0)
    period = 6 + (class_index % 4) * 5
    stripes = np.sin((xs * np.cos(angle) + ys * np.sin(angle)) * 2 * np.pi / period)
    body = np.asarray(colour, np.float32) * (0.75 + 0.25 * stripes[..., None])
    image.paste(Image.fromarray(np.clip(body, 0, 255).astype(np.uint8)), (0, 0), mask)
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2))), np.float32)
    pixels = pixels * rng.uniform(0.8, 1.2) + rng.normal(0, 6, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_pets(
    root: Path,
    per_class: int,
    classes: int = 37,
    seed: int = 0,
    layout: str = "pets",
    threads: int = 4,
    sizes: Sequence[tuple[int, int]] = SIZES,
) -> list[tuple[str, str]]:
    """Write `per_class` JPEGs for each of the first `classes` breeds under `root` and return
    (relative path, breed) pairs. Layouts: `pets` (images/<Breed>_<n>.jpg, the lesson's
    regex labels them), `folder` (train/ and valid/<breed>/, every 5th photo in valid),
    `labelled` (<breed>/<n>.jpg, the layout people make by hand), `csv` (images/ plus labels.csv
    with name,label)."""
    if not 2 <= classes <= len(BREEDS):
        raise ValueError(f"classes must be 2..{len(BREEDS)}")
    jobs = []
    for class_index, breed in enumerate(BREEDS[:classes]):
        for number in range(1, per_class + 1):
            if layout == "folder":
                split = "valid" if number % 5 == 0 else "train"
                relative = f"{split}/{breed}/{breed.lower()}_{number:04d}.jpg"
            elif layout == "labelled":
                relative = f"{breed}/{number}.jpg"
            else:
                relative = f"images/{breed}_{number}.jpg"
            jobs.append((relative, breed, class_index))

    def write(job: tuple[str, str, int]) -> None:
        relative, _, class_index = job
        rng = np.random.default_rng([seed, class_index, zlib.crc32(relative.encode())])
        size = sizes[int(rng.integers(len(sizes)))]
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        make_photo(class_index, classes, rng, size).save(path, quality=90)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(write, jobs))
    pairs = [(relative, breed) for relative, breed, _ in jobs]
    if layout == "csv":
        lines = ["name,label"] + [f"{p.removeprefix('images/')},{b}" for p, b in pairs]
        (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return pairs


def pack(folder: Path, archive: Path) -> Path:
    """Pack `folder` as a .tgz whose single top-level folder is `folder`'s name."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def cli(argv: list[str] | None = None) -> None:
    """Command line: write a Pets-like data set (and optionally its .tgz)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("root", type=Path, help="folder to create (e.g. data/fake/oxford-iiit-pet)")
    parser.add_argument("--per-class", type=int, default=200, help="photos per breed")
    parser.add_argument("--classes", type=int, default=37)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=("pets", "folder", "labelled", "csv"), default="pets")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--tgz", type=Path, help="also pack the folder into this archive")
    args = parser.parse_args(argv)
    pairs = make_pets(args.root, args.per_class, args.classes, args.seed, args.layout, args.threads)
    print(f"{args.root}: {len(pairs)} photos, {args.classes} breeds")
    if args.tgz:
        print(f"{pack(args.root, args.tgz)}")


if __name__ == "__main__":
    cli()
