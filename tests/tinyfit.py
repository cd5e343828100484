"""A fit small enough to run many times in a test: three blobs of points in 2-D, a two-layer
body with the lesson's head split, and loaders shaped like `pets.data.Loader` (len, batches,
`targets_in_order`, `state` and `load_state` for resume). Runs in well under a second on a CPU,
in any precision (fp16 autocast included, which is too slow on a CPU for a real CNN)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

SPLIT = "2"  # the body's second layer group starts at its second Linear
CLASSES = 3


def blobs(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` points around three centres, and their classes."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(count) % CLASSES
    centres = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    return centres[targets] + 0.6 * torch.randn(count, 2, generator=generator), targets


class Batches:
    """Batches of (points, classes). Training ones are shuffled with their own generator; from
    epoch `poison_from` on every class is shifted by one (the wrong labels a late epoch can be
    forced to learn, so that an earlier epoch is the best)."""

    def __init__(
        self,
        points: torch.Tensor,
        targets: torch.Tensor,
        bs: int,
        seed: int | None = None,
        poison_from: int | None = None,
    ) -> None:
        self.points, self.targets, self.bs = points, targets, bs
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.poison_from, self.epoch = poison_from, 0

    def __len__(self) -> int:
        return len(self.points) // self.bs if self.generator else -(-len(self.points) // self.bs)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        count = len(self.points)
        order = torch.randperm(count, generator=self.generator) if self.generator else None
        targets = self.targets
        if self.poison_from is not None and self.epoch >= self.poison_from:
            targets = (targets + 1) % CLASSES
        self.epoch += 1
        for start in range(0, len(self) * self.bs, self.bs):
            index = (
                order[start : start + self.bs]
                if order is not None
                else slice(start, start + self.bs)
            )
            yield self.points[index], targets[index]

    def targets_in_order(self) -> torch.Tensor:
        """Every class, in the order validation batches come."""
        return self.targets

    def state(self) -> dict[str, Any]:
        """What a resumed fit needs to draw the same batches."""
        return {"generator": self.generator.get_state(), "epoch": self.epoch}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from `state`."""
        self.generator.set_state(state["generator"])
        self.epoch = state["epoch"]


def model(seed: int = 0) -> nn.Sequential:
    """`nn.Sequential(body, head)` as `pets.model.create_cnn` builds it, small."""
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
    return nn.Sequential(body, nn.Linear(32, CLASSES))


def loaders(poison_from: int | None = None) -> tuple[Batches, Batches]:
    """A training loader (96 points, bs 8) and a validation one (48 points)."""
    train = Batches(*blobs(96, seed=1), bs=8, seed=2, poison_from=poison_from)
    valid = Batches(*blobs(48, seed=3), bs=16)
    return train, valid
