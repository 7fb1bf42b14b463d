"""Planning: how the texts and labels of one pipeline call become model rows that each fit the length budget.

A text whose labels do not fit beside it is split into label groups (`gliclass.chunking.partition_labels`) and, if
it is long, into overlapping text windows (`gliclass.chunking.text_chunks`); every row's token ids are measured with
the processor's own tokenizer call, so a planned sequence is encoded exactly as measured. `RowPlanner` does this with
no model; `ZeroShotPipeline` runs the rows it plans.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gliclass.chunking import partition_labels, text_chunks
from gliclass.config import LABEL_TOKEN, SPECIAL_TOKENS
from gliclass.processing import GLiClassProcessor, LabelBudgetError, Segments

LONG_TEXT = ("chunk", "truncate")
CALL_CACHE_SIZE = 1024  # label sets (and the token ids of their label blocks) remembered across calls


@dataclass
class Request:
    """One text with its flat labels, prompt, examples and decision settings."""

    text: str
    labels: list[str]
    structure: Any  # the labels as given (list or nested dict), for return_hierarchy
    prompt: str | None
    examples: list[Mapping[str, Any]] | None
    threshold: float


@dataclass
class Unit:
    """One model row: a chunk of one text against one label group."""

    request: int
    chunk: int
    group: int
    text: str
    label_start: int  # index of the group's first label in the request's flat label list
    labels: list[str]
    ids: list[int]  # token ids of the full input sequence, measured while planning (encoded once, not twice)

    @property
    def length(self) -> int:  # for length-sorted batching
        return len(self.ids)


class RowPlanner:
    """Splits requests into model rows (text chunk x label group) that each fit `processor.budget`.

    The settings are `ZeroShotPipeline`'s of the same names (the pipeline's attributes read and set these). The
    tokenizer is called directly where it is a stock fast one (`FastIds`), and the ids after a text are reused
    across calls (`SequenceIds`); `reset` forgets both (after the processor's tokenizer is changed).
    """

    def __init__(
        self,
        processor: GLiClassProcessor,
        chunk_overlap: int = 32,
        min_chunk_tokens: int = 64,
        max_labels_per_group: int | None = None,
        long_text: str = "chunk",
    ) -> None:
        self.processor = processor
        self.config = processor.config
        self.chunk_overlap = chunk_overlap
        self.min_chunk_tokens = min_chunk_tokens
        self.max_labels_per_group = max_labels_per_group
        self.long_text = long_text
        self._arch = self.config.architecture_type
        self.reset()

    def reset(self) -> None:
        """Forget the tokenizer's direct path and the label-block token ids remembered across calls."""
        self._fast_for, self._fast_ids = self.processor.tokenizer, FastIds.of(self.processor.tokenizer)
        self._sequences = SequenceIds(self.processor.tokenizer, self.tokens)

    def rows(self, requests: list[Request]) -> list[list[dict[str, Any]]]:
        """The model rows each request becomes: `{"chunk", "group", "text", "labels", "tokens"}` (no model call).

        One row when text and labels fit the budget; otherwise one row per (text chunk, label group).
        """
        rows: list[list[dict[str, Any]]] = [[] for _ in requests]
        for unit in self.plan(requests) if requests else []:
            rows[unit.request].append(
                {
                    "chunk": unit.chunk,
                    "group": unit.group,
                    "text": unit.text,
                    "labels": unit.labels,
                    "tokens": unit.length,
                }
            )
        return rows

    def tokens(self, strings: list[str], special: bool = True, offsets: bool = False) -> dict[str, list]:
        # identical to the processor's own call, so a planned sequence is encoded exactly as measured; ids alone
        # come straight from the Rust tokenizer where the wrapper's call is the stock one (`FastIds`)
        tokenizer = self.processor.tokenizer
        if tokenizer is not self._fast_for:  # a swapped tokenizer: its own direct path, if it has one
            self._fast_for, self._fast_ids = tokenizer, FastIds.of(tokenizer)
        if not offsets and self._fast_ids is not None:
            return {"input_ids": self._fast_ids(strings, special)}
        return tokenizer(
            strings, add_special_tokens=special, truncation=False, return_offsets_mapping=offsets, verbose=False
        )

    def decoder_length(self, labels: list[str], prompt: str | None) -> int:
        block = self.processor.label_block(labels, prompt)
        return len(self.tokens([block])["input_ids"][0])

    def plan(self, requests: list[Request]) -> list[Unit]:
        """Split every request into model rows that each fit the budget, measuring real token counts."""
        segments = [self.processor.segments(r.text, r.labels, r.prompt, r.examples) for r in requests]
        encoded = self._sequences(segments)
        budget = self.processor.budget
        units = []
        for index, (request, ids) in enumerate(zip(requests, encoded, strict=True)):
            fits = len(ids) <= budget and (
                self.max_labels_per_group is None or len(request.labels) <= self.max_labels_per_group
            )
            if fits and self._arch == "encoder-decoder":
                fits = self.decoder_length(request.labels, request.prompt) <= budget
            if fits:
                units.append(Unit(index, 0, 0, request.text, 0, request.labels, ids))
            else:
                units.extend(self.split(index, request))
        return units

    def split(self, index: int, request: Request) -> list[Unit]:
        budget, proc, arch = self.processor.budget, self.processor, self.config.architecture_type
        encoded = self.tokens([request.text], special=False, offsets=True)
        offsets = [tuple(span) for span in encoded["offset_mapping"][0]]
        num_text = len(offsets)
        overhead = len(self.tokens([proc.segments("", [], request.prompt, request.examples).string])["input_ids"][0])
        label_lengths = [
            len(ids) for ids in self.tokens([LABEL_TOKEN + label for label in request.labels], False)["input_ids"]
        ]
        zeros = [0] * len(request.labels)
        # what a label costs beside the text (uni/fused) and in the decoder prompt (encoder-decoder)
        text_cost = {"uni-encoder": label_lengths, "bi-encoder-fused": [1] * len(request.labels)}.get(arch, zeros)
        if proc.config.segment_attention == "gated" and arch in ("uni-encoder", "bi-encoder-fused"):
            # each label is its own segment: the end token before it, its marker and (uni) its words
            alone = [proc.segments("", [label], request.prompt, request.examples).string for label in request.labels]
            lengths = self.tokens(alone)["input_ids"]
            text_cost = [len(ids) - overhead for ids in lengths]
        dec_cost = label_lengths if arch == "encoder-decoder" else zeros
        dec_cap = budget - self.decoder_length([], request.prompt) if arch == "encoder-decoder" else math.inf
        reserve = self.text_window(num_text, budget - overhead, text_cost, len(request.labels))
        text_cap = budget - overhead - reserve
        while True:
            groups = partition_labels(request.labels, text_cost, dec_cost, text_cap, dec_cap, self.max_labels_per_group)
            if arch == "encoder-decoder":
                over = max(self.decoder_length(request.labels[a:b], request.prompt) - budget for a, b in groups)
                if over > 0:  # a tokenizer merged differently than counted: tighten and regroup
                    dec_cap -= over
                    continue
            break
        room = budget - overhead - max(sum(text_cost[a:b]) for a, b in groups)
        while True:
            if room < 1 and num_text > 0:
                raise LabelBudgetError(
                    f"no room left for text beside the labels (budget {budget} tokens); use shorter labels or a "
                    "smaller max_labels_per_group"
                )
            chunks = text_chunks(request.text, offsets, room, self.chunk_overlap)
            if self.long_text == "truncate":
                chunks = chunks[:1]  # the head of the text only
            rows = [(c, g, chunk, a, b) for c, chunk in enumerate(chunks) for g, (a, b) in enumerate(groups)]
            strings = [
                proc.segments(chunk, request.labels[a:b], request.prompt, request.examples).string
                for _, _, chunk, a, b in rows
            ]
            encoded = self.tokens(strings)["input_ids"]
            over = max(len(ids) for ids in encoded) - budget
            if over <= 0 or num_text == 0:
                break
            room -= over  # cutting at token boundaries changed a token count: shrink the window and retry
        return [
            Unit(index, c, g, chunk, a, request.labels[a:b], ids)
            for (c, g, chunk, a, b), ids in zip(rows, encoded, strict=True)
        ]

    def text_window(self, num_text: int, space: int, text_cost: list[int], num_labels: int) -> int:
        """Text tokens per row when labels compete for `space`: the window needing the fewest rows, ties larger."""
        widest = space - max(text_cost, default=0)  # the window beside the longest label alone
        together = space - sum(text_cost)  # the window that keeps every label in one group
        low = min(num_text, self.min_chunk_tokens, max(widest, 1))
        if self.long_text == "chunk":  # chunking may shrink the window below min_chunk_tokens to keep one group
            low = min(low, max(together, 1))
        high = max(low, min(num_text, widest))
        total, size_cap = sum(text_cost), self.max_labels_per_group or num_labels

        def rows(window: int) -> int:
            step = window - min(self.chunk_overlap, window // 2)
            chunks = (
                1
                if num_text <= window or self.long_text == "truncate"
                else 1 + math.ceil((num_text - window) / max(step, 1))
            )
            groups = max(math.ceil(total / max(space - window, 1)), math.ceil(num_labels / size_cap), 1)
            return chunks * groups

        return min(range(low, high + 1), key=lambda window: (rows(window), -window))


# --------------------------------------------------------------------- tokenizer calls
_SEEN = "seen once"


class SequenceIds:
    """Token ids of full input strings (special tokens added, untruncated), as the tokenizer gives them, with the
    part after the text (label block, prompt, examples) tokenised once per distinct suffix instead of every call.

    A text-first string `text + suffix` whose suffix starts with a GLiClass marker is cut by the tokenizer at that
    added token, so its ids are [specials before] + ids(text) + ids(suffix) + [specials after]. The split is learnt
    on the second call that sees a suffix (the first only tokenises the whole string as before, so label sets used
    once cost nothing extra): the whole string's ids must equal the composition exactly, else the suffix is
    marked and always tokenised whole. Only markers the tokenizer splits at without touching their neighbours
    (not normalized, no lstrip/single_word) qualify.
    """

    def __init__(self, tokenizer: Any, tokens: Any) -> None:
        self.tokens = tokens  # the planner's tokenizer call: the same one for whole strings and texts alone
        self.cache: OrderedDict[str, Any] = OrderedDict()  # suffix -> _SEEN | None | (split, suffix ids)
        self.specials: list[int] | None = None  # ids of the empty string: the tokenizer's own special tokens
        added = getattr(tokenizer, "added_tokens_decoder", {})
        self.markers = tuple(
            token.content
            for token in added.values()
            if token.content in SPECIAL_TOKENS
            and not (getattr(token, "normalized", True) or token.lstrip or token.single_word)
        )

    def __call__(self, segments: list[Segments]) -> list[list[int]]:
        ids: list[list[int] | None] = [None] * len(segments)
        known = [i for i, seg in enumerate(segments) if not seg.prefix and self._learnt(seg.suffix)]
        if known:
            texts = self.tokens([segments[i].text for i in known], special=False)["input_ids"]
            for i, text_ids in zip(known, texts, strict=True):
                split, suffix_ids = self.cache[segments[i].suffix]
                ids[i] = self.specials[:split] + text_ids + suffix_ids + self.specials[split:]
        rest = [i for i in range(len(segments)) if ids[i] is None]
        if rest:
            for i, row in zip(rest, self.tokens([segments[i].string for i in rest])["input_ids"], strict=True):
                ids[i] = row
                self._learn(segments[i], row)
        return ids

    def _learnt(self, suffix: str) -> bool:
        entry = self.cache.get(suffix)
        if isinstance(entry, tuple):
            self.cache.move_to_end(suffix)
            return True
        return False

    def _learn(self, seg: Segments, row: list[int]) -> None:
        if seg.prefix or not seg.suffix.startswith(self.markers):
            return
        entry = self.cache.get(seg.suffix)
        if entry is None and seg.suffix in self.cache:  # marked: not composable
            return
        if entry is None:  # first sight
            self._store(seg.suffix, _SEEN)
            return
        if self.specials is None:
            self.specials = self.tokens([""])["input_ids"][0]
        text_ids = self.tokens([seg.text], special=False)["input_ids"][0]
        self._store(seg.suffix, self._split(row, text_ids) if text_ids else _SEEN)

    def _split(self, row: list[int], text_ids: list[int]) -> tuple[int, list[int]] | None:
        """(k, suffix ids) with row == specials[:k] + text_ids + suffix ids + specials[k:] for exactly one k, or
        None (no such split, or an ambiguous one)."""
        specials, n = self.specials, len(text_ids)
        splits = []
        for k in range(len(specials) + 1):
            end = len(row) - (len(specials) - k)
            if end >= k + n and row[:k] == specials[:k] and row[k : k + n] == text_ids and row[end:] == specials[k:]:
                splits.append((k, row[k + n : end]))
        return splits[0] if len(splits) == 1 else None

    def _store(self, suffix: str, entry: Any) -> None:
        self.cache[suffix] = entry
        self.cache.move_to_end(suffix)
        if len(self.cache) > CALL_CACHE_SIZE:
            self.cache.popitem(last=False)


class FastIds:
    """`tokenizer(strings, add_special_tokens=special, truncation=False)["input_ids"]` without the transformers
    wrapper (its argument handling and BatchEncoding cost ~50-200 us a call): the backend Rust tokenizer set as
    that call sets it (no truncation, no padding, the wrapper's `split_special_tokens`), then `encode_batch`.

    Only for a stock `TokenizersBackend` whose `__call__` and `_encode_plus` are not overridden and that has no
    input/target modes; anything else (a slow tokenizer, a subclass with its own call, a wrapper object) keeps the
    tokenizer's own call."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.backend = tokenizer, tokenizer._tokenizer

    @classmethod
    def of(cls, tokenizer: Any) -> FastIds | None:
        try:
            from tokenizers import Tokenizer
            from transformers.tokenization_utils_base import PreTrainedTokenizerBase
            from transformers.tokenization_utils_tokenizers import TokenizersBackend
        except ImportError:
            return None
        kind = type(tokenizer)
        stock = (
            isinstance(tokenizer, TokenizersBackend)
            and isinstance(getattr(tokenizer, "_tokenizer", None), Tokenizer)
            and kind.__call__ is PreTrainedTokenizerBase.__call__
            and kind._encode_plus is TokenizersBackend._encode_plus
            and not hasattr(tokenizer, "_switch_to_input_mode")  # a tokenizer with modes goes through its own call
        )
        return cls(tokenizer) if stock else None

    def __call__(self, strings: list[str], special: bool = True) -> list[list[int]]:
        backend = self.backend
        if self.tokenizer._in_target_context_manager:  # the wrapper would switch modes: let it
            return self.tokenizer(strings, add_special_tokens=special, truncation=False, verbose=False)["input_ids"]
        if backend.truncation is not None:  # e.g. left by a truncating call on the same tokenizer (label ids)
            backend.no_truncation()
        if backend.padding is not None:
            backend.no_padding()
        split = self.tokenizer.split_special_tokens
        if backend.encode_special_tokens != split:
            backend.encode_special_tokens = split
        return [encoding.ids for encoding in backend.encode_batch(strings, add_special_tokens=special)]
