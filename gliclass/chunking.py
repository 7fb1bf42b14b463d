"""Splitting one text and its labels into model rows that fit the length budget (label groups, text chunks)."""

from __future__ import annotations

import math

from gliclass.processing import LabelBudgetError


def partition_labels(
    labels: list[str],
    text_cost: list[int],
    dec_cost: list[int],
    text_cap: float,
    dec_cap: float,
    max_size: int | None,
) -> list[tuple[int, int]]:
    """Contiguous label groups [(start, end)] that respect both token caps, as few and as even as possible."""
    for i, label in enumerate(labels):
        if text_cost[i] > text_cap or dec_cost[i] > dec_cap:
            raise LabelBudgetError(
                f"label {label!r} alone needs {max(text_cost[i], dec_cost[i])} tokens, more than the "
                f"{int(min(text_cap, dec_cap))} a label group may use; shorten it (or lower min_chunk_tokens)"
            )
    n, size_cap = len(labels), max_size or len(labels)
    lower = max(
        math.ceil(sum(text_cost) / text_cap) if text_cap > 0 else 1,
        math.ceil(sum(dec_cost) / dec_cap) if dec_cap < math.inf else 1,
        math.ceil(n / size_cap),
        1,
    )
    for k in range(lower, n + 1):
        groups, start = [], 0
        for g in range(k):
            target = math.ceil((n - start) / (k - g))  # even label counts keep groups alike
            end, used_text, used_dec = start, 0, 0
            while (
                end < n
                and end - start < min(target, size_cap)
                and used_text + text_cost[end] <= text_cap
                and used_dec + dec_cost[end] <= dec_cap
            ):
                used_text, used_dec, end = used_text + text_cost[end], used_dec + dec_cost[end], end + 1
            groups.append((start, end))
            start = end
            if start == n:
                break
        if start == n:
            return [(a, b) for a, b in groups if b > a]
    raise AssertionError("unreachable: one label per group always fits")


def text_chunks(text: str, offsets: list[tuple[int, int]], room: int, overlap: int) -> list[str]:
    """Overlapping windows of at most `room` tokens, cut at the tokenizer's character offsets.

    A window ends (and the next one starts) at a word boundary when one lies in the window's second half.
    """
    n = len(offsets)
    if not offsets or n <= room:
        return [text]

    def glued(i: int) -> bool:  # token i continues the word of token i - 1 (no character gap)
        return offsets[i][0] == offsets[i - 1][1]

    chunks, start = [], 0
    while True:
        end = min(start + room, n)
        cut = end
        while end < n and cut > start + room // 2 and glued(cut):
            cut -= 1
        if end < n and not glued(cut):
            end = cut
        chunks.append(text[offsets[start][0] : offsets[end - 1][1]])
        if end == n:
            return chunks
        following = max(end - min(overlap, room // 2), start + 1)
        while following > start + 1 and glued(following):
            following -= 1
        start = following
