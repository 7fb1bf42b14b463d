"""`GLiClassProcessor`: input strings and tensors for every architecture, in the official format.

Uni-encoder / fused sequences are `text + <<LABEL>>l1<<LABEL>>l2...<<SEP>>[prompt] + examples` (or the label block
first with `prompt_first`). Few-shot examples are `<<EXAMPLE>>{text} \\nLabels:\\n {l1, l2}` ... `<<SEP>>`.
With `segment_attention="gated"` every label (and example) is its own segment instead,
`[CLS] text [SEP] <<LABEL>> l1 [SEP] <<LABEL>> l2 [SEP] ...` (fused: `<<LABEL>> [SEP]` per label), each piece
tokenised as the tokenizer reads it alone (checked when the processor is built); see `gliclass.modeling.segments`.

Unlike the official pipeline, a sequence over the length budget loses text, never labels: the text is cut at a
token boundary found from the tokenizer's character offsets, and the whole string is tokenised again, so inputs
that fit are token-for-token identical to the official ones. Labels (with prompt and examples) that leave the text
fewer than `min_text_tokens` tokens (or fewer than all of a shorter text's tokens) raise `LabelBudgetError`.
A text, label, prompt or example that contains a reserved token (`<<LABEL>>`, `<<SEP>>`, `<<EXAMPLE>>`) raises
`ReservedTokenError`, naming the token.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from gliclass.config import EXAMPLE_TOKEN, LABEL_TOKEN, SEP_TOKEN, SPECIAL_TOKENS, GLiClassConfig

LABEL_TOKENIZER_DIR = "label_tokenizer"
PROCESSOR_FILE = "gliclass_processor.json"


class LabelBudgetError(ValueError):
    """The labels (with prompt and examples) leave too little of the length budget for the text (see
    `GLiClassProcessor.min_text_tokens`)."""


class ReservedTokenError(ValueError):
    """A text, label, prompt or few-shot example contains `<<LABEL>>`, `<<SEP>>` or `<<EXAMPLE>>`: the tokenizer
    would read it as the marker itself and shift the label slots and segment boundaries the model relies on."""


def check_reserved(value: str, what: str) -> str:
    """`value` unchanged, or `ReservedTokenError` naming the first reserved token found in it."""
    for token in SPECIAL_TOKENS:
        if token in value:
            raise ReservedTokenError(
                f"{what} contains the reserved token {token!r} (GLiClass marks labels, the separator and examples "
                f"with {list(SPECIAL_TOKENS)}); remove or rewrite it"
            )
    return value


# Backbones whose position ids start after the padding id (`padding_idx + 1`, fairseq style): the first
# `pad_token_id + 1` rows of the position table are never used, so RoBERTa/XLM-R's 514 positions hold 512 tokens.
PADDING_OFFSET_POSITIONS = (
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "roberta-prelayernorm",
    "camembert",
    "data2vec-text",
    "longformer",
    "mpnet",
    "ibert",
    "luke",
    "xmod",
)


def backbone_position_limit(config: Any) -> int | None:
    """Longest sequence the backbone can embed, or None when it has no absolute positions (T5, DeBERTa-v3)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if config.model_type in ("t5", "mt5", "umt5"):
        return None
    if config.model_type == "deberta-v2" and not getattr(config, "position_biased_input", True):
        return None
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and config.model_type in PADDING_OFFSET_POSITIONS:
        limit -= (getattr(config, "pad_token_id", None) or 0) + 1
    return limit


def check_text(text: Any, what: str = "text") -> str:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, got {type(text).__name__}")
    if text == "":
        raise ValueError(f"{what} is empty")
    return check_reserved(text, what)


def check_labels(labels: Any) -> list[str]:
    """A non-empty list of distinct, non-empty strings with no GLiClass special tokens in them."""
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise TypeError(f"labels must be a list of str, got {type(labels).__name__}")
    if len(labels) == 0:
        raise ValueError("the label list is empty")
    for label in labels:
        if not isinstance(label, str):
            raise TypeError(f"every label must be a str, got {type(label).__name__}: {label!r}")
        if not label.strip():
            raise ValueError("a label is empty or whitespace")
        check_reserved(label, f"label {label!r}")
    seen: set[str] = set()
    duplicates = sorted({label for label in labels if label in seen or seen.add(label)})
    if duplicates:
        raise ValueError(f"duplicate labels: {duplicates}")
    return list(labels)


