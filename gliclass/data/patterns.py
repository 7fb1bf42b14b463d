"""Pattern-focused stream (GLiClass paper, section 2.2): varied text lengths, label counts and label densities.

From a pool of labelled examples, build the same number of examples in each word-count bucket (lo, hi] of
`LENGTH_BUCKETS`. A bucket is filled with a pool text of that length when one exists; otherwise texts are
concatenated (joined by a space) until the length lands in the bucket, and the example's positives are the union
of the pieces' positives (highest score wins), its negatives the pieces' other candidate labels. Pieces of one
example come from one group of the pool (`meta["dataset"]`, or the whole pool when absent) so that a label
negative for one piece is not a silent positive of another piece's dataset, and share a random cap on distinct
positives (1 to the group's label count - 1), so long texts keep negatives (a long sst2 concatenation is all
positive or all negative reviews, not both).

Every base example is emitted `copies` times with different label sets: copy j draws a label count in
[min_labels, max_labels] and a positive ratio from the j-th of `copies` equal slices of [0, 1], so the copies of
one text differ in density. Prompts and few-shot examples of the pool rows are not carried over. Seeded and
deterministic; a bucket that no group of the pool can fill (e.g. no text of <= 4 words) is skipped with a warning.

With `fits` (`fits_whole(processor)`: training does this), every example's text fits the model's length budget whole
beside its labels, so no positive loses its evidence to the processor's cut. A copy whose text is over the budget
keeps only its longest run of leading pieces that fits, and draws its label set again from those pieces alone (the
same density slice; repeated while the new labels leave too little room); its `meta["bucket"]` is then the bucket of
the shorter text. A copy whose first piece alone is over the budget is dropped. Buckets past the budget so end up
empty, and their examples land in the longest buckets that fit.
"""

from __future__ import annotations

import bisect
import logging
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gliclass.data.formats import Example

if TYPE_CHECKING:
    from gliclass.processing import GLiClassProcessor

log = logging.getLogger(__name__)

