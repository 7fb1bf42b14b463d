"""Losses: masking of padded label slots, reductions, gradients, single-label training, the contrastive terms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gliclass.modeling.architectures import GLiClassOutput
from gliclass.modeling.losses import (
    GLiClassLoss,
    focal_loss_with_logits,
    label_cross_entropy,
    sequence_contrastive_loss,
)


@pytest.fixture
def padded():
    """Two texts with 3 and 2 labels (one padded slot, holding a garbage logit)."""
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.3, -2.0, 50.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    return logits, targets, mask


def reference_focal(logit: float, target: float, alpha: float, gamma: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    bce = -(target * math.log(p) + (1 - target) * math.log(1 - p))
    p_t = p * target + (1 - p) * (1 - target)
    return (alpha * target + (1 - alpha) * (1 - target)) * (1 - p_t) ** gamma * bce


def test_focal_mean_is_over_valid_slots_only(padded):
    logits, targets, mask = padded
    expected = [
        reference_focal(logits[b, c].item(), targets[b, c].item(), 0.5, 2.0)
        for b in range(2)
        for c in range(3)
        if mask[b, c]
    ]
    loss = focal_loss_with_logits(logits, targets, mask, alpha=0.5, gamma=2.0)
    assert loss.item() == pytest.approx(sum(expected) / 5, rel=1e-5)


def test_focal_ignores_padded_slots_and_gives_them_no_gradient(padded):
    logits, targets, mask = padded
    loss = focal_loss_with_logits(logits, targets, mask)
    loss.backward()
    assert logits.grad[1, 2] == 0
    assert (logits.grad[mask] != 0).all()
    unpadded = focal_loss_with_logits(logits[:1], targets[:1], mask[:1])
    second = focal_loss_with_logits(logits[1:, :2], targets[1:, :2])
    assert loss.item() == pytest.approx((unpadded.item() * 3 + second.item() * 2) / 5, rel=1e-5)


def test_focal_reductions(padded):
    logits, targets, mask = padded
    per_slot = focal_loss_with_logits(logits, targets, mask, reduction="none")
    assert per_slot.shape == logits.shape and per_slot[1, 2] == 0
    assert focal_loss_with_logits(logits, targets, mask, reduction="sum").item() == pytest.approx(per_slot.sum().item())
    with pytest.raises(ValueError, match="reduction"):
        focal_loss_with_logits(logits, targets, mask, reduction="avg")


def test_negative_alpha_and_gamma_switch_focal_terms_off(padded):
    logits, targets, mask = padded
    plain = F.binary_cross_entropy_with_logits(logits[mask], targets[mask])
    assert focal_loss_with_logits(logits, targets, mask, alpha=-1, gamma=-1).item() == pytest.approx(plain.item())
    gamma_only = focal_loss_with_logits(logits, targets, mask, alpha=-1, gamma=2.0)
    assert gamma_only.item() < plain.item()


def test_focal_soft_targets_and_label_smoothing(padded):
    logits, _, mask = padded
    soft = torch.tensor([[0.7, 0.2, 0.0], [0.0, 0.9, 0.0]])
    loss = focal_loss_with_logits(logits, soft, mask, alpha=-1, gamma=0)
    assert loss.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits[mask], soft[mask]).item())
    smoothed = focal_loss_with_logits(logits, soft, mask, alpha=-1, gamma=0, label_smoothing=0.2)
    expected = F.binary_cross_entropy_with_logits(logits[mask], soft[mask] * 0.8 + 0.1)
    assert smoothed.item() == pytest.approx(expected.item())


def test_single_label_cross_entropy_over_each_texts_own_labels(padded):
    logits, targets, mask = padded
    loss = label_cross_entropy(logits, targets, mask)
    expected = (F.cross_entropy(logits[:1], torch.tensor([0])) + F.cross_entropy(logits[1:, :2], torch.tensor([1]))) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert logits.grad[1, 2] == 0 and torch.isfinite(logits.grad).all()


def test_single_label_cross_entropy_skips_rows_without_a_positive_and_takes_soft_targets(padded):
    logits, _, mask = padded
    no_positive = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    only_first = label_cross_entropy(logits[:1], no_positive[:1], mask[:1])
    assert label_cross_entropy(logits, no_positive, mask).item() == pytest.approx(only_first.item())
    soft = torch.tensor([[2.0, 2.0, 0.0], [0.0, 1.0, 0.0]])  # normalised to [0.5, 0.5, 0]
    row = -(torch.log_softmax(logits[0], -1)[:2]).mean()
    both = (row + F.cross_entropy(logits[1:, :2], torch.tensor([1]))) / 2
    assert label_cross_entropy(logits, soft, mask).item() == pytest.approx(both.item(), rel=1e-5)


def test_single_label_training_learns():
    torch.manual_seed(0)
    logits = torch.zeros(4, 3, requires_grad=True)
    targets = F.one_hot(torch.tensor([0, 2, 1, 0]), 3).float()
    optimizer = torch.optim.SGD([logits], lr=1.0)
    for _ in range(50):
        optimizer.zero_grad()
        label_cross_entropy(logits, targets).backward()
        optimizer.step()
    assert (logits.argmax(-1) == targets.argmax(-1)).all()


def reference_contrastive(embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Paper eq. 8, one sequence at a time, candidates restricted to the valid positions."""
    losses = []
    for b in range(len(embeddings)):
        e = F.normalize(embeddings[b][mask[b]], dim=-1)
        sim = e @ e.T
        losses.append(F.cross_entropy(sim, torch.arange(len(e)), reduction="sum"))
    return torch.stack(losses).sum() / mask.sum()


