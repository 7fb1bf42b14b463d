"""Torch dataset over `Example`s and the batch collator (targets aligned with each example's label order)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset, get_worker_info

from gliclass.data.formats import Example
from gliclass.data.label_groups import EXAMPLE_LABELS_MASK, ROW_EXAMPLE, ROW_LABEL_START, LabelGroupPlanner
from gliclass.processing import GLiClassProcessor, LabelBudgetError


class GLiClassDataset(Dataset):
    """Encodes examples on access; with `shuffle_labels`, each access presents the labels in a fresh order.

    The shuffle is seeded by (seed, draw, index). The training sampler (`EpochSampler(tag_draws=True)`) passes
    `(index, draw)` keys, draw = the sample's place in the run, so the order depends on neither the process that
    encodes the row nor what ran before a restart: a resumed run draws the same orders as an unbroken one, with any
    number of loader workers. A plain index key draws from a per-process count of accesses instead (and the worker's
    seed, if any). Orders change every epoch and repeat across runs with the same seeds.

    With `trim_labels_to_fit` (training), a row whose labels leave the text less than the processor's
    `min_text_tokens` (`LabelBudgetError`) is kept by dropping negative labels from the end of its (shuffled) label
    order, as few as needed; positives are never dropped. `item["labels_trimmed"]` counts the dropped labels. A row
    that does not fit even with its positives alone still raises `LabelBudgetError`, naming the row.

    With `group_labels_to_fit` (evaluation and validation), such a row keeps every label: it becomes several model
    rows, its labels in groups that each fit beside the text, planned as the pipeline plans them
    (`gliclass.data.label_groups`); `item["parts"]` holds the encoded groups, each with its `label_start`.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        processor: GLiClassProcessor,
        shuffle_labels: bool = False,
        seed: int = 0,
        trim_labels_to_fit: bool = False,
        group_labels_to_fit: bool = False,
    ) -> None:
        if trim_labels_to_fit and group_labels_to_fit:
            raise ValueError("trim_labels_to_fit (training) and group_labels_to_fit (evaluation) exclude each other")
        self.examples = list(examples)
        self.processor = processor
        self.shuffle_labels = shuffle_labels
        self.seed = seed
        self.trim_labels_to_fit = trim_labels_to_fit
        self.group_labels_to_fit = group_labels_to_fit
        self._planner: LabelGroupPlanner | None = None  # made on the first row that needs label groups
        self._draws = 0  # plain-index accesses so far (per process): a new order every time an index is revisited

    def __len__(self) -> int:
        return len(self.examples)

    def set_draws(self, draws: int) -> None:
        self._draws = draws

    def _rng(self, index: int, draw: int | None) -> random.Random:
        if draw is not None:
            # the key of a draw in the main process: orders are those of runs before draws were passed in
            return random.Random(f"{self.seed}:main:{draw}:{index}")
        worker = get_worker_info()
        self._draws += 1
        return random.Random(f"{self.seed}:{worker.seed if worker else 'main'}:{self._draws}:{index}")

    def label_order(self, index: int, draw: int | None = None) -> list[str]:
        labels = list(self.examples[index].all_labels)
        if self.shuffle_labels:
            self._rng(index, draw).shuffle(labels)
        return labels

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """`dataset[index]`, or `dataset[index, draw]` (from `EpochSampler(tag_draws=True)`)."""
        index, draw = key if isinstance(key, tuple) else (key, None)
        example = self.examples[index]
        labels = self.label_order(index, draw)
        trimmed = 0
        try:
            try:
                item = self._encode(example, labels)
            except LabelBudgetError as err:
                if self.group_labels_to_fit:
                    item = self._label_groups(example, labels)
                elif not self.trim_labels_to_fit:
                    raise
                else:
                    labels, item, trimmed = self._trim_labels(example, labels, err)
        except LabelBudgetError as err:
            raise LabelBudgetError(f"{example.source}: {err}") from err  # same class, so callers can still catch it
        except (TypeError, ValueError) as err:
            if type(err) not in (TypeError, ValueError):
                raise
            raise type(err)(f"{example.source}: {err}") from err  # name the row; the processor cannot
        item["targets"] = example.targets(labels)
        item["label_names"] = labels
        item["labels_trimmed"] = trimmed
        item["text"], item["id"] = example.text, example.meta.get("id")
        return item

    def sequence_lengths(self, chunk: int = 1024) -> list[int]:
        """Each example's text-encoder sequence length in tokens (text, labels in their stored order, prompt,
        examples), capped at the processor's budget: the cost key of length-grouped batching. Label order changes a
        length by a token at most; a row over the budget is cut (or trimmed) to it."""
        processor, budget = self.processor, self.processor.budget
        lengths: list[int] = []
        for start in range(0, len(self.examples), chunk):
            part = self.examples[start : start + chunk]
            strings = [processor.segments(e.text, e.all_labels, e.prompt, e.examples).string for e in part]
            lengths += [min(len(ids), budget) for ids in processor.tokenizer(strings, verbose=False)["input_ids"]]
        return lengths

    def _encode(self, example: Example, labels: list[str]) -> dict[str, Any]:
        return self.processor.encode(example.text, labels, example.prompt, example.examples)

    def _label_groups(self, example: Example, labels: list[str]) -> dict[str, Any]:
        """Every label of a row over the budget, in groups that each fit beside the text: `{"parts": [encoded group
        with its "label_start"], "num_labels"}`."""
        if self._planner is None:
            self._planner = LabelGroupPlanner(self.processor)
        parts = []
        for text, start, group in self._planner.rows(example.text, labels, example.prompt, example.examples):
            part = self.processor.encode(text, group, example.prompt, example.examples)
            part["label_start"] = start
            parts.append(part)
        return {"parts": parts, "num_labels": len(labels)}

    def _trim_labels(
        self, example: Example, labels: list[str], error: LabelBudgetError
    ) -> tuple[list[str], dict[str, Any], int]:
        """(kept labels, item, number dropped): the fewest negatives, taken from the end of `labels`, dropped so the
        row fits; `LabelBudgetError` when even the positives alone (a single negative if none) do not fit."""
        # negatives score 0; positives (> 0) and labels of unknown truth (NaN or < 0, some RL streams) are kept
        negatives = [i for i, label in enumerate(labels) if example.true_labels.get(label, 0.0) == 0.0]
        positives = len(labels) - len(negatives)
        droppable = len(negatives) if positives else len(negatives) - 1  # a row keeps at least one label

        def without(count: int) -> list[str]:
            dropped = set(negatives[len(negatives) - count :]) if count else set()
            return [label for i, label in enumerate(labels) if i not in dropped]

        if droppable < 1:
            raise LabelBudgetError(f"{error} (no negative label to drop)") from error
        try:  # the most that may be dropped: if this does not fit, nothing does
            best = (droppable, self._encode(example, without(droppable)))
        except LabelBudgetError as err:
            kept = f"only its {positives} positive label(s)" if positives else "a single negative label"
            raise LabelBudgetError(f"{err} (even with {kept}, of {len(labels)} candidates)") from error
        low, high = 1, droppable  # dropping `high` fits and dropping `low - 1` does not: find the fewest that fits
        while low < high:
            mid = (low + high) // 2
            try:
                best = (mid, self._encode(example, without(mid)))
                high = mid
            except LabelBudgetError:
                low = mid + 1
        count, item = best
        return without(count), item, count


