"""Knowledge distillation from a trained GLiClass teacher (typically the warm bi-encoder into the uni-encoder).

The uni-encoder has no free warm start: text and labels attend to each other in one sequence, which scrambles the
backbone's similarity geometry, and a gold label per text is a sparse signal to rebuild it from. A trained teacher
gives a dense one: for every training row it scores the same candidate labels, in the same order, and the student
matches the teacher's softmax over them (Hinton et al. 2015), beside its own supervised loss:

    loss = supervised + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))   over the row's candidates

The teacher reads the rows with its own processor (a bi-encoder: text and labels apart), from the raw `texts` and
`label_names` that `GLiClassCollator` keeps in every batch. It is frozen, in eval mode, and not part of the trained
module: it is not optimised, not saved in checkpoints, and not exported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from gliclass.modeling.model import GLiClassModel
from gliclass.processing import GLiClassProcessor


def distillation_kl(
    student: torch.Tensor, teacher: torch.Tensor, labels_mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Mean over rows of `T^2 * KL(softmax(teacher / T) || softmax(student / T))`, each softmax over the row's real
    candidates only (`labels_mask`); rows without a candidate are left out. [B, C] logits in, a scalar out."""
    if student.shape != teacher.shape or student.shape != labels_mask.shape:
        raise ValueError(
            f"student logits {tuple(student.shape)}, teacher logits {tuple(teacher.shape)} and labels_mask "
            f"{tuple(labels_mask.shape)} must have one shape"
        )
    if temperature <= 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature}")
    mask = labels_mask.bool()
    rows = mask.any(dim=1)
    if not rows.any():
        return student.sum() * 0.0
    fill = torch.finfo(torch.float32).min
    s = (student.float() / temperature).masked_fill(~mask, fill)[rows]
    t = (teacher.float() / temperature).masked_fill(~mask, fill)[rows]
    log_p_s, log_p_t = F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1)
    # padded slots carry p_t = 0: zero them outright (0 * (fill - fill) would be 0 anyway, but stay explicit)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).masked_fill(~mask[rows], 0.0).sum(dim=-1)
    return kl.mean() * temperature**2


class Teacher:
    """A frozen GLiClass model and its processor that score a training batch's texts against its candidates."""

    def __init__(self, path: str | os.PathLike, weight: float = 1.0, temperature: float = 1.0) -> None:
        if weight < 0:
            raise ValueError(f"distillation weight must be >= 0, got {weight}")
        if temperature <= 0:
            raise ValueError(f"distillation temperature must be > 0, got {temperature}")
        if not os.path.isdir(path):
            raise FileNotFoundError(f"distillation teacher {path!r} is not a model directory (train or export one)")
        self.path = str(path)
        self.weight = float(weight)
        self.temperature = float(temperature)
        self.model = GLiClassModel.from_pretrained(self.path).eval().requires_grad_(False)
        self.processor = GLiClassProcessor.from_pretrained(self.path)

    @torch.no_grad()
    def logits(self, texts: Sequence[str], label_names: Sequence[Sequence[str]], device: torch.device) -> torch.Tensor:
        """[B, C] teacher logits of each text's candidates in the given order (C: the longest list; padded slots
        hold garbage, read them with the student's `labels_mask`)."""
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        items = self.processor.encode_batch(list(texts), [list(names) for names in label_names])
        batch = self.processor.collate(items)
        inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        return self.model(**inputs).logits

    def loss(self, student_logits: torch.Tensor, labels_mask: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        """The weighted distillation term for a training batch (its `texts` and `label_names`)."""
        if "texts" not in batch or "label_names" not in batch:
            raise KeyError("distillation needs the batch's `texts` and `label_names` (GLiClassCollator keeps them)")
        teacher = self.logits(batch["texts"], batch["label_names"], student_logits.device)
        if teacher.shape != student_logits.shape:
            raise ValueError(
                f"the teacher scored {tuple(teacher.shape)} label slots but the student {tuple(student_logits.shape)}: "
                "the two must read the same candidates"
            )
        return self.weight * distillation_kl(student_logits, teacher, labels_mask, self.temperature)
