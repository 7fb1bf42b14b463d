"""A training loader that resumes exactly mid-epoch: Lightning stores its `state_dict()` in every checkpoint.

The epoch's order is a permutation drawn from seed + epoch (epoch 0 is the order a plain shuffled DataLoader with a
generator seeded by `seed` draws), and the dataset's label-shuffle counter is set from the position, so nothing
depends on what ran before a restart: a killed and resumed run sees the same batches as an unbroken one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Sampler


class EpochSampler(Sampler[int]):
    """A permutation drawn from (seed, epoch), resumable after any sample (Lightning calls `set_epoch`).

    With `groups` (one key per sample, e.g. its source dataset) and `batch_size`, the permutation is rearranged so
    each run of `batch_size` consecutive samples comes from one group: full batches of every group in a shuffled
    order, then the groups' leftovers together at the end of the epoch. A bi-encoder then encodes a batch's shared
    label set once instead of once per text.
    """

    def __init__(
        self,
        size: int,
        seed: int,
        on_start: Callable[[int], None] | None = None,
        groups: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> None:
        if groups is not None and (len(groups) != size or not batch_size or batch_size < 1):
            raise ValueError(f"groups needs one key per sample ({len(groups)} for {size}) and a batch_size >= 1")
        self.size, self.seed, self.on_start = size, seed, on_start
        self.groups, self.batch_size = (list(groups) if groups is not None else None), batch_size
        self.epoch = self.yielded = self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.skip = epoch, 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        # a shuffled DataLoader first draws its workers' base seed from this generator, then the permutation:
        # drawing the same way keeps epoch 0 identical to `DataLoader(shuffle=True, generator=seeded)`
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        order = torch.randperm(self.size, generator=generator).tolist()
        if self.groups is not None:
            order = self._grouped(order, generator)
        start, self.skip = self.skip, 0
        if self.on_start is not None:  # samples drawn before this one in the run, unbroken or not
            self.on_start(self.epoch * self.size + start)
        for position in range(start, self.size):
            self.yielded = position + 1
            yield order[position]

    def _grouped(self, order: list[int], generator: torch.Generator) -> list[int]:
        members: dict[str, list[int]] = {}
        for index in order:  # groups in first-seen order, members in permutation order: all seeded
            members.setdefault(self.groups[index], []).append(index)
        batches, leftovers = [], []
        size = self.batch_size
        for indices in members.values():
            full = len(indices) // size * size
            batches += [indices[i : i + size] for i in range(0, full, size)]
            leftovers += indices[full:]
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return [index for b in shuffled for index in batches[b]] + leftovers


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
