"""Text poolings: shapes, hand-computed values, and that padded positions never leak into the result."""

from __future__ import annotations

import pytest
import torch

from gliclass.config import POOLINGS
from gliclass.modeling.poolings import AttentionPooling, PassPooling, build_pooling

VECTOR_POOLINGS = [name for name in POOLINGS if name != "pass"]
LENGTHS = [7, 4, 1]


# tiny tensors: one intra-op thread (conftest.single_thread)
pytestmark = pytest.mark.usefixtures("single_thread")


def _reference(name: str, x: torch.Tensor) -> torch.Tensor:
    """The pooling of one unpadded row [n, D], written out by hand."""
    return {
        "first": lambda: x[0],
        "last": lambda: x[-1],
        "avg": lambda: x.mean(0),
        "max": lambda: x.max(0).values,
        "sum": lambda: x.sum(0),
        "rms": lambda: x.pow(2).mean(0).sqrt(),
        "abs_max": lambda: x.abs().max(0).values,
        "abs_avg": lambda: x.abs().mean(0),
    }[name]()


@pytest.fixture
def batch():
    torch.manual_seed(0)
    x = torch.randn(len(LENGTHS), max(LENGTHS), 8)
    mask = torch.arange(max(LENGTHS)).unsqueeze(0) < torch.tensor(LENGTHS).unsqueeze(1)
    return x, mask


def _with_garbage(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Huge values (both signs) at the padded positions: any pooling that reads them changes a lot."""
    garbage = torch.where(torch.rand_like(x) > 0.5, 1e4, -1e4)
    return torch.where(mask.unsqueeze(-1), x, garbage)


@pytest.mark.parametrize("name", VECTOR_POOLINGS)
def test_pooling_shape_and_ignores_padding(name, batch):
    x, mask = batch
    pooling = build_pooling(name, hidden_size=8)
    out = pooling(x, mask)
    assert out.shape == (len(LENGTHS), 8)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(pooling(_with_garbage(x, mask), mask), out)
    # each row equals the same row pooled alone, without any padding
    for b, n in enumerate(LENGTHS):
        alone = pooling(x[b : b + 1, :n], torch.ones(1, n, dtype=torch.bool))
        torch.testing.assert_close(out[b], alone[0])


@pytest.mark.parametrize("name", [n for n in VECTOR_POOLINGS if n != "attn"])
def test_pooling_matches_hand_computation(name, batch):
    x, mask = batch
    out = build_pooling(name, hidden_size=8)(x, mask)
    for b, n in enumerate(LENGTHS):
        torch.testing.assert_close(out[b], _reference(name, x[b, :n]))


@pytest.mark.parametrize("name", ["avg", "rms", "abs_avg", "max", "sum", "last"])
def test_mean_type_poolings_differ_from_unmasked(name, batch):
    """The official poolings read padding; ours must not: with garbage padding the unmasked result is far off."""
    x, mask = batch
    pooling = build_pooling(name, hidden_size=8)
    dirty = _with_garbage(x, mask)
    unmasked = pooling(dirty, torch.ones_like(mask))
    masked = pooling(dirty, mask)
    assert not torch.allclose(unmasked[1:], masked[1:], atol=1.0)  # rows 1, 2 are padded
    torch.testing.assert_close(masked, pooling(x, mask))


@pytest.mark.parametrize("mask_dtype", [torch.long, torch.int32, torch.float32])
def test_pooling_accepts_integer_and_float_masks(mask_dtype, batch):
    x, mask = batch
    pooling = build_pooling("avg", hidden_size=8)
    torch.testing.assert_close(pooling(x, mask.to(mask_dtype)), pooling(x, mask))


@pytest.mark.parametrize("name", VECTOR_POOLINGS)
def test_no_mask_means_every_position_is_real(name, batch):
    x, _ = batch
    pooling = build_pooling(name, hidden_size=8)
    torch.testing.assert_close(pooling(x), pooling(x, torch.ones(x.shape[:2], dtype=torch.bool)))


def test_attention_pooling_is_a_masked_softmax_average(batch):
    x, mask = batch
    pooling = AttentionPooling(8)
    torch.nn.init.normal_(pooling.score.weight, std=1.0)
    out = pooling(x, mask)
    for b, n in enumerate(LENGTHS):
        weights = torch.softmax(pooling.score(x[b, :n]).squeeze(-1), dim=0)
        torch.testing.assert_close(out[b], weights @ x[b, :n])
    # the learned scores matter (not a plain mean) and receive gradient
    assert not torch.allclose(out[0], x[0].mean(0), atol=1e-3)
    out.sum().backward()
    assert pooling.score.weight.grad.abs().sum() > 0


def test_attention_pooling_all_padding_row_gives_zeros_not_nan():
    pooling = AttentionPooling(4)
    out = pooling(torch.randn(2, 3, 4), torch.tensor([[1, 1, 0], [0, 0, 0]]))
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros(4))


def test_pass_pooling_keeps_every_token(batch):
    x, mask = batch
    pooling = build_pooling("pass", hidden_size=8)
    assert isinstance(pooling, PassPooling)
    assert pooling(x, mask) is x


def test_only_attn_pooling_has_parameters():
    for name in POOLINGS:
        params = list(build_pooling(name, hidden_size=8).parameters())
        assert bool(params) == (name == "attn"), name


def test_unknown_pooling_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown pooling 'mean'.*avg"):
        build_pooling("mean", hidden_size=8)
