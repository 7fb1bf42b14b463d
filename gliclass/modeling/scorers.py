"""Scorers: a pooled text vector [B, D] and label vectors [B, C, D] -> logits [B, C].

Parameter names follow the official checkpoints (`mlp.{0,2,4}`, `proj_text`, `q_proj`, ...), so their weights load.
As in the official package, `mlp` and `hopfield` use a fixed hidden width of 256 (their checkpoints are shaped so);
`scorer_mlp_hidden_size` sizes the `cross-attn` scorer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gliclass.config import GLiClassConfig

MLP_SCORER_HIDDEN = 256


def _mlp(in_features: int, hidden: int, act: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, hidden), act(), nn.Linear(hidden, hidden // 2), act(), nn.Linear(hidden // 2, 1)
    )


class DotScorer(nn.Module):
    """s_bk = t_b . c_bk (paper eq. 1); the temperature / logit scale is applied by the architecture."""

    def forward(
        self,
        text: torch.Tensor,
        labels: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        labels_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return torch.einsum("bd,bcd->bc", text, labels)


class MLPScorer(nn.Module):
    """s_bk = g([t_b; c_bk]) (paper eq. 2)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.mlp = _mlp(hidden_size * 2, MLP_SCORER_HIDDEN, nn.ReLU)

    def forward(
        self,
        text: torch.Tensor,
        labels: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        labels_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        text = text.unsqueeze(1).expand_as(labels)
        return self.mlp(torch.cat([text, labels], dim=-1)).squeeze(-1)


class WeightedDotScorer(nn.Module):
    """MLP over [t; c; t' * c'] with separate text/label projections."""

    def __init__(self, hidden_size: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.proj_text = nn.Linear(hidden_size, hidden_size * 2)
        self.proj_label = nn.Linear(hidden_size, hidden_size * 2)
        self.out_mlp = nn.Sequential(
            nn.Linear(hidden_size * 3, hidden_size * 4), nn.Dropout(dropout), nn.ReLU(), nn.Linear(hidden_size * 4, 1)
        )

    def forward(
        self,
        text: torch.Tensor,
        labels: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        labels_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        text_a, text_b = self.proj_text(text).unsqueeze(1).chunk(2, dim=-1)
        label_a, label_b = self.proj_label(labels).chunk(2, dim=-1)
        features = torch.cat([text_a.expand_as(label_a), label_a, text_b * label_b], dim=-1)
        return self.out_mlp(features).squeeze(-1)


class HopfieldScorer(nn.Module):
    """One Hopfield-style update of the label vectors from the text, then an MLP score."""

    def __init__(self, hidden_size: int, beta: float = 4.0) -> None:
        super().__init__()
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.mlp = _mlp(hidden_size, MLP_SCORER_HIDDEN, nn.ReLU)
        self.beta = beta

    def forward(
        self,
        text: torch.Tensor,
        labels: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        labels_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        query = self.q_proj(labels)  # [B, C, D]
        key = self.k_proj(text)  # [B, D]
        value = self.v_proj(text)
        # softmax over the labels (the official update), one key per text; padded label slots take no share,
        # so a text's scores do not depend on how many label slots its batch pads to
        scores = torch.einsum("bcd,bd->bc", query, key) * self.beta
        if labels_mask is not None:
            scores = scores.masked_fill(~labels_mask.bool(), float("-inf"))
        attn = torch.softmax(scores, dim=1).nan_to_num(0.0)
        labels = labels + attn.unsqueeze(-1) * value.unsqueeze(1)
        return self.mlp(labels).squeeze(-1)


class CrossAttnScorer(nn.Module):
    """Labels attend over the (unpooled) text tokens, then an MLP scores [context; label]."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_hidden_size: int, attn_dropout: float = 0.1) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"cross-attn scorer: hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attn_dropout = attn_dropout
        self.q_norm = nn.LayerNorm(hidden_size)
        self.kv_norm = nn.LayerNorm(hidden_size)
        self.q = nn.Linear(hidden_size, hidden_size)
        self.k = nn.Linear(hidden_size, hidden_size)
        self.v = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size)
        self.score_mlp = _mlp(hidden_size * 2, mlp_hidden_size, nn.GELU)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        return x.view(batch, length, self.num_heads, dim // self.num_heads).transpose(1, 2)

    def forward(
        self,
        text: torch.Tensor,
        labels: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        labels_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if text.dim() != 3:
            raise ValueError("cross-attn scorer needs token states [B, L, D] (pooling_strategy='pass')")
        batch, num_labels, dim = labels.shape
        q = self._heads(self.q(self.q_norm(labels)))
        k = self._heads(self.k(self.kv_norm(text)))
        v = self._heads(self.v(text))
        attn_mask = None if text_mask is None else text_mask.bool()[:, None, None, :]
        dropout = self.attn_dropout if self.training else 0.0
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        context = self.norm(self.out(context.transpose(1, 2).reshape(batch, num_labels, dim)))
        return self.score_mlp(torch.cat([context, labels], dim=-1)).squeeze(-1)


def build_scorer(config: GLiClassConfig) -> nn.Module:
    hidden = config.encoder_config.get_text_config().hidden_size
    kind = config.scorer_type
    if kind == "simple":
        return DotScorer()
    if kind == "mlp":
        return MLPScorer(hidden)
    if kind == "weighted-dot":
        return WeightedDotScorer(hidden)
    if kind == "hopfield":
        return HopfieldScorer(hidden)
    if kind == "cross-attn":
        return CrossAttnScorer(
            hidden, config.scorer_num_heads, config.scorer_mlp_hidden_size, config.scorer_attn_dropout
        )
    raise ValueError(f"unknown scorer_type {kind!r}")
