"""Evaluation views of the benchmark folders read by `gliclass.data.benchmarks`.

The evaluation split is `test` where it exists, otherwise `train` (tables mark it). `--limit` takes a seeded,
first-label-stratified sample; few-shot training sets take N rows per label from `train`.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from gliclass.data.benchmarks import NLI_DATASETS, BenchmarkSplit, list_benchmarks, read_benchmark
from gliclass.data.formats import PathLike

EVAL_SPLITS = ("test", "train")


@dataclass
class EvalSet:
    """Texts, their true labels and the dataset's full label list (every label is a candidate)."""

    name: str
    split: str
    texts: list[str]
    labels: list[list[str]]
    label_names: list[str]
    multi_label: bool

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def from_benchmark(cls, bench: BenchmarkSplit) -> EvalSet:
        texts = [row.text for row in bench.rows]
        return cls(bench.name, bench.split, texts, [row.labels for row in bench.rows], bench.labels, bench.multi_label)

    def subset(self, indices: Sequence[int]) -> EvalSet:
        return EvalSet(
            self.name,
            self.split,
            [self.texts[i] for i in indices],
            [self.labels[i] for i in indices],
            self.label_names,
            self.multi_label,
        )


def classification_datasets(root: PathLike | None = None) -> dict[str, list[str]]:
    """{name: splits} of every text-classification dataset under `root` (NLI pair datasets excluded)."""
    return {
        name: splits for name, splits in list_benchmarks(root, include_nli=False).items() if name not in NLI_DATASETS
    }


def eval_split_name(splits: Sequence[str]) -> str:
    for split in EVAL_SPLITS:
        if split in splits:
            return split
    raise FileNotFoundError(f"no test or train split among {list(splits)}")


def load_eval_set(
    name: str,
    root: PathLike | None = None,
    limit: int | None = None,
    seed: int = 0,
    split: str | None = None,
    whole_up_to: int | None = None,
) -> EvalSet:
    """The evaluation split of `name` (or `split`), stratified down to `limit` rows; a split of at most
    `whole_up_to` rows is taken whole."""
    split = split or eval_split_name(classification_datasets(root)[name])
    full = EvalSet.from_benchmark(read_benchmark(name, split, root))
    if whole_up_to is not None and len(full) <= whole_up_to:
        limit = None
    return full.subset(stratified_indices(full.labels, limit, seed))


def stratified_indices(labels: Sequence[Sequence[str]], limit: int | None, seed: int = 0) -> list[int]:
    """`limit` row indices keeping each first-label group's share (largest remainder), seeded; sorted.

    With no limit, or a limit at least the row count, every index.
    """
    if limit is None or limit >= len(labels):
        return list(range(len(labels)))
    rng = random.Random(seed)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row_labels in enumerate(labels):
        groups[row_labels[0] if row_labels else ""].append(i)
    keys = sorted(groups)
    exact = {k: limit * len(groups[k]) / len(labels) for k in keys}
    quota = {k: int(exact[k]) for k in keys}
    # the rows left over go to the largest remainders (ties by name, so the sample is deterministic)
    for k in sorted(keys, key=lambda k: (quota[k] - exact[k], k))[: limit - sum(quota.values())]:
        quota[k] += 1
    chosen: list[int] = []
    for k in keys:
        members = groups[k][:]
        rng.shuffle(members)
        chosen.extend(members[: quota[k]])
    return sorted(chosen)


def few_shot_indices(
    labels: Sequence[Sequence[str]], label_names: Sequence[str], per_label: int, seed: int
) -> list[int]:
    """Up to `per_label` rows for each label (a row counts for every label it carries), seeded, no row twice."""
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, row_labels in enumerate(labels):
        for label in row_labels:
            by_label[label].append(i)
    chosen: list[int] = []
    taken: set[int] = set()
    for label in label_names:
        members = by_label[label][:]
        rng.shuffle(members)
        picked = [i for i in members if i not in taken][:per_label]
        taken.update(picked)
        chosen.extend(picked)
    return chosen
