"""Label-level classification metrics for training and evaluation (torchmetrics, so they sync across processes).

GLiClass batches have no fixed class axis: every text brings its own label list, in its own order. A decision is a
(text, label) pair, and labels are identified by name, so one metric serves the training mix (sampled label sets)
and the held-out datasets (all labels, any order). Macro averages run over the labels that occur in the truth or the
predictions, as in `gliclass.evaluation.metrics.macro_f1`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

STATS = ("f1", "precision", "recall")


@lru_cache(maxsize=65536)
def label_id(name: str) -> int:
    """A stable 63-bit id per label name (the same in every process, unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big") >> 1


def slot_label_ids(label_names: Sequence[Sequence[str]], labels_mask: torch.Tensor) -> torch.Tensor:
    """[N] ids of the valid slots, in `labels_mask.nonzero()` order."""
    rows, slots = labels_mask.nonzero(as_tuple=True)
    ids = [label_id(label_names[r][s]) for r, s in zip(rows.tolist(), slots.tolist(), strict=True)]
    return torch.tensor(ids, dtype=torch.long, device=labels_mask.device)


def decide(logits: torch.Tensor, labels_mask: torch.Tensor, multi_label: bool, threshold: float = 0.5) -> torch.Tensor:
    """[B, C] bool decisions: sigmoid >= threshold (multi-label) or the argmax over the text's own labels."""
    labels_mask = labels_mask.bool()
    if multi_label:
        return (torch.sigmoid(logits.float()) >= threshold) & labels_mask
    best = logits.masked_fill(~labels_mask, float("-inf")).argmax(-1, keepdim=True)
    return torch.zeros_like(labels_mask).scatter_(-1, best, True) & labels_mask


def _scores(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> dict[str, torch.Tensor]:
    """F1, precision and recall with 0 where undefined (sklearn's zero_division=0)."""

    def ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))

    return {"f1": ratio(2 * tp, 2 * tp + fp + fn), "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn)}


class LabelF1(Metric):
    """Micro and (optionally) macro F1, precision and recall over (text, label) decisions.

    Micro needs three counters. Macro keeps one (label id, decision, truth) triple per valid slot, so switch it off
    where the data is unbounded (the training stream).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, macro: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.macro = macro
        for name in ("tp", "fp", "fn"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        if macro:
            for name in ("label_ids", "preds", "truth"):
                self.add_state(name, [], dist_reduce_fx="cat")

    def update(
        self,
        preds: torch.Tensor,
        targets: torch.Tensor,
        labels_mask: torch.Tensor,
        label_names: Sequence[Sequence[str]],
    ) -> None:
        """`preds` [B, C] bool decisions, `targets` [B, C] scores (>= 0.5 is true), `label_names` per text."""
        labels_mask = labels_mask.bool()
        pred, truth = preds[labels_mask], targets[labels_mask] >= 0.5
        self.tp += (pred & truth).sum()
        self.fp += (pred & ~truth).sum()
        self.fn += (~pred & truth).sum()
        if self.macro:
            self.label_ids.append(slot_label_ids(label_names, labels_mask))
            self.preds.append(pred)
            self.truth.append(truth)

    def compute(self) -> dict[str, torch.Tensor]:
        out = {f"{k}_micro": v.float() for k, v in _scores(self.tp, self.fp, self.fn).items()}
        if not self.macro:
            return out
        ids, pred, truth = (dim_zero_cat(s) for s in (self.label_ids, self.preds, self.truth))
        labels, index = torch.unique(ids, return_inverse=True)
        counts = torch.zeros(3, len(labels), dtype=torch.float64, device=ids.device)
        for row, hits in enumerate((pred & truth, pred & ~truth, ~pred & truth)):
            counts[row].index_add_(0, index, hits.to(torch.float64))
        present = counts.sum(0) > 0
        for key, per_label in _scores(*counts[:, present]).items():
            out[f"{key}_macro"] = per_label.mean().float() if present.any() else per_label.new_zeros(()).float()
        return out
