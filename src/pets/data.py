"""Feeding the model: batches read from the pixel cache, augmented and normalised on the device
that trains. Shuffling and augmentation each draw from their own seeded generator, and every
training fit (stage, and phase within a stage) from its own pair: see `stream_seed`."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pets import distributed
from pets.cache import PixelCache
from pets.config import AugmentParams
from pets.errors import PetsError
from pets.labels import read_classes, read_split  # read_classes: here for its callers
from pets.transforms import augment, centre_draw, draw, normalize


def stream_seed(seed: int, *purpose: str | int) -> int:
    """The seed of one random stream: `seed` hashed with what the stream is for (stage, phase,
    shuffle or augmentation, process). A hash rather than `seed + offset`, because offsets
    collide: seed 2's second stream would be seed 3's first, and every stage seeded from `seed`
    alone replays the batches (and augmentations) an earlier stage trained on."""
    text = "/".join(str(part) for part in (seed, *purpose))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


@dataclass(frozen=True)
class Subset:
    """The photos of one side of the split: cache rows, label indices, paths."""

    rows: np.ndarray
    targets: np.ndarray
    paths: list[str]

    def __len__(self) -> int:
        return len(self.rows)


def load_subsets(
    split_csv: Path, classes_json: Path, cache: PixelCache
) -> tuple[Subset, Subset, list[str]]:
    """Training and validation subsets of the split, with the class list."""
    split = read_split(split_csv)
    classes = read_classes(classes_json)
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(split["label"]) - set(index))
    if unknown:
        raise PetsError(f"{split_csv}: label {unknown[0]!r} is not in {classes_json}; rerun labels")
    subsets = []
    for valid in (False, True):
        part = split[split["is_valid"] == valid]
        paths = part["path"].tolist()
        subsets.append(
            Subset(cache.rows_for(paths), part["label"].map(index).to_numpy(np.int64), paths)
        )
    return subsets[0], subsets[1], classes


class DeviceCanvases:
    """The whole pixel cache on the GPU, uploaded once in chunks through one pinned buffer: an
    epoch then costs no host work at all."""

    def __init__(self, cache: PixelCache, device: torch.device, chunk: int = 256) -> None:
        self.canvases = torch.empty(
            (len(cache), cache.size, cache.size, 3), dtype=torch.uint8, device=device
        )
        staging = torch.empty(
            (chunk, cache.size, cache.size, 3), dtype=torch.uint8, pin_memory=device.type == "cuda"
        )
        for start in range(0, len(cache), chunk):
            rows = range(start, min(start + chunk, len(cache)))
            cache.read(rows, staging[: len(rows)])
            self.canvases[start : start + len(rows)].copy_(staging[: len(rows)])
        self.sizes = cache.sizes(np.arange(len(cache))).to(device)

    @staticmethod
    def fits(cache: PixelCache, device: torch.device) -> bool:
        """Whether the cache takes under half of the device's free memory."""
        if device.type != "cuda":
            return False
        free, _ = torch.cuda.mem_get_info(device)
        return len(cache) * cache.row_bytes < free // 2