class GLiClassCollator:
    """`processor.collate` plus `targets` [B, C] (0 in padded slots), `label_names` (list of lists), `texts`,
    `rows_trimmed` (rows whose negative labels were trimmed to fit, an int) and `ids` when every row has an `id` (the
    PPO feedback reward looks examples up by them). A batch with label groups (evaluation rows over the budget) holds
    more model rows than texts: its model tensors are per model row, `targets` and `label_names` per text, and
    `row_example`, `row_label_start` and `example_labels_mask` map one onto the other (`label_groups.reassemble`)."""

    def __init__(self, processor: GLiClassProcessor) -> None:
        self.processor = processor

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if any("parts" in item for item in items):
            batch = self._grouped(items)
            targets = torch.zeros(batch[EXAMPLE_LABELS_MASK].shape, dtype=torch.float)
        else:
            batch = self.processor.collate(items)
            targets = torch.zeros(batch["labels_mask"].shape, dtype=torch.float)
        for row, item in enumerate(items):
            targets[row, : len(item["targets"])] = torch.tensor(item["targets"], dtype=torch.float)
        batch["targets"] = targets
        batch["label_names"] = [list(item["label_names"]) for item in items]
        batch["texts"] = [item["text"] for item in items]
        batch["rows_trimmed"] = sum(1 for item in items if item.get("labels_trimmed", 0) > 0)
        ids = [item.get("id") for item in items]
        if all(i is not None for i in ids):
            batch["ids"] = ids
        return batch

    def _grouped(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """A batch with more model rows than texts (label groups, `GLiClassDataset(group_labels_to_fit=True)`): the
        model rows' tensors, plus which text each row belongs to, where its labels start in that text's label list,
        and the texts' own [B, C] label mask (see `gliclass.data.label_groups.reassemble`)."""
        parts = [item.get("parts", [item]) for item in items]
        batch: dict[str, Any] = self.processor.collate([part for group in parts for part in group])
        batch[ROW_EXAMPLE] = torch.tensor([b for b, group in enumerate(parts) for _ in group], dtype=torch.long)
        batch[ROW_LABEL_START] = torch.tensor(
            [part.get("label_start", 0) for group in parts for part in group], dtype=torch.long
        )
        counts = torch.tensor([item["num_labels"] for item in items])
        batch[EXAMPLE_LABELS_MASK] = torch.arange(int(counts.max())).unsqueeze(0) < counts.unsqueeze(1)
        return batch
