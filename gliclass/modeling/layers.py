"""Projectors, the optional LSTM and layer-wise squeeze-excitation re-weighting (paper eqs. 3-6)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from transformers.activations import ACT2FN


class FeaturesProjector(nn.Module):
    """in -> hidden -> out two-layer MLP (official key names linear_1 / linear_2)."""

    def __init__(self, in_size: int, hidden_size: int, out_size: int, act: str, dropout: float | None) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_size, hidden_size)
        self.act = ACT2FN[act]
        self.dropout = nn.Dropout(dropout) if dropout is not None else nn.Identity()
        self.linear_2 = nn.Linear(hidden_size, out_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.dropout(self.act(self.linear_1(x))))


class LstmEncoder(nn.Module):
    """A bidirectional LSTM over the real tokens only (packed), padded positions come out as zeros."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(hidden_size, hidden_size // 2, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        output, _ = self.lstm(packed)
        output, _ = pad_packed_sequence(output, batch_first=True, total_length=x.shape[1])
        return output


class LayerwiseAttention(nn.Module):
    """Squeeze-excitation over all K+1 hidden states (embeddings + every layer), paper eqs. 3-6.

    Z averages the squeezed states over real tokens only, so padding does not move the layer weights.
    """

    def __init__(self, num_states: int, hidden_size: int, output_size: int | None = None) -> None:
        super().__init__()
        self.num_states = num_states
        self.squeeze = nn.Linear(hidden_size, 1)
        self.W1 = nn.Linear(num_states, max(num_states // 2, 1))
        self.W2 = nn.Linear(max(num_states // 2, 1), num_states)
        self.output_projection = nn.Linear(hidden_size, output_size or hidden_size)

    def forward(self, hidden_states: tuple[torch.Tensor, ...], mask: torch.Tensor) -> torch.Tensor:
        if len(hidden_states) != self.num_states:
            raise ValueError(
                f"layer-wise attention was built for {self.num_states} hidden states, got {len(hidden_states)}"
            )
        states = torch.stack(hidden_states, dim=1)  # [B, K, L, D]
        weights = mask.to(states.dtype)[:, None, :]  # [B, 1, L]
        z = (self.squeeze(states).squeeze(-1) * weights).sum(-1) / weights.sum(-1).clamp(min=1)  # eq. 3: [B, K]
        s = torch.sigmoid(self.W2(torch.relu(self.W1(z))))  # eq. 4
        mixed = torch.einsum("bk,bkld->bld", s, states)  # eq. 5
        return self.output_projection(mixed)  # eq. 6
