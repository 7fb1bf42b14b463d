"""Training objectives, pure torch: classification losses over label slots and the contrastive terms.

Every loss takes the `[B, C]` label-slot mask: padded slots never contribute, and a mean divides by the number of
valid slots (the official focal loss divides by all B*C slots, so its scale drifts with the batch's padding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gliclass.modeling.architectures import GLiClassOutput

REDUCTIONS = ("mean", "sum", "none")
CLASSIFICATION_LOSSES = ("focal", "cross_entropy")


def _reduce(per_item: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    per_item = per_item.masked_fill(~valid, 0.0)
    if reduction == "none":
        return per_item
    if reduction == "sum":
        return per_item.sum()
    if reduction == "mean":
        return per_item.sum() / valid.sum().clamp(min=1)
    raise ValueError(f"reduction={reduction!r}: choose one of {list(REDUCTIONS)}")


def _valid(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(like, dtype=torch.bool) if mask is None else mask.bool()


def focal_loss_with_logits(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    alpha: float = 0.5,
    gamma: float = 2.0,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Sigmoid focal loss per label slot (RetinaNet), for 0/1 or soft targets.

    `alpha < 0` drops the class weighting and `gamma <= 0` the modulating factor (then it is plain BCE), as in the
    official package. `label_smoothing` pulls targets towards 0.5. With `reduction="none"` padded slots hold 0.
    """
    valid = _valid(mask, logits)
    targets = targets.to(logits.dtype)
    if label_smoothing > 0:
        targets = targets * (1 - label_smoothing) + 0.5 * label_smoothing
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if gamma > 0:
        probs = torch.sigmoid(logits)
        p_t = probs * targets + (1 - probs) * (1 - targets)
        loss = loss * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return _reduce(loss, valid, reduction)


def label_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Single-label cross-entropy: softmax over each text's own (valid) label slots.

    Targets are one-hot or soft scores per slot; each row is normalised to a distribution. Rows with no positive
    target have nothing to predict and are left out (of the mean too). `reduction="none"` gives one value per row.
    """
    valid = _valid(mask, logits)
    targets = targets.to(logits.dtype).masked_fill(~valid, 0.0)
    mass = targets.sum(-1, keepdim=True)
    has_target = mass.squeeze(-1) > 0
    targets = targets / mass.clamp(min=torch.finfo(logits.dtype).tiny)
    if label_smoothing > 0:
        uniform = valid.to(logits.dtype) / valid.sum(-1, keepdim=True).clamp(min=1)
        targets = (1 - label_smoothing) * targets + label_smoothing * uniform
    # a finite fill (not -inf) keeps 0 * log p = 0 in the padded slots
    log_probs = torch.log_softmax(logits.masked_fill(~valid, torch.finfo(logits.dtype).min), dim=-1)
    per_row = -(targets * log_probs).sum(-1)
    return _reduce(per_row, has_target, reduction)


def sequence_contrastive_loss(embeddings: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Paper eqs. 7-8: each valid position must identify itself among the valid positions of its own sequence.

    `embeddings` [B, N, D] are L2-normalised, S_b = E_b E_b^T, and the loss is the cross-entropy of row l of S_b
    with target l, averaged over valid positions. On token states it is the token-level loss of the paper; on label
    vectors [B, C, D] with the label mask it is the official label-level term. Padded positions are no candidates
    (the official keeps them, which makes the loss depend on how much padding the batch has).

    S is one batched matmul [B, N, N] whose valid rows are then gathered: indexing the embeddings per valid position
    first would copy them into an [M, N, D] tensor (M valid positions), about 34 GB at B=8, N=1024, D=1024.
    """
    valid = _valid(mask, embeddings[..., 0])
    normed = F.normalize(embeddings.float(), p=2, dim=-1)
    rows, positions = valid.nonzero(as_tuple=True)
    if rows.numel() == 0:
        return embeddings.sum() * 0.0  # keeps the graph (and DDP's gradient sync) alive on an empty batch
    similarity = torch.bmm(normed, normed.transpose(1, 2))[rows, positions]  # [M, N]
    similarity = similarity.masked_fill(~valid[rows], float("-inf"))
    return F.cross_entropy(similarity, positions)


class GLiClassLoss(nn.Module):
    """The supervised objective: a weighted classification loss plus the optional contrastive terms.

    `classification` is "focal" (sigmoid per label: multi-label, the paper's pre-training loss) or "cross_entropy"
    (softmax over a text's labels: single-label data). `cross_entropy_coef` adds the softmax term beside focal (rows
    with several positives share the target mass). A weight or coefficient of 0 leaves that term out entirely.
    """

    def __init__(
        self,
        classification: str = "focal",
        classification_weight: float = 1.0,
        focal_alpha: float = 0.5,
        focal_gamma: float = 2.0,
        label_smoothing: float = 0.0,
        token_contrastive_coef: float = 0.0,
        label_contrastive_coef: float = 0.0,
        cross_entropy_coef: float = 0.0,
    ) -> None:
        super().__init__()
        if classification not in CLASSIFICATION_LOSSES:
            raise ValueError(f"classification={classification!r}: choose one of {list(CLASSIFICATION_LOSSES)}")
        if classification == "cross_entropy" and cross_entropy_coef > 0:
            raise ValueError(
                "cross_entropy_coef adds a softmax term beside focal; with classification='cross_entropy' "
                "set classification_weight instead"
            )
        if max(classification_weight, token_contrastive_coef, label_contrastive_coef, cross_entropy_coef) <= 0:
            raise ValueError("every loss term is switched off: set a positive weight or coefficient")
        self.classification = classification
        self.classification_weight = classification_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.label_smoothing = label_smoothing
        self.token_contrastive_coef = token_contrastive_coef
        self.label_contrastive_coef = label_contrastive_coef
        self.cross_entropy_coef = cross_entropy_coef

    def classification_loss(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.classification == "focal":
            return focal_loss_with_logits(
                logits, targets, mask, self.focal_alpha, self.focal_gamma, label_smoothing=self.label_smoothing
            )
        return label_cross_entropy(logits, targets, mask, label_smoothing=self.label_smoothing)

    def forward(self, output: GLiClassOutput, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """`{"loss": total, <term>: weighted term}` for the terms that are switched on."""
        terms = {}
        if self.classification_weight > 0:
            logits = output.logits.float()  # losses in fp32 under mixed precision
            terms[self.classification] = self.classification_weight * self.classification_loss(
                logits, targets, output.labels_mask
            )
        if self.cross_entropy_coef > 0:
            # softmax over each text's own candidates: ranks the true label(s) above the negatives, which is the
            # decision single-label datasets take (argmax); the focal term keeps the sigmoid scores usable
            terms["cross_entropy"] = self.cross_entropy_coef * label_cross_entropy(
                output.logits.float(), targets, output.labels_mask, label_smoothing=self.label_smoothing
            )
        if self.token_contrastive_coef > 0:
            terms["token_contrastive"] = self.token_contrastive_coef * sequence_contrastive_loss(
                output.token_embeddings, output.token_mask
            )
        if self.label_contrastive_coef > 0:
            terms["label_contrastive"] = self.label_contrastive_coef * sequence_contrastive_loss(
                output.class_embeddings, output.labels_mask
            )
        return {"loss": torch.stack(list(terms.values())).sum(), **terms}
