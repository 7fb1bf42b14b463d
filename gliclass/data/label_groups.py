"""Evaluation and validation rows whose labels do not fit beside their text: scored as the pipeline scores them.

A row of the held-out sets (every label of the dataset a candidate: banking77 has 77) can need more tokens for its
label block than the length budget allows, which the processor refuses (`LabelBudgetError`). Training drops
negatives instead (`GLiClassDataset(trim_labels_to_fit=True)`); evaluation must score every label. Such a row
becomes several model rows, planned by `ZeroShotPipeline.plan` (`long_text="truncate"`): its labels in contiguous
groups that each fit beside the head of the text, every group scored with that text. `reassemble` puts each group's
logits back at its labels' places, so losses, softmax decisions (argmax over all the text's labels) and metrics
read one row of logits per text, exactly the pipeline's `logits()` for that text. Rows that fit are encoded as
before (one model row each, the text cut to the budget if needed).

For a uni-encoder the grouping changes what each label attends to (only its own group), so grouped logits equal
those of a larger-budget model only where a single group fits; they always equal the pipeline's at the same budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from gliclass.modeling.architectures import GLiClassOutput
from gliclass.processing import GLiClassProcessor

# batch keys of a grouped batch (`GLiClassCollator`): model row -> text, model row -> its first label's index in the
# text's label list, and the [B, C] mask of the texts' label lists (the model rows' `labels_mask` is [R, C'])
ROW_EXAMPLE, ROW_LABEL_START, EXAMPLE_LABELS_MASK = "row_example", "row_label_start", "example_labels_mask"


class LabelGroupPlanner:
    """The pipeline's planning of (text chunk, label group) model rows, with no model: `rows(...)` per text."""

    def __init__(self, processor: GLiClassProcessor) -> None:
        from gliclass.pipeline import ZeroShotPipeline  # the pipeline imports the processing stack, not the data

        # `plan` measures token counts only and never calls the model, so none is given; "truncate": one chunk, the
        # head of the text, per label group (as the processor cuts a long text of a row that fits)
        self.pipeline = ZeroShotPipeline(None, processor, long_text="truncate")

    def rows(
        self,
        text: str,
        labels: Sequence[str],
        prompt: str | None = None,
        examples: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[tuple[str, int, list[str]]]:
        """(text to encode, index of the group's first label in `labels`, the group's labels) per model row, in label
        order; the groups cover `labels` exactly once."""
        planned = self.pipeline.plan([text], [list(labels)], prompt=[prompt], examples=[examples])[0]
        out, start = [], 0
        for row in sorted(planned, key=lambda row: row["group"]):
            out.append((row["text"], start, list(row["labels"])))
            start += len(row["labels"])
        if start != len(labels) or [label for _, _, group in out for label in group] != list(labels):
            raise AssertionError(f"label groups {[group for _, _, group in out]} do not cover the labels {labels}")
        return out


def reassemble(output: GLiClassOutput, batch: Mapping[str, Any]) -> GLiClassOutput:
    """One output row per text from the model rows of a grouped batch.

    `logits` [B, C] and `class_embeddings` [B, C, D] hold every label of each text at its place in the text's label
    list, with `labels_mask` the texts' [B, C] mask (padded slots hold 0). `text_embeddings` is the mean over a text's
    rows (the first row's tokens for pooling "pass"); `token_embeddings` and `token_mask` stay per model row (the
    token-level contrastive term is per sequence)."""
    mask = batch[EXAMPLE_LABELS_MASK].to(output.logits.device).bool()
    row_example = batch[ROW_EXAMPLE].to(output.logits.device)
    rows, slots = output.labels_mask.bool().nonzero(as_tuple=True)
    texts = row_example[rows]
    places = batch[ROW_LABEL_START].to(output.logits.device)[rows] + slots
    logits = output.logits.new_zeros(mask.shape)
    logits[texts, places] = output.logits[rows, slots]
    classes = None
    if output.class_embeddings is not None:
        classes = output.class_embeddings.new_zeros(*mask.shape, output.class_embeddings.shape[-1])
        classes[texts, places] = output.class_embeddings[rows, slots]
    text = output.text_embeddings
    if text is not None:
        if text.dim() == 2:
            counts = torch.bincount(row_example, minlength=len(mask)).clamp(min=1).to(text.dtype)
            text = text.new_zeros(len(mask), text.shape[-1]).index_add_(0, row_example, text) / counts.unsqueeze(1)
        else:  # pooling "pass": [R, L, D] token states, the first row of each text
            first = torch.full((len(mask),), len(row_example), dtype=torch.long, device=row_example.device)
            first = first.scatter_reduce(0, row_example, torch.arange(len(row_example), device=first.device), "amin")
            text = text[first]
    return GLiClassOutput(logits, mask, text, classes, output.token_embeddings, output.token_mask)
