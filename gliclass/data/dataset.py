"""Torch dataset over `Example`s and the batch collator (targets aligned with each example's label order)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, get_worker_info

from gliclass.data.formats import Example
from gliclass.processing import GLiClassProcessor, LabelBudgetError


class GLiClassDataset(Dataset):
    """Encodes examples on access; with `shuffle_labels`, each access presents the labels in a fresh order.

    The shuffle is seeded by (seed, worker seed or "main", the count of samples drawn so far, index). The training
    sampler (`EpochSampler`) sets that count at the start of each pass, so a resumed run draws the same orders as an
    unbroken one; orders change every epoch and repeat across runs with the same seeds.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        processor: GLiClassProcessor,
        shuffle_labels: bool = False,
        seed: int = 0,
    ) -> None:
        self.examples = list(examples)
        self.processor = processor
        self.shuffle_labels = shuffle_labels
        self.seed = seed
        self._draws = 0  # accesses so far (per process): a new order every time an index is revisited

    def __len__(self) -> int:
        return len(self.examples)

    def set_draws(self, draws: int) -> None:
        self._draws = draws

    def _rng(self, index: int) -> random.Random:
        worker = get_worker_info()
        self._draws += 1
        return random.Random(f"{self.seed}:{worker.seed if worker else 'main'}:{self._draws}:{index}")

    def label_order(self, index: int) -> list[str]:
        labels = list(self.examples[index].all_labels)
        if self.shuffle_labels:
            self._rng(index).shuffle(labels)
        return labels

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.examples[index]
        labels = self.label_order(index)
        try:
            item = self.processor.encode(example.text, labels, example.prompt, example.examples)
        except LabelBudgetError as err:
            raise LabelBudgetError(f"{example.source}: {err}") from err  # same class, so callers can still catch it
        except (TypeError, ValueError) as err:
            if type(err) not in (TypeError, ValueError):
                raise
            raise type(err)(f"{example.source}: {err}") from err  # name the row; the processor cannot
        item["targets"] = example.targets(labels)
        item["label_names"] = labels
        item["text"], item["id"] = example.text, example.meta.get("id")
        return item


class GLiClassCollator:
    """`processor.collate` plus `targets` [B, C] (0 in padded slots), `label_names` (list of lists), `texts`, and
    `ids` when every row has an `id` (the PPO feedback reward looks examples up by them)."""

    def __init__(self, processor: GLiClassProcessor) -> None:
        self.processor = processor

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = self.processor.collate(items)
        targets = torch.zeros(batch["labels_mask"].shape, dtype=torch.float)
        for row, item in enumerate(items):
            targets[row, : len(item["targets"])] = torch.tensor(item["targets"], dtype=torch.float)
        batch["targets"] = targets
        batch["label_names"] = [list(item["label_names"]) for item in items]
        batch["texts"] = [item["text"] for item in items]
        ids = [item.get("id") for item in items]
        if all(i is not None for i in ids):
            batch["ids"] = ids
        return batch
