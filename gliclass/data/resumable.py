"""A training loader that resumes exactly mid-epoch: Lightning stores its `state_dict()` in every checkpoint.

The epoch's order is a permutation drawn from (seed, epoch), and label shuffles are keyed on (seed, epoch, index), so
nothing depends on what ran before a restart: a killed and resumed run sees the same batches as an unbroken one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler


class EpochSampler(Sampler[int]):
    """A permutation drawn from (seed, epoch), resumable after any sample (Lightning calls `set_epoch`)."""

    def __init__(self, size: int, seed: int, on_epoch: Callable[[int], None] | None = None) -> None:
        self.size, self.seed, self.on_epoch = size, seed, on_epoch
        self.epoch = self.yielded = self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.skip = epoch, 0
        if self.on_epoch is not None:
            self.on_epoch(self.epoch)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        start, self.skip = self.skip, 0
        for position in range(start, self.size):
            self.yielded = position + 1
            yield order[position]


class ResumableLoader(DataLoader):
    """A DataLoader over an `EpochSampler` whose position Lightning checkpoints and restores.

    Under DDP Lightning swaps in its distributed sampler (which draws its own per-epoch order): there the state is
    empty and a resumed run restarts the interrupted epoch.
    """

    def state_dict(self) -> dict[str, int]:
        if not isinstance(self.sampler, EpochSampler):
            return {}
        return {"epoch": self.sampler.epoch, "yielded": self.sampler.yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not state or not isinstance(self.sampler, EpochSampler):
            return
        epoch, skip = state["epoch"], state["yielded"]
        if skip == len(self.sampler):  # saved after an epoch's last batch: Lightning continues with this iterator
            epoch, skip = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self.sampler.skip = skip