def format_examples(examples: Sequence[Mapping[str, Any]] | None) -> str:
    """Few-shot examples in the official training format, closed by one <<SEP>>."""
    if not examples:
        return ""
    return "".join(example_strings(examples)) + SEP_TOKEN


def example_strings(examples: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each few-shot example as `<<EXAMPLE>>{text} \\nLabels:\\n {l1, l2}` (checked for reserved tokens)."""
    parts = []
    for i, example in enumerate(examples):
        if not isinstance(example, Mapping) or "text" not in example:
            raise ValueError(f"a few-shot example must be a dict with 'text' and 'labels', got {example!r}")
        labels = example.get("labels", example.get("true_labels", []))
        labels = ", ".join(labels) if isinstance(labels, list) else str(labels)
        check_reserved(str(example["text"]), f"few-shot example {i} text")
        check_reserved(labels, f"few-shot example {i} labels")
        parts.append(f"{EXAMPLE_TOKEN}{example['text']} \nLabels:\n {labels}")
    return parts


@dataclass
class Segments:
    """One input string as (before text, text, after text), so the text can be cut alone."""

    prefix: str
    text: str
    suffix: str

    @property
    def string(self) -> str:
        return self.prefix + self.text + self.suffix


class GLiClassProcessor:
    """Builds model inputs; `encode` one example, `collate` a batch with dynamic padding."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        config: GLiClassConfig,
        max_length: int = 1024,
        label_tokenizer: PreTrainedTokenizerBase | None = None,
        label_max_length: int = 64,
        min_text_tokens: int = 8,
        label_template: str | None = None,
    ) -> None:
        """`min_text_tokens`: when a sequence is over the budget and its text must be cut, the fewest text tokens it
        may keep (all of them for a shorter text); labels that leave less raise `LabelBudgetError`.

        `label_template` (label-encoder models only): the label tower reads each label inside this sentence, its one
        `{}` replaced by the label ("This text is about {}."). Saved with the processor, so a model trained with a
        template is scored with it. Official checkpoints have none; the official package ignores it (pass it
        formatted labels there)."""
        if isinstance(min_text_tokens, bool) or not isinstance(min_text_tokens, int) or min_text_tokens < 1:
            raise ValueError(f"min_text_tokens must be an int >= 1, got {min_text_tokens!r}")
        if label_template is not None:
            if not isinstance(label_template, str) or label_template.count("{}") != 1:
                raise ValueError(f"label_template must be a string with exactly one '{{}}', got {label_template!r}")
            if not config.uses_label_encoder:
                raise ValueError(
                    f"label_template applies to a label encoder's input; {config.architecture_type} reads its labels "
                    "inside the text sequence"
                )
        self.label_template = label_template
        self.tokenizer = tokenizer
        self.config = config
        self.max_length = max_length
        self.label_tokenizer = label_tokenizer
        self.label_max_length = label_max_length
        self.min_text_tokens = min_text_tokens
        if config.uses_label_encoder and label_tokenizer is None:
            raise ValueError(f"{config.architecture_type} needs a label_tokenizer for its label encoder")
        ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
        expected = [config.class_token_index, config.text_token_index, config.example_token_index]
        if ids != expected:
            raise ValueError(
                f"tokenizer ids of {list(SPECIAL_TOKENS)} are {ids} but the config expects {expected}; "
                "use the tokenizer saved with this checkpoint (or add the tokens with add_special_tokens)"
            )
        limit = backbone_position_limit(config.encoder_config)
        self.budget = min(max_length, limit) if limit is not None else max_length
        self.num_special = tokenizer.num_special_tokens_to_add(pair=False)
        # gated segment attention: the string that closes a segment, and what follows a segment's marker
        self._segment_end, self._segment_joiner = None, ""
        if config.segment_attention == "gated":
            self._segment_end, self._segment_joiner = self._segment_layout()

    def _segment_layout(self) -> tuple[str, str]:
        """(the tokenizer's closing special token, the joiner after a segment marker) such that
        `text + end + <<LABEL>> + joiner + label` tokenises to `[start] text [end] <<LABEL>> label [end]`, each piece
        exactly as the tokenizer reads it alone (checked on a probe); `ValueError` for a tokenizer that cannot."""
        tokenizer = self.tokenizer
        specials = tokenizer("", add_special_tokens=True)["input_ids"]
        if len(specials) != 2:
            raise ValueError(
                "segment_attention='gated' needs a tokenizer that wraps a sequence in one start and one end token "
                f"([CLS] ... [SEP]); {type(tokenizer).__name__} adds {tokenizer.convert_ids_to_tokens(specials)}"
            )
        end = tokenizer.convert_ids_to_tokens(specials[1])
        text, label = "good movie", "very bad food"

        def plain(string: str) -> list[int]:
            return tokenizer(string, add_special_tokens=False)["input_ids"]

        expected = [specials[0], *plain(text), specials[1], self.config.class_token_index, *plain(label), specials[1]]
        for joiner in ("", " "):
            if tokenizer(text + end + LABEL_TOKEN + joiner + label)["input_ids"] == expected:
                return end, joiner
        raise ValueError(
            f"segment_attention='gated': {type(tokenizer).__name__} does not tokenise a label after {end!r} and "
            f"{LABEL_TOKEN} as it tokenises the label alone, so the segments would not be the backbone's own input"
        )

    # ----------------------------------------------------------------- construction and saving
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> GLiClassProcessor:
        path = str(path)
        config = kwargs.pop("config", None) or GLiClassConfig.from_pretrained(path)
        saved = os.path.join(path, PROCESSOR_FILE)
        if os.path.exists(saved):
            with open(saved) as f:
                kwargs = {**json.load(f), **kwargs}
        tokenizer = AutoTokenizer.from_pretrained(path)
        label_tokenizer = None
        if config.uses_label_encoder:
            label_tokenizer = cls._load_label_tokenizer(path, config, tokenizer)
        return cls(tokenizer, config, label_tokenizer=label_tokenizer, **kwargs)

    @staticmethod
    def _load_label_tokenizer(path: str, config: GLiClassConfig, tokenizer: PreTrainedTokenizerBase):
        local = os.path.join(path, LABEL_TOKENIZER_DIR)
        if os.path.isdir(local):
            return AutoTokenizer.from_pretrained(local)
        # Same backbone family and base vocabulary: the text tokenizer gives the label encoder's ids (labels never
        # contain the added GLiClass tokens), so no download is needed.
        added = sum(token in tokenizer.get_vocab() for token in SPECIAL_TOKENS)
        label_config = config.label_model_config
        if label_config.model_type == config.encoder_config.model_type and label_config.vocab_size in (
            len(tokenizer),
            len(tokenizer) - added,
        ):
            return tokenizer
        if config.label_model_name:
            return AutoTokenizer.from_pretrained(config.label_model_name)
        raise OSError(f"no tokenizer for the label encoder: {local} does not exist and label_model_name is unset")

    def save_pretrained(self, path: str | os.PathLike) -> None:
        path = str(path)
        self.tokenizer.save_pretrained(path)
        if self.label_tokenizer is not None and self.label_tokenizer is not self.tokenizer:
            self.label_tokenizer.save_pretrained(os.path.join(path, LABEL_TOKENIZER_DIR))
        with open(os.path.join(path, PROCESSOR_FILE), "w") as f:
            # files saved before `min_text_tokens` existed load with its default
            settings = {
                "max_length": self.max_length,
                "label_max_length": self.label_max_length,
                "min_text_tokens": self.min_text_tokens,
            }
            if self.label_template is not None:  # absent: files stay as they were for models without one
                settings["label_template"] = self.label_template
            json.dump(settings, f, indent=2)

    # ----------------------------------------------------------------- strings
    def label_block(self, labels: Sequence[str], prompt: str | None = None) -> str:
        return "".join(f"{LABEL_TOKEN}{label}" for label in labels) + SEP_TOKEN + (prompt or "")

    def segments(
        self, text: str, labels: Sequence[str], prompt: str | None = None, examples: Sequence[Mapping] | None = None
    ) -> Segments:
        """The text-encoder input string, split around the text."""
        if prompt:
            check_reserved(prompt, "the prompt")
        arch = self.config.architecture_type
        if self._segment_end is not None:  # gated: one segment per label and per example, each [CLS] ... [SEP]
            end, joiner = self._segment_end, self._segment_joiner
            if arch == "bi-encoder-fused":  # the label-tower vector takes the place of the label's words
                starts = [LABEL_TOKEN] * len(labels)
            else:
                starts = [f"{LABEL_TOKEN}{joiner}{label}" for label in labels]
            starts += [EXAMPLE_TOKEN + joiner + shot[len(EXAMPLE_TOKEN) :] for shot in example_strings(examples or [])]
            return Segments(f"{prompt} " if prompt else "", text, "".join(end + part for part in starts))
        shots = format_examples(examples)
        if arch == "uni-encoder":
            block = self.label_block(labels, prompt)
        elif arch == "bi-encoder-fused":
            block = (f"{prompt} " if prompt else "") + LABEL_TOKEN * len(labels) + SEP_TOKEN
        elif arch == "bi-encoder":
            return Segments(f"{prompt} " if prompt else "", text, "")
        else:  # encoder-decoder: labels and prompt go to the decoder
            return Segments("", text, shots)
        if self.config.prompt_first:
            return Segments(block, text, shots)
        return Segments("", text, block + shots)

    # ----------------------------------------------------------------- tokenisation
    def _tokenize(self, strings: list[str], offsets: bool = False) -> dict[str, list]:
        return self.tokenizer(
            strings, add_special_tokens=True, truncation=False, return_offsets_mapping=offsets, verbose=False
        )

    def _fit(self, seg: Segments) -> list[int]:
        """Token ids of `seg` within the budget, cutting only the text, which keeps at least
        min(`min_text_tokens`, its token count) tokens; `LabelBudgetError` when the rest leaves less room."""
        enc = self._tokenize([seg.string], offsets=True)
        ids, offsets = enc["input_ids"][0], enc["offset_mapping"][0]
        if len(ids) <= self.budget:
            return ids
        fixed = len(self._tokenize([seg.prefix + seg.suffix])["input_ids"][0])
        start, end = len(seg.prefix), len(seg.prefix) + len(seg.text)
        text_tokens = [i for i, (a, b) in enumerate(offsets) if b > a and start <= a < end]
        if not text_tokens:  # a text of whitespace only: nothing to cut
            ids = self._tokenize([seg.prefix + seg.suffix])["input_ids"][0]
            if len(ids) <= self.budget:
                return ids
            raise self._budget_error(fixed, self.budget - fixed, 0)
        need = min(self.min_text_tokens, len(text_tokens))
        keep = self.budget - fixed  # text tokens that fit beside the rest, before boundary effects
        while keep >= need:
            cut = offsets[text_tokens[keep]][0] - start if keep < len(text_tokens) else len(seg.text)
            trial = Segments(seg.prefix, seg.text[:cut].rstrip(), seg.suffix)
            ids = self._tokenize([trial.string])["input_ids"][0]
            if len(ids) <= self.budget:
                return ids
            keep -= max(1, len(ids) - self.budget)  # boundary merges can add a token or two
        raise self._budget_error(fixed, keep, len(text_tokens))

    def _budget_error(self, fixed: int, room: int, num_text: int) -> LabelBudgetError:
        text = ""
        if num_text:
            text = (
                f", leaving {max(room, 0)} for the text, which must keep at least "
                f"{min(self.min_text_tokens, num_text)} of its {num_text} tokens (min_text_tokens={self.min_text_tokens})"
            )
        return LabelBudgetError(
            f"labels, prompt and examples need {fixed} tokens but the budget is {self.budget} "
            f"(min(max_length={self.max_length}, backbone positions)){text}; split the labels into groups (the "
            "pipeline does this) or use fewer/shorter labels"
        )

    def encode(
        self,
        text: str,
        labels: Sequence[str],
        prompt: str | None = None,
        examples: Sequence[Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """One example -> unpadded python lists (`input_ids`, `num_labels`, and label ids where needed)."""
        return self.encode_batch([text], [labels], [prompt], [examples])[0]

    def encode_batch(
        self,
        texts: Sequence[str],
        labels: Sequence[Sequence[str]],
        prompts: Sequence[str | None] | None = None,
        examples: Sequence[Sequence[Mapping] | None] | None = None,
        label_ids: bool = True,
        token_ids: Sequence[list[int]] | None = None,
    ) -> list[dict[str, Any]]:
        """`label_ids=False` skips tokenising labels for the label encoder (callers with cached label vectors).

        `token_ids`: the tokenizer's ids of each example's full sequence string (`segments(...).string`, special
        tokens added, untruncated), when the caller already has them (the pipeline measures every row while
        planning); they are checked for length, not re-tokenised."""
        if len(labels) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(labels)} label lists")
        if len(texts) == 0:
            raise ValueError("got no texts: a batch needs at least one example")
        prompts = list(prompts) if prompts is not None else [None] * len(texts)
        examples = list(examples) if examples is not None else [None] * len(texts)
        if not (len(prompts) == len(examples) == len(texts)):
            raise ValueError(f"got {len(texts)} texts, {len(prompts)} prompts and {len(examples)} example lists")
        labels = [check_labels(labels_i) for labels_i in labels]
        segs = []
        for i, text in enumerate(texts):
            check_text(text, f"text {i}")
            if prompts[i] is not None and not isinstance(prompts[i], str):
                raise TypeError(f"prompt {i} must be a str or None, got {type(prompts[i]).__name__}")
            segs.append(self.segments(text, labels[i], prompts[i], examples[i]))
        if token_ids is None:
            fast = self._tokenize([s.string for s in segs])["input_ids"]
        elif len(token_ids) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(token_ids)} token id lists")
        else:
            fast = list(token_ids)
        out = []
        for seg, ids, labels_i, prompt in zip(segs, fast, labels, prompts, strict=True):
            item = {"input_ids": ids if len(ids) <= self.budget else self._fit(seg), "num_labels": len(labels_i)}
            arch = self.config.architecture_type
            if arch in ("uni-encoder", "bi-encoder-fused"):
                found = item["input_ids"].count(self.config.class_token_index)
                if found != len(labels_i):
                    raise ValueError(f"built {found} {LABEL_TOKEN} tokens for {len(labels_i)} labels")
            if self.config.uses_label_encoder:
                if label_ids:
                    item["class_input_ids"] = self.label_ids(labels_i)
            elif arch == "encoder-decoder":
                block = self.tokenizer(self.label_block(labels_i, prompt), verbose=False)["input_ids"]
                if len(block) > self.budget:
                    raise LabelBudgetError(f"the label prompt needs {len(block)} tokens; the budget is {self.budget}")
                item["class_input_ids"] = block
            out.append(item)
        return out

    def label_ids(self, labels: Sequence[str]) -> list[list[int]]:
        """Label-encoder token ids, one list per label (bi-encoders), each label inside `label_template` if set."""
        if self.label_template is not None:
            labels = [self.label_template.replace("{}", label) for label in labels]
        return self.label_tokenizer(list(labels), truncation=True, max_length=self.label_max_length, verbose=False)[
            "input_ids"
        ]

    # ----------------------------------------------------------------- batching
    def collate(self, items: Sequence[Mapping[str, Any]], label_ids: bool = True) -> dict[str, torch.Tensor]:
        """Right-pad a list of `encode` outputs into tensors, with `labels_mask` [B, C].

        `label_ids=False` (items encoded with `label_ids=False`) leaves out the label-encoder inputs.
        """
        if not items:
            raise ValueError("collate needs at least one example (got an empty batch)")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        batch = pad_ids([it["input_ids"] for it in items], pad)
        counts = torch.tensor([it["num_labels"] for it in items])
        batch["labels_mask"] = torch.arange(int(counts.max())).unsqueeze(0) < counts.unsqueeze(1)
        if self.config.uses_label_encoder and label_ids:
            label_pad = self.label_tokenizer.pad_token_id or 0
            width = max(len(ids) for it in items for ids in it["class_input_ids"])
            num_slots = batch["labels_mask"].shape[1]
            ids = torch.full((len(items), num_slots, width), label_pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for b, it in enumerate(items):
                for c, label_ids in enumerate(it["class_input_ids"]):
                    ids[b, c, : len(label_ids)] = torch.tensor(label_ids)
                    mask[b, c, : len(label_ids)] = 1
            batch["class_input_ids"], batch["class_attention_mask"] = ids, mask
        elif self.config.architecture_type == "encoder-decoder":
            dec = pad_ids([it["class_input_ids"] for it in items], pad)
            batch["class_input_ids"], batch["class_attention_mask"] = dec["input_ids"], dec["attention_mask"]
        return batch

    def __call__(
        self,
        texts: Sequence[str],
        labels: Sequence[Sequence[str]],
        prompts: Sequence[str | None] | None = None,
        examples: Sequence[Sequence[Mapping] | None] | None = None,
    ) -> dict[str, torch.Tensor]:
        return self.collate(self.encode_batch(texts, labels, prompts, examples))


def pad_ids(rows: Sequence[Sequence[int]], pad: int) -> dict[str, torch.Tensor]:
    """Right-pad token id lists -> `input_ids` and `attention_mask` tensors."""
    width = max(len(r) for r in rows)
    # filled in numpy: a list of ints converts several times faster there than through torch.tensor (hot per call)
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}


def add_special_tokens(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Add <<LABEL>>, <<SEP>>, <<EXAMPLE>> (if missing) and return their ids."""
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
