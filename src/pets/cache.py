"""The pixel cache: every photo decoded once, resized so its long side is `cache.size`, and kept
as uint8 in one `.npy` file, placed at the top-left of a square canvas (its height and width are
in `index.csv`). Training reads rows of it instead of decoding JPEGs every epoch."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pets.errors import PetsError
from pets.files import atomic_path, write_csv
from pets.images import load_onto_canvas

if TYPE_CHECKING:
    import torch

PIXELS = "pixels.npy"
INDEX = "index.csv"


def build_cache(
    dataset: Path, paths: Sequence[str], size: int, folder: Path, threads: int = 1
) -> pd.DataFrame:
    """Decode each of `paths` (relative to `dataset`) once into `folder`/pixels.npy, in parallel
    threads (Pillow releases the GIL), and write `folder`/index.csv (path, height, width)."""
    heights = np.zeros(len(paths), np.int32)
    widths = np.zeros(len(paths), np.int32)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        pixels = np.lib.format.open_memmap(
            tmp / PIXELS, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3)
        )

        def decode(row: int) -> None:
            try:
                heights[row], widths[row] = load_onto_canvas(dataset / paths[row], pixels[row])
            except OSError as exc:
                raise PetsError(f"{dataset / paths[row]}: cannot decode ({exc})") from None

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            list(pool.map(decode, range(len(paths)), chunksize=8))
        pixels.flush()
        index = pd.DataFrame({"path": list(paths), "height": heights, "width": widths})
        write_csv(tmp / INDEX, index)
    return index


class PixelCache:
    """Reads rows of a pixel cache with positioned reads (no memory map), so a training stage's
    resident memory stays one batch, whatever the cache's size."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            self.index = pd.read_csv(folder / INDEX, keep_default_na=False)
            with open(folder / PIXELS, "rb") as handle:
                major, _ = np.lib.format.read_magic(handle)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if major == 1
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read_header(handle)
                self.offset = handle.tell()
        except (FileNotFoundError, ValueError) as exc:
            raise PetsError(f"{folder}: not a pixel cache ({exc}); rerun the cache stage") from None
        if dtype != np.uint8 or len(shape) != 4 or shape[0] != len(self.index):
            raise PetsError(f"{folder}: pixels.npy does not match index.csv; rerun the cache stage")
        self.count, self.size = shape[0], shape[1]
        self.row_bytes = self.size * self.size * 3
        self._fd = os.open(folder / PIXELS, os.O_RDONLY)
        self._lock = threading.Lock()
        self.rows = {path: row for row, path in enumerate(self.index["path"])}

    def __len__(self) -> int:
        return self.count

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def rows_for(self, paths: Sequence[str]) -> np.ndarray:
        """Cache rows of `paths` (relative to the data set folder)."""
        missing = [path for path in paths if path not in self.rows]
        if missing:
            raise PetsError(
                f"{self.folder}: {len(missing)} photos of the split are not cached, e.g. "
                f"{missing[0]}; rerun the cache stage"
            )
        return np.fromiter((self.rows[path] for path in paths), np.int64, len(paths))

    def photos(self, rows: Sequence[int]) -> list[np.ndarray]:
        """Each of `rows` cut to its photo's own size, uint8 (height, width, 3): for figures,
        without torch (the report and interpret stages draw these and need nothing else)."""
        sizes = self.index[["height", "width"]].to_numpy(np.int64)
        canvas = np.empty((self.size, self.size, 3), np.uint8)
        found = []
        for row in rows:
            self._read_into(memoryview(canvas).cast("B"), self.offset + int(row) * self.row_bytes)
            height, width = sizes[row]
            found.append(canvas[:height, :width].copy())
        return found

    def sizes(self, rows: np.ndarray) -> torch.Tensor:
        """(height, width) of each photo inside its canvas, as a float tensor (len(rows), 2)."""
        import torch  # here, not at the top: the figure stages read photos without torch

        return torch.from_numpy(self.index[["height", "width"]].to_numpy(np.float32)[rows])

    def read(self, rows: Sequence[int], out: torch.Tensor | None = None) -> torch.Tensor:
        """Canvases of `rows` as uint8 (len(rows), size, size, 3), into `out` when given (for
        instance a pinned buffer)."""
        import torch

        if out is None:
            out = torch.empty((len(rows), self.size, self.size, 3), dtype=torch.uint8)
        buffer = out.numpy()
        for slot, row in enumerate(rows):
            self._read_into(
                memoryview(buffer[slot]).cast("B"), self.offset + int(row) * self.row_bytes
            )
        return out

    def _read_into(self, view: memoryview, position: int) -> None:
        if hasattr(os, "preadv"):
            done = os.preadv(self._fd, [view], position)
        else:  # pragma: no cover - platforms without preadv
            with self._lock:
                os.lseek(self._fd, position, os.SEEK_SET)
                done = os.readv(self._fd, [view])
        if done != len(view):
            raise PetsError(f"{self.folder / PIXELS} is truncated; rerun the cache stage")