def test_sequence_contrastive_matches_the_paper_formula():
    torch.manual_seed(0)
    embeddings = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    loss = sequence_contrastive_loss(embeddings, mask)
    assert loss.item() == pytest.approx(reference_contrastive(embeddings, mask).item(), rel=1e-5)


def test_sequence_contrastive_does_not_depend_on_padding():
    torch.manual_seed(0)
    embeddings = torch.randn(1, 4, 8, requires_grad=True)
    padded = torch.cat([embeddings, torch.randn(1, 3, 8)], dim=1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    assert sequence_contrastive_loss(padded, mask).item() == pytest.approx(
        sequence_contrastive_loss(embeddings).item(), rel=1e-6
    )
    sequence_contrastive_loss(padded, mask).backward()
    assert torch.isfinite(embeddings.grad).all()


def test_sequence_contrastive_rewards_distinct_vectors():
    distinct = torch.eye(4).unsqueeze(0)
    same = torch.ones(1, 4, 4)
    assert sequence_contrastive_loss(same).item() == pytest.approx(math.log(4))
    assert sequence_contrastive_loss(distinct).item() < sequence_contrastive_loss(same).item()


def test_sequence_contrastive_on_an_empty_mask_is_zero_with_a_graph():
    embeddings = torch.randn(2, 3, 4, requires_grad=True)
    loss = sequence_contrastive_loss(embeddings, torch.zeros(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0 and (embeddings.grad == 0).all()


def fake_output(logits: torch.Tensor, mask: torch.Tensor) -> GLiClassOutput:
    torch.manual_seed(1)
    return GLiClassOutput(
        logits=logits,
        labels_mask=mask,
        class_embeddings=torch.randn(*mask.shape, 6, requires_grad=True),
        token_embeddings=torch.randn(2, 7, 6, requires_grad=True),
        token_mask=torch.tensor([[1] * 7, [1] * 4 + [0] * 3]),
    )


def test_combined_loss_terms(padded):
    logits, targets, mask = padded
    output = fake_output(logits, mask)
    terms = GLiClassLoss(token_contrastive_coef=0.1, label_contrastive_coef=0.2)(output, targets)
    assert set(terms) == {"loss", "focal", "token_contrastive", "label_contrastive"}
    token = sequence_contrastive_loss(output.token_embeddings, output.token_mask)
    label = sequence_contrastive_loss(output.class_embeddings, mask)
    assert terms["token_contrastive"].item() == pytest.approx(0.1 * token.item())
    assert terms["label_contrastive"].item() == pytest.approx(0.2 * label.item())
    assert terms["loss"].item() == pytest.approx(terms["focal"].item() + 0.1 * token.item() + 0.2 * label.item())
    terms["loss"].backward()
    assert output.token_embeddings.grad is not None and output.class_embeddings.grad is not None


def test_combined_loss_switches(padded):
    logits, targets, mask = padded
    terms = GLiClassLoss(classification="cross_entropy")(fake_output(logits, mask), targets)
    assert set(terms) == {"loss", "cross_entropy"}
    contrastive_only = GLiClassLoss(classification_weight=0, token_contrastive_coef=1)(
        fake_output(logits, mask), targets
    )
    assert set(contrastive_only) == {"loss", "token_contrastive"}
    with pytest.raises(ValueError, match="switched off"):
        GLiClassLoss(classification_weight=0)
    with pytest.raises(ValueError, match="classification"):
        GLiClassLoss(classification="softmax")


def test_loss_on_a_real_model_backpropagates(make_tiny):
    model, processor = make_tiny("bert")
    model.train()
    batch = processor(["good film", "a storm is coming"], [["positive", "negative"], ["weather", "sports", "news"]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    terms = GLiClassLoss(token_contrastive_coef=0.1, label_contrastive_coef=0.1)(model(**batch), targets)
    terms["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert sum(g is not None and g.abs().sum() > 0 for g in grads) > len(grads) // 2
