"""A training loader that resumes exactly mid-epoch: Lightning stores its `state_dict()` in every checkpoint.

The epoch's order is a permutation drawn from seed + epoch (epoch 0 is the order a plain shuffled DataLoader with a
generator seeded by `seed` draws). With `tag_draws`, the sampler hands out `(index, draw)` pairs, draw = the sample's
place in the run (epoch x size + position + 1), and the dataset seeds each row's label shuffle from it. So nothing
depends on what ran before a restart, nor on which worker process encodes a row: a killed and resumed run sees the same
batches as an unbroken one, with any `num_workers`.

The position saved is that of the batches the loader has handed to training, not of the indices its workers took:
worker processes fetch `prefetch_factor` batches ahead of training, so the sampler runs ahead of what was trained on.

Under DDP the sampler deals whole batches of the epoch's order to the processes (`num_replicas`, `rank`): batch i
goes to process i mod num_replicas, so every batch keeps its one dataset (`groups`) and its length window, and every
process gets the same number of batches (the last round is completed with the epoch's first batches). The sampler is
a `DistributedSampler`, so Lightning uses it as it is instead of wrapping it in its own (which deals single samples
and mixes the datasets of a batch). Positions count batches, the same on every process, so the position Lightning
saves from process 0 resumes every process exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, DistributedSampler


class EpochSampler(DistributedSampler):
    """A permutation drawn from (seed, epoch), resumable after any sample (Lightning calls `set_epoch`).

    With `groups` (one key per sample, e.g. its source dataset) and `batch_size`, the permutation is rearranged so
    each run of `batch_size` consecutive samples comes from one group: full batches of every group in a shuffled
    order, then the groups' leftovers together at the end of the epoch. A bi-encoder then encodes a batch's shared
    label set once instead of once per text.

    With `lengths` (one cost per sample, e.g. its token count) and `length_window`, batches are also length-grouped:
    each group's samples, in permutation order, are cut into windows of `length_window` batches, each window is
    sorted by length (longest first; ties keep the permutation order) and cut into batches, and the batches of all
    groups are shuffled. Dynamic padding then pads each batch to rows of similar length (on the zero-shot mix about
    2.5x fewer padded tokens than random batches). Windows are drawn afresh every epoch, so batch composition still
    changes between epochs. Without `groups`, all samples form one group.

    With `tag_draws`, it yields `(index, draw)` (see the module docstring) instead of the index alone.

    With `num_replicas` > 1 (needs `batch_size`) it yields process `rank`'s share of the epoch: whole batches, dealt
    in turn (see the module docstring). A sample's draw is its place in the whole epoch's order, on any process.
    """

    def __init__(
        self,
        size: int,
        seed: int,
        groups: Sequence[str] | None = None,
        batch_size: int | None = None,
        tag_draws: bool = False,
        lengths: Sequence[int] | None = None,
        length_window: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} of num_replicas {num_replicas}: need num_replicas >= 1, 0 <= rank < it")
        if num_replicas > 1 and (not batch_size or batch_size < 1):
            raise ValueError(f"num_replicas={num_replicas} deals whole batches to the processes: give a batch_size")
        if groups is not None and (len(groups) != size or not batch_size or batch_size < 1):
            raise ValueError(f"groups needs one key per sample ({len(groups)} for {size}) and a batch_size >= 1")
        if lengths is not None and (len(lengths) != size or not batch_size or batch_size < 1 or length_window < 1):
            raise ValueError(
                f"lengths needs one length per sample ({len(lengths)} for {size}), a batch_size >= 1 and a "
                f"length_window >= 1 (got batch_size={batch_size}, length_window={length_window})"
            )
        self.size, self.seed, self.tag_draws = size, seed, tag_draws
        self.groups, self.batch_size = (list(groups) if groups is not None else None), batch_size
        self.lengths, self.length_window = (list(lengths) if lengths is not None else None), length_window
        self.num_replicas, self.rank = num_replicas, rank
        self.shuffle, self.drop_last = True, False  # what Lightning reads of a DistributedSampler
        self.epoch = self.skip = 0
        self.pass_start: tuple[int, int] | None = None  # (epoch, position) where the running pass began
        # this process's positions in the epoch's order (None: all of them, in order)
        self._positions = self._rank_positions() if num_replicas > 1 else None

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.skip = epoch, 0

    def __len__(self) -> int:
        return self.size if self._positions is None else len(self._positions)

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        """Batches of `batch_size` in this process's share of an epoch (the same on every process)."""
        return len(self) // batch_size if drop_last else math.ceil(len(self) / batch_size)

    def _rank_positions(self) -> list[int]:
        """This process's positions in an epoch's order: batches rank, rank + num_replicas, ... of the epoch's
        batches, the last round completed with the epoch's first batches. Only the epoch's last batch can be
        short, and it is last on its process (it is in the last round), so the loader cuts the same batches."""
        size, replicas = self.batch_size, self.num_replicas
        batches = [range(start, min(start + size, self.size)) for start in range(0, self.size, size)]
        rounds = math.ceil(len(batches) / replicas)
        dealt = batches + [batches[i % len(batches)] for i in range(rounds * replicas - len(batches))]
        return [position for batch in dealt[self.rank :: replicas] for position in batch]

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        # a shuffled DataLoader first draws its workers' base seed from this generator, then the permutation:
        # drawing the same way keeps epoch 0 identical to `DataLoader(shuffle=True, generator=seeded)`
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        order = torch.randperm(self.size, generator=generator).tolist()
        if self.groups is not None or self.lengths is not None:
            order = self._grouped(order, generator)
        start, self.skip = self.skip, 0
        self.pass_start = (self.epoch, start)
        drawn = self.epoch * self.size  # samples drawn in the run before this epoch, unbroken or not
        positions = range(self.size) if self._positions is None else self._positions
        for position in positions[start:]:
            yield (order[position], drawn + position + 1) if self.tag_draws else order[position]

    def _grouped(self, order: list[int], generator: torch.Generator) -> list[int]:
        members: dict[str, list[int]] = {}
        for index in order:  # groups in first-seen order, members in permutation order: all seeded
            members.setdefault(self.groups[index] if self.groups is not None else "", []).append(index)
        batches, leftovers = [], []
        size = self.batch_size
        for indices in members.values():
            if self.lengths is not None:
                indices = self._length_sorted(indices)
            full = len(indices) // size * size
            batches += [indices[i : i + size] for i in range(0, full, size)]
            leftovers += indices[full:]
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        return [index for b in shuffled for index in batches[b]] + leftovers

    def _length_sorted(self, indices: list[int]) -> list[int]:
        """Each window of `length_window` batches sorted by length, longest first (a stable sort)."""
        window = self.batch_size * self.length_window
        out: list[int] = []
        for start in range(0, len(indices), window):
            out += sorted(indices[start : start + window], key=lambda i: -self.lengths[i])
        return out


