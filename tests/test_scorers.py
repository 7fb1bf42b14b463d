"""Scorers: text vector(s) + label vectors -> logits [B, C]."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig

from gliclass.config import GLiClassConfig
from gliclass.modeling.scorers import CrossAttnScorer, DotScorer, HopfieldScorer, MLPScorer, build_scorer

D, B, C, L = 16, 2, 5, 6
VECTOR_SCORERS = ["simple", "mlp", "weighted-dot", "hopfield"]
ALL_SCORERS = [*VECTOR_SCORERS, "cross-attn"]

# official checkpoint key names (see shared/docs/official-gliclass-facts.md)
OFFICIAL_KEYS = {
    "simple": set(),
    "mlp": {f"mlp.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")},
    "weighted-dot": {
        f"{m}.{p}" for m in ("proj_text", "proj_label", "out_mlp.0", "out_mlp.3") for p in ("weight", "bias")
    },
    "hopfield": {"q_proj.weight", "k_proj.weight", "v_proj.weight"}
    | {f"mlp.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")},
    "cross-attn": {f"{m}.{p}" for m in ("q_norm", "kv_norm", "q", "k", "v", "out", "norm") for p in ("weight", "bias")}
    | {f"score_mlp.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")},
}


# tiny tensors: one intra-op thread (conftest.single_thread)
pytestmark = pytest.mark.usefixtures("single_thread")


def make_scorer(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = GLiClassConfig(
        encoder_config=BertConfig(hidden_size=D, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
        scorer_type=kind,
        pooling_strategy="pass" if kind == "cross-attn" else "first",
        scorer_num_heads=4,
        scorer_mlp_hidden_size=32,
    )
    scorer = build_scorer(config).eval()
    for param in scorer.parameters():  # non-trivial values (biases too) so every path matters
        torch.nn.init.normal_(param, std=0.3)
    return scorer


def inputs(kind: str, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    text_shape = (B, L, D) if kind == "cross-attn" else (B, D)
    text = torch.randn(*text_shape, generator=generator)
    labels = torch.randn(B, C, D, generator=generator)
    text_mask = torch.ones(B, L, dtype=torch.bool)
    text_mask[1, 4:] = False
    return text, labels, text_mask


def run(scorer, kind, text, labels, text_mask, labels_mask=None):
    return scorer(text, labels, text_mask=text_mask if kind == "cross-attn" else None, labels_mask=labels_mask)


@pytest.mark.parametrize("kind", ALL_SCORERS)
def test_scorer_shape_and_official_parameter_names(kind):
    scorer = make_scorer(kind)
    text, labels, text_mask = inputs(kind)
    logits = run(scorer, kind, text, labels, text_mask)
    assert logits.shape == (B, C)
    assert torch.isfinite(logits).all()
    assert set(scorer.state_dict()) == OFFICIAL_KEYS[kind]


def test_build_scorer_classes():
    assert isinstance(make_scorer("simple"), DotScorer)
    assert isinstance(make_scorer("mlp"), MLPScorer)
    assert isinstance(make_scorer("hopfield"), HopfieldScorer)
    assert isinstance(make_scorer("cross-attn"), CrossAttnScorer)


def test_dot_scorer_is_eq_1():
    text, labels, _ = inputs("simple")
    expected = torch.stack([labels[b] @ text[b] for b in range(B)])
    torch.testing.assert_close(make_scorer("simple")(text, labels), expected)


def test_mlp_scorer_is_eq_2():
    scorer = make_scorer("mlp")
    text, labels, _ = inputs("mlp")
    expected = torch.tensor(
        [[scorer.mlp(torch.cat([text[b], labels[b, k]])).item() for k in range(C)] for b in range(B)]
    )
    torch.testing.assert_close(scorer(text, labels), expected)


@pytest.mark.parametrize("kind", ALL_SCORERS)
def test_scorer_is_label_permutation_equivariant(kind):
    scorer = make_scorer(kind)
    text, labels, text_mask = inputs(kind)
    perm = torch.tensor([3, 0, 4, 1, 2])
    logits = run(scorer, kind, text, labels, text_mask)
    permuted = run(scorer, kind, text, labels[:, perm], text_mask)
    torch.testing.assert_close(permuted, logits[:, perm], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ALL_SCORERS)
def test_padded_label_slots_do_not_change_real_scores(kind):
    """Extra (masked) label slots holding garbage leave the real labels' logits alone.

    The Hopfield scorer takes a softmax over labels: before the fix its padded slots took a share of it, so a
    text's scores changed with the number of label slots its batch was padded to.
    """
    scorer = make_scorer(kind)
    text, labels, text_mask = inputs(kind)
    real = run(scorer, kind, text, labels, text_mask, labels_mask=torch.ones(B, C, dtype=torch.bool))
    padded_labels = torch.cat([labels, 5 * torch.randn(B, 3, D)], dim=1)
    labels_mask = torch.arange(C + 3).unsqueeze(0).expand(B, -1) < C
    padded = run(scorer, kind, text, padded_labels, text_mask, labels_mask=labels_mask)
    assert padded.shape == (B, C + 3)
    torch.testing.assert_close(padded[:, :C], real, atol=1e-5, rtol=1e-5)


def test_hopfield_labels_interact_through_the_softmax():
    """Not independent per label (so the masking above is needed): changing one label moves another's score."""
    scorer = make_scorer("hopfield")
    with torch.no_grad():
        scorer.q_proj.weight.mul_(0.05)  # an unsaturated softmax, so every label takes a share
    text, labels, _ = inputs("hopfield")
    changed = labels.clone()
    changed[:, 1] = 3 * torch.randn(B, D)
    assert not torch.allclose(scorer(text, labels)[:, 0], scorer(text, changed)[:, 0], atol=1e-4)


