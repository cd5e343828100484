"""Stage `cache`: decode every photo of the split once into the pixel cache.

Each photo is decoded (JPEG draft mode: no more pixels than needed), turned upright and RGB,
resized so its long side is `cache.size` and stored as uint8 at the top-left of a square canvas
in one .npy file. Training stages read canvases from it instead of decoding JPEGs each epoch;
changing `cache.size` rebuilds it.

params: cache.size
inputs: the data set folder (--dataset), --split
outputs: --cache folder: pixels.npy (photos x size x size x 3, uint8) and index.csv
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from pets import paths
from pets.config import Params
from pets.stage import StageSpec, stage_cli

if TYPE_CHECKING:
    from pets.tracking import Tracker


def main(
    params: Params,
    *,
    dataset: Path,
    split: Path,
    cache: Path,
    threads: int = 1,
    tracker: Tracker | None = None,
) -> None:
    """Build the pixel cache for every photo in the split."""
    from pets.cache import build_cache
    from pets.labels import read_split
    from pets.tracking import Tracker

    tracker = tracker or Tracker()
    paths = read_split(split)["path"].tolist()
    start = time.perf_counter()
    build_cache(dataset, paths, params.cache.size, cache, threads)
    seconds = time.perf_counter() - start
    rate = len(paths) / max(seconds, 1e-9)
    gib = len(paths) * params.cache.size**2 * 3 / 2**30
    print(
        f"{cache}: {len(paths)} photos at {params.cache.size}px in {seconds:.1f}s "
        f"({rate:.0f} photos/s, {gib:.2f} GiB)"
    )
    tracker.log_metrics({"cache_seconds": seconds, "cache_photos_per_s": rate})


SPEC = StageSpec(
    name="cache",
    params=("cache",),
    inputs={"dataset": paths.DATASET, "split": paths.SPLIT},
    outputs={"cache": paths.CACHE},
    folders=frozenset({"cache"}),
    uncached={"cache": "derived pixels, several GB on Pets: rebuilt rather than stored twice"},
)


def cli(argv: list[str] | None = None) -> None:
    """Command line: `python workflow/scripts/cache.py --help`."""
    stage_cli(SPEC, main, __doc__, argv)


if __name__ == "__main__":
    cli()
