"""Stage `preview`: the lesson's `data.show_batch(rows=3)`.

Takes rows x rows training photos (chosen with `seed`), applies the training transforms exactly as
training does (the lesson's `get_transforms()`, params `augment.*`) at `preview.size`, normalises
with ImageNet statistics and undoes it for display, each titled with its label.

params: preview.*, augment.*, seed
inputs: --split, --cache (the pixel cache)
outputs: --figure (reports/show_batch.png)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pets import paths
from pets.config import Params
from pets.stage import StageSpec, stage_cli

if TYPE_CHECKING:
    from pets.tracking import Tracker


def main(
    params: Params, *, split: Path, cache: Path, figure: Path, tracker: Tracker | None = None
) -> None:
    """Render the grid of augmented training photos."""
    import torch

    from pets.cache import PixelCache
    from pets.labels import read_split
    from pets.plots import image_grid, save
    from pets.tracking import Tracker
    from pets.transforms import IMAGENET_MEAN, IMAGENET_STD, augment, draw, normalize

    tracker = tracker or Tracker()
    table = read_split(split)
    train = table[~table["is_valid"]].reset_index(drop=True)
    count = min(params.preview.rows**2, len(train))
    generator = torch.Generator().manual_seed(params.seed)
    chosen = train.iloc[torch.randperm(len(train), generator=generator)[:count].tolist()]
    pixels = PixelCache(cache)
    rows = pixels.rows_for(chosen["path"].tolist())
    batch = augment(
        pixels.read(rows),
        pixels.sizes(rows),
        params.preview.size,
        draw(params.augment, count, generator),
        params.augment.pad_mode,
    )
    normalised = normalize(batch, IMAGENET_MEAN, IMAGENET_STD)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    shown = normalised * std + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    save(
        image_grid(
            shown.permute(0, 2, 3, 1).numpy(), chosen["label"].tolist(), params.preview.rows
        ),
        figure,
    )
    print(f"{figure}: {count} augmented training photos at {params.preview.size}px")
    tracker.log_artifact(figure)


SPEC = StageSpec(
    name="preview",
    params=("preview", "augment", "seed"),
    inputs={"split": paths.SPLIT, "cache": paths.CACHE},
    outputs={"figure": paths.SHOW_BATCH},
    figures={"figure": "Data"},
    threads=1,
)


def cli(argv: list[str] | None = None) -> None:
    """Command line: `python workflow/scripts/preview.py --help`."""
    stage_cli(SPEC, main, __doc__, argv)


if __name__ == "__main__":
    cli()