@pytest.mark.parametrize("kind", ["simple", "mlp", "weighted-dot", "cross-attn"])
def test_per_label_scorers_score_each_label_independently(kind):
    scorer = make_scorer(kind)
    text, labels, text_mask = inputs(kind)
    logits = run(scorer, kind, text, labels, text_mask)
    for k in range(C):
        alone = run(scorer, kind, text, labels[:, k : k + 1], text_mask)
        torch.testing.assert_close(alone[:, 0], logits[:, k], atol=1e-5, rtol=1e-5)


def test_cross_attn_ignores_padded_text_tokens():
    scorer = make_scorer("cross-attn")
    text, labels, text_mask = inputs("cross-attn")
    logits = scorer(text, labels, text_mask=text_mask)
    dirty = torch.where(text_mask.unsqueeze(-1), text, torch.full_like(text, 1e3))
    torch.testing.assert_close(scorer(dirty, labels, text_mask=text_mask), logits)
    # the mask matters: without it the padded tokens are attended to
    assert not torch.allclose(scorer(dirty, labels, text_mask=None)[1], logits[1], atol=1e-3)
    # and row 1 scored alone on its real tokens gives the same logits
    alone = scorer(text[1:, :4], labels[1:], text_mask=torch.ones(1, 4, dtype=torch.bool))
    torch.testing.assert_close(alone[0], logits[1], atol=1e-5, rtol=1e-5)


def test_cross_attn_needs_token_states():
    scorer = make_scorer("cross-attn")
    _, labels, _ = inputs("cross-attn")
    with pytest.raises(ValueError, match="pooling_strategy='pass'"):
        scorer(torch.randn(B, D), labels)


def test_cross_attn_heads_must_divide_hidden_size():
    with pytest.raises(ValueError, match="not divisible by num_heads 3"):
        CrossAttnScorer(hidden_size=16, num_heads=3, mlp_hidden_size=8)


@pytest.mark.parametrize("kind", ["mlp", "weighted-dot", "hopfield", "cross-attn"])
def test_every_scorer_parameter_gets_gradient(kind):
    scorer = make_scorer(kind)
    text, labels, text_mask = inputs(kind)
    text.requires_grad_(True)
    labels.requires_grad_(True)
    run(scorer, kind, text, labels, text_mask).sum().backward()
    for name, param in scorer.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert text.grad.abs().sum() > 0 and labels.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["weighted-dot", "cross-attn"])
def test_scorer_dropout_only_in_training(kind):
    scorer = make_scorer(kind)
    if kind == "cross-attn":
        scorer.attn_dropout = 0.5
    text, labels, text_mask = inputs(kind)
    eval_logits = run(scorer, kind, text, labels, text_mask)
    torch.testing.assert_close(run(scorer, kind, text, labels, text_mask), eval_logits)
    scorer.train()
    torch.manual_seed(0)
    assert not torch.allclose(run(scorer, kind, text, labels, text_mask), eval_logits)