class Loader:
    """Batches of (normalised images, targets) on `device`, the lesson's `DataLoader`.

    Training loaders shuffle and drop the last partial batch (as fastai's do) and augment;
    validation loaders keep order and take the centre crop."""

    def __init__(
        self,
        cache: PixelCache,
        subset: Subset,
        *,
        bs: int,
        size: int,
        device: torch.device,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment_params: AugmentParams | None,
        seed: int,
        stream: str = "",
        resident: DeviceCanvases | None = None,
        channels_last: bool = False,
        rank: int | None = None,
        world: int | None = None,
    ) -> None:
        self.cache, self.subset, self.bs, self.size = cache, subset, bs, size
        self.device, self.mean, self.std = device, mean, std
        self.augment_params, self.resident = augment_params, resident
        self.train = augment_params is not None
        self.channels_last = channels_last
        # Under torchrun each process takes every `world`-th photo of one shared seeded order.
        self.rank = distributed.rank() if rank is None else rank
        self.world = distributed.size() if world is None else world
        self.seed = seed
        self.shuffle, self.augmentation = torch.Generator(), torch.Generator()
        self.reseed(stream)
        self.targets = torch.tensor(subset.targets)
        self._pool = ThreadPoolExecutor(max_workers=1) if resident is None else None
        self._on_device: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        if self.train:  # every process the same number of full batches
            return len(self.subset) // (self.bs * self.world)
        return -(-len(self._mine(np.arange(len(self.subset)))) // self.bs)

    def _mine(self, order: np.ndarray) -> np.ndarray:
        """This process's share of an epoch's order."""
        return order[self.rank :: self.world]

    def reseed(self, stream: str) -> None:
        """Restart the generators on `stream`'s own sequences (a stage's name, with its phase
        for a second fit): no two fits see the same batches. Every process shares one order
        and draws its own augmentations."""
        self.stream = stream
        self.shuffle.manual_seed(stream_seed(self.seed, stream, "shuffle"))
        self.augmentation.manual_seed(stream_seed(self.seed, stream, "augment", self.rank))

    def state(self) -> dict[str, torch.Tensor]:
        """The generators' states, saved in checkpoints so a resumed run draws the same."""
        return {"shuffle": self.shuffle.get_state(), "augmentation": self.augmentation.get_state()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what `state()` returned."""
        self.shuffle.set_state(state["shuffle"])
        self.augmentation.set_state(state["augmentation"])

    def _order(self) -> list[np.ndarray]:
        count = len(self.subset)
        if self.train:
            order = torch.randperm(count, generator=self.shuffle).numpy()
            order = self._mine(order[: len(self) * self.bs * self.world])
        else:
            order = self._mine(np.arange(count))
        return [order[i : i + self.bs] for i in range(0, len(order), self.bs)]

    def targets_in_order(self) -> torch.Tensor:
        """The targets of this process's validation photos, in the order batches come."""
        return self.targets[torch.from_numpy(self._mine(np.arange(len(self.subset))))]

    def _read(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch read from the cache into (pinned, on CUDA) host memory and sent to the
        device without waiting: runs in the prefetch thread while the model trains."""
        rows = self.subset.rows[positions]
        pinned = self.device.type == "cuda"
        out = torch.empty(
            (len(rows), self.cache.size, self.cache.size, 3), dtype=torch.uint8, pin_memory=pinned
        )
        canvases = self.cache.read(rows, out)
        sizes, targets = self.cache.sizes(rows), self.targets[positions]
        if pinned:
            sizes, targets = sizes.pin_memory(), targets.pin_memory()
        return tuple(t.to(self.device, non_blocking=True) for t in (canvases, sizes, targets))

    def _batches(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(batch size, canvases, sizes, targets) on the device, for one epoch."""
        batches = self._order()
        if self.resident is not None:
            # One copy of the epoch's order; every batch is then gathered on the device.
            if self._on_device is None:
                self._on_device = (
                    torch.from_numpy(self.subset.rows).to(self.device),
                    self.targets.to(self.device),
                )
            rows, targets = self._on_device
            order = torch.from_numpy(np.concatenate(batches) if batches else np.zeros(0, int))
            order = order.to(self.device)
            start = 0
            for positions in batches:
                index = order[start : start + len(positions)]
                start += len(positions)
                picked = rows[index]
                yield (
                    len(positions),
                    self.resident.canvases[picked],
                    self.resident.sizes[picked],
                    targets[index],
                )
            return
        pending: Future | None = self._pool.submit(self._read, batches[0]) if batches else None
        for step, positions in enumerate(batches):
            canvases, sizes, targets = pending.result()
            if step + 1 < len(batches):
                pending = self._pool.submit(self._read, batches[step + 1])
            yield len(positions), canvases, sizes, targets

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        pad_mode = self.augment_params.pad_mode if self.augment_params else "reflection"
        for count, canvases, sizes, targets in self._batches():
            params = (
                draw(self.augment_params, count, self.augmentation)
                if self.train
                else centre_draw(count)
            )
            images = normalize(
                augment(canvases, sizes, self.size, params, pad_mode), self.mean, self.std
            )
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, targets
