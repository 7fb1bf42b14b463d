"""The speed benchmarks' inputs: real label names and real texts.

Labels: the first L of `LABEL_SOURCE`'s intent names; batch-1 texts: a `TEXT_SOURCE` review cut to exactly T
wordpieces (`text_of_length`); batched throughput: mixed-length real texts from several test sets (`mixed_texts`,
`MIXED_SOURCES`, with `MIXED_LABELS`); agreement: those of them whose sequence with `AGREEMENT_LABELS` fits the
length budget (`fitting_texts`). Shared by `gliclass.evaluation.speed`, `gliclass.evaluation.overhead` and
`gliclass.onnx.bench`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gliclass.data.benchmarks import read_benchmark
from gliclass.processing import GLiClassProcessor

LABEL_SOURCE = "clinc150"  # 150 real intent names, 1-4 words each
TEXT_SOURCE = "imdb"  # long reviews, cut to exact token counts
MIXED_SOURCES = ("sst2", "ag_news", "imdb", "banking77", "emotion", "spam")
MIXED_LABELS = ["positive", "negative", "neutral", "world", "sports", "business", "science", "spam", "question", "joy"]
# agreement: one wordpiece each, at batch 1, so that the official pipeline's mean pooling over padding (labels padded
# to the longest, texts to the batch's longest; its known bug) is a no-op and its fp32 scores are the exact reference
AGREEMENT_LABELS = ["positive", "negative", "neutral", "world", "sports", "business", "science", "fraud", "question"]


def text_of_length(tokenizer: Any, source: Sequence[str], tokens: int) -> str:
    """Real text cut to exactly `tokens` wordpieces (without [CLS]/[SEP]), checked by re-tokenising."""
    ids: list[int] = []
    for text in source:
        ids += tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) >= tokens + 16:
            break
    for extra in range(16):  # decoding can merge pieces; take a few more ids until the count is exact
        text = tokenizer.decode(ids[: tokens + extra])
        count = len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
        if count >= tokens:
            return text
    raise ValueError(f"could not build a {tokens}-token text")


def mixed_texts(root: Path, count: int, seed: int) -> list[str]:
    """`count` real texts drawn evenly from several test sets (short tweets to long reviews), seeded."""
    rng = random.Random(seed)
    per_source = -(-count // len(MIXED_SOURCES))
    texts = []
    for name in MIXED_SOURCES:
        rows = read_benchmark(name, "test", root).rows
        texts += [row.text for row in rng.sample(rows, min(per_source, len(rows)))]
    rng.shuffle(texts)
    return texts[:count]


def fitting_texts(root: Path, count: int, seed: int, processor: GLiClassProcessor, tokenizer: Any) -> list[str]:
    """Up to `count` mixed real texts (`mixed_texts`) whose sequence with `AGREEMENT_LABELS` fits the length budget:
    a longer one is chunked by ours and cut by the official pipeline, so their scores differ by design."""
    pool = mixed_texts(root, 3 * count, seed)
    fits = [
        text
        for text in pool
        if len(tokenizer(processor.segments(text, AGREEMENT_LABELS).string)["input_ids"]) <= processor.budget
    ]
    return fits[:count]