class ResumableLoader(DataLoader):
    """A DataLoader over an `EpochSampler` whose position Lightning checkpoints and restores.

    The position counts the batches handed out by the running iterator (each `batch_size` samples of the sampler's
    pass, the last one possibly fewer), so prefetching workers do not move it. Under DDP the sampler deals whole
    batches to the processes (`EpochSampler(num_replicas=..., rank=...)`, which Lightning leaves in place): each
    process counts the same batches, so the state saved by process 0 resumes them all mid-epoch.
    """

    _handed = 0  # batches handed out by the running iterator

    def __iter__(self) -> Iterator:
        if not isinstance(self.sampler, EpochSampler):
            return super().__iter__()
        if self.batch_size is None:
            raise ValueError("ResumableLoader counts its position in batches: give batch_size, not a batch_sampler")
        if self.sampler.num_replicas > 1 and self.drop_last:
            raise ValueError("a distributed EpochSampler pads the processes to equal batch counts: use drop_last=False")
        self.sampler.pass_start, self._handed = None, 0  # set again when the new pass begins (eagerly with workers)
        return self._counted(super().__iter__())

    def _counted(self, batches: Iterator) -> Iterator:
        for batch in batches:
            self._handed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        if not isinstance(sampler, EpochSampler):
            return {}
        if sampler.pass_start is None:  # no pass began since the last `iter()`: it will start where it is set to
            return {"epoch": sampler.epoch, "yielded": sampler.skip}
        epoch, start = sampler.pass_start
        return {"epoch": epoch, "yielded": min(start + self._handed * self.batch_size, len(sampler))}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not state or not isinstance(self.sampler, EpochSampler):
            return
        # in batches: the same on every process (under DDP the state is process 0's; its last batch may be short)
        epoch, batches = state["epoch"], math.ceil(state["yielded"] / self.batch_size)
        if batches >= self.sampler.num_batches(self.batch_size, self.drop_last):
            # saved after an epoch's last batch: Lightning continues with this iterator
            epoch, batches = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self.sampler.skip = min(batches * self.batch_size, len(self.sampler))