LENGTH_BUCKETS = (0, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


def word_count(text: str) -> int:
    return len(text.split())


def bucket_of(count: int, edges: Sequence[int] = LENGTH_BUCKETS) -> tuple[int, int] | None:
    """The bucket (lo, hi] holding `count` words, or None outside the edges."""
    i = bisect.bisect_left(edges, count)
    if i == 0 or i == len(edges):
        return None
    return edges[i - 1], edges[i]


@dataclass
class _Group:
    """Pool examples of one label space, sorted by word count for range look-ups."""

    name: str
    examples: list[Example]
    counts: list[int]
    num_labels: int  # size of the group's label space (union of candidate labels)

    @classmethod
    def build(cls, name: str, examples: list[Example]) -> _Group:
        pairs = sorted(((word_count(e.text), i) for i, e in enumerate(examples)), key=lambda p: p[0])
        space = {label for e in examples for label in e.all_labels}
        return cls(name, [examples[i] for _, i in pairs], [c for c, _ in pairs], len(space))

    def pick(self, rng: random.Random, lo: int, hi: int) -> int | None:
        """Index of a random member with lo < words <= hi."""
        a, b = bisect.bisect_right(self.counts, lo), bisect.bisect_right(self.counts, hi)
        return rng.randrange(a, b) if b > a else None


def _compose(rng: random.Random, group: _Group, lo: int, hi: int) -> list[Example] | None:
    """Pieces whose joined word count falls in (lo, hi]: one natural text if possible, else a concatenation."""
    direct = group.pick(rng, lo, hi)
    if direct is not None:
        return [group.examples[direct]]
    target = rng.randint(lo + 1, hi)
    # cap the distinct positives so long concatenations keep negatives (else every label ends up positive)
    cap = rng.randint(1, max(1, group.num_labels - 1))
    theme: set[str] = set()
    pieces: list[Example] = []
    total = 0
    while total < target:
        for _ in range(20):  # rejection sampling: pieces whose positives keep the theme within the cap
            index = group.pick(rng, 0, hi - total)
            if index is None:
                break
            positives = theme | set(group.examples[index].positives)
            if len(positives) <= cap:
                break
            index = None
        if index is None:
            break
        theme = positives
        pieces.append(group.examples[index])
        total += group.counts[index]
    return pieces if total > lo else None


def _union(pieces: Sequence[Example]) -> tuple[dict[str, float], list[str]]:
    """Positives (max score over pieces) and the remaining candidate labels as negatives, first-seen order."""
    positives: dict[str, float] = {}
    seen: dict[str, None] = {}
    for piece in pieces:
        for label in piece.all_labels:
            seen[label] = None
            score = piece.true_labels.get(label, 0.0)
            if score > 0:
                positives[label] = max(score, positives.get(label, 0.0))
    return positives, [label for label in seen if label not in positives]


def fits_whole(processor: GLiClassProcessor) -> Callable[[str, Sequence[str]], bool]:
    """`fits(text, labels)`: whether `processor` encodes `text` whole beside `labels` (no prompt or examples, as
    pattern rows have none): the sequence is within its budget, so the processor cuts nothing."""

    def fits(text: str, labels: Sequence[str]) -> bool:
        string = processor.segments(text, labels).string
        ids = processor.tokenizer(string, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        return len(ids) <= processor.budget

    return fits


def _fitting_prefix(pieces: Sequence[Example], labels: Sequence[str], fits: Callable) -> int:
    """The most leading pieces whose joined text fits beside `labels` (0 if the first alone does not), given that all
    of them do not."""
    low, high = 0, len(pieces) - 1  # every count <= low fits (0 trivially), every count > high does not
    while low < high:
        mid = (low + high + 1) // 2
        if fits(" ".join(p.text for p in pieces[:mid]), labels):
            low = mid
        else:
            high = mid - 1
    return low


def _label_set(
    rng: random.Random, positives: dict[str, float], negatives: list[str], low: int, high: int, lo_d: float, hi_d: float
) -> tuple[list[str], dict[str, float]]:
    """Sample a label count and a positive ratio in [lo_d, hi_d), then the labels, in shuffled order."""
    available = len(positives) + len(negatives)
    count = rng.randint(min(low, available), min(high, available))
    density = rng.uniform(lo_d, hi_d)
    num_pos = min(max(round(density * count), count - len(negatives), 0), len(positives))
    num_neg = min(count - num_pos, len(negatives))
    chosen_pos = rng.sample(list(positives), num_pos)
    labels = chosen_pos + rng.sample(negatives, num_neg)
    rng.shuffle(labels)
    return labels, {label: positives[label] for label in chosen_pos}


def pattern_stream(
    pool: Sequence[Example],
    examples_per_bucket: int,
    seed: int = 0,
    buckets: Sequence[int] = LENGTH_BUCKETS,
    min_labels: int = 1,
    max_labels: int = 20,
    copies: int = 2,
    fits: Callable[[str, Sequence[str]], bool] | None = None,
) -> list[Example]:
    """`examples_per_bucket` x `copies` examples in every fillable bucket (see the module docstring); `fits` cuts or
    drops the copies over the model's length budget."""
    if not pool:
        raise ValueError("the pattern stream needs a non-empty pool of examples")
    if not 1 <= min_labels <= max_labels or copies < 1 or examples_per_bucket < 0:
        raise ValueError(
            f"need 1 <= min_labels <= max_labels and copies >= 1, got {min_labels}, {max_labels}, {copies}"
        )
    if list(buckets) != sorted(set(buckets)) or len(buckets) < 2:
        raise ValueError(f"bucket edges must be increasing, got {list(buckets)}")
    members: dict[str, list[Example]] = {}
    for example in pool:
        members.setdefault(str(example.meta.get("dataset", "pool")), []).append(example)
    groups = [_Group.build(name, items) for name, items in members.items()]
    rng = random.Random(f"pattern:{seed}")
    out: list[Example] = []
    cut = dropped = 0
    for lo, hi in zip(buckets[:-1], buckets[1:], strict=True):
        eligible = [g for g in groups if g.counts[0] <= hi]
        weights = [len(g.counts) for g in eligible]
        made = 0
        for slot in range(examples_per_bucket):
            pieces = None
            for _ in range(10 if eligible else 0):  # a retry covers the rare group whose lengths skip the bucket
                group = rng.choices(eligible, weights)[0]
                pieces = _compose(rng, group, lo, hi)
                if pieces is not None:
                    break
            if pieces is None:
                continue
            made += 1
            text = " ".join(p.text for p in pieces)
            positives, negatives = _union(pieces)
            densities: set[float] = set()
            for copy in range(copies):
                for _ in range(5):  # rounding can repeat an earlier copy's density; a few redraws avoid it
                    labels, true = _label_set(
                        rng, positives, negatives, min_labels, max_labels, copy / copies, (copy + 1) / copies
                    )
                    if len(true) / len(labels) not in densities:
                        break
                densities.add(len(true) / len(labels))
                kept, kept_text = pieces, text
                while fits is not None and not fits(kept_text, labels):
                    # the leading pieces that fit, with a label set drawn again from them alone (same density slice)
                    kept = kept[: _fitting_prefix(kept, labels, fits)]
                    if not kept:
                        break
                    kept_text = " ".join(p.text for p in kept)
                    labels, true = _label_set(
                        rng, *_union(kept), min_labels, max_labels, copy / copies, (copy + 1) / copies
                    )
                if not kept:
                    dropped += 1
                    continue
                cut += len(kept) < len(pieces)
                meta = {
                    "dataset": group.name,
                    "bucket": bucket_of(word_count(kept_text), buckets),
                    "density": len(true) / len(labels),
                    "copy": copy,
                    "pieces": len(kept),
                }
                source = f"pattern stream (seed {seed}) bucket ({lo},{hi}] #{slot} copy {copy} <- {pieces[0].source}"
                out.append(Example(kept_text, labels, true, source=source, meta=meta))
        if made < examples_per_bucket:
            warnings.warn(
                f"pattern stream: bucket ({lo},{hi}] words got {made}/{examples_per_bucket} examples: "
                "the pool has no texts short enough for it",
                stacklevel=2,
            )
    if cut or dropped:
        log.info(
            "pattern stream: %d examples over the length budget kept only their leading pieces that fit (and their "
            "labels); %d dropped (a first piece alone over the budget)",
            cut,
            dropped,
        )
    return out
