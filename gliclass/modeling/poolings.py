"""Text poolings: [B, L, D] token states + [B, L] mask -> [B, D].

Every pooling reads the attention mask, so a text's vector never depends on the padding its batch adds (the
official mean-type poolings average over padding). "attn" is the paper's attention-weighted pooling.
"""

from __future__ import annotations

import torch
from torch import nn


def _mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return mask.bool()


class Pooling(nn.Module):
    """Base class: subclasses implement `pool(x, mask)` with a boolean mask."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool(x, _mask(x, mask))

    def pool(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class FirstPooling(Pooling):
    def pool(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


class LastPooling(Pooling):
    """The last real token (not the last padded position)."""

    def pool(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device).expand_as(mask)
        last = torch.where(mask, positions, -1).amax(dim=1).clamp(min=0)
        return x[torch.arange(x.shape[0], device=x.device), last]


class SumPooling(Pooling):
    def pool(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (x * mask.unsqueeze(-1).to(x.dtype)).sum(dim=1)


class AvgPooling(Pooling):
    def pool(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).to(x.dtype)
        return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


class AbsAvgPooling(AvgPooling):
    def pool(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return super().pool(x.abs(), mask)


class RMSPooling(AvgPooling):
    def pool(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return super().pool(x.pow(2), mask).sqrt()


class MaxPooling(Pooling):
    def pool(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x.masked_fill(~mask.unsqueeze(-1), torch.finfo(x.dtype).min).amax(dim=1)


class AbsMaxPooling(Pooling):
    def pool(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (x.abs() * mask.unsqueeze(-1).to(x.dtype)).amax(dim=1)


class AttentionPooling(Pooling):
    """Attention-weighted pooling (paper 2.1.4): a learned score per token, softmax over real tokens."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.score = nn.Linear(hidden_size, 1, bias=False)  # a softmax ignores a constant shift

    def pool(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(x).squeeze(-1).float().masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1).nan_to_num(0.0).to(x.dtype)
        return torch.einsum("bl,bld->bd", weights, x)


class PassPooling(Pooling):
    """Keeps every token ([B, L, D]) for scorers that attend over the text (cross-attn)."""

    def pool(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x


_POOLINGS: dict[str, type[Pooling]] = {
    "first": FirstPooling,
    "last": LastPooling,
    "avg": AvgPooling,
    "max": MaxPooling,
    "sum": SumPooling,
    "rms": RMSPooling,
    "abs_max": AbsMaxPooling,
    "abs_avg": AbsAvgPooling,
    "pass": PassPooling,
}


def build_pooling(name: str, hidden_size: int) -> Pooling:
    if name == "attn":
        return AttentionPooling(hidden_size)
    if name not in _POOLINGS:
        raise ValueError(f"unknown pooling {name!r}; choose one of {sorted([*_POOLINGS, 'attn'])}")
    return _POOLINGS[name]()
