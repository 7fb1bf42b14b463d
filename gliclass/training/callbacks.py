"""Callbacks: random-number state in checkpoints, so a resumed run continues exactly like an unbroken one."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer


def rng_states() -> dict[str, Any]:
    """Tensors, ints and tuples only, so checkpoints still load with torch.load(weights_only=True)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RNGStateCheckpoint(Callback):
    """Stores the RNG states in each checkpoint and puts them back just before the first resumed training batch.

    Lightning restores weights, optimiser, scheduler and loop counters but not the generators; without them a
    resumed run draws different dropout masks (and epoch shuffles) from the unbroken run with the same seed.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict["rng"]

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # restored here, after set-up and sanity validation, which may draw numbers the unbroken run never drew
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None
