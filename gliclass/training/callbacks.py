"""Callbacks: per-step seeding, so a resumed run draws the same random numbers as an unbroken one."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer


class SeedEachStep(Callback):
    """Reseeds Python, NumPy and torch (CPU and CUDA) before every training step from (seed, step, process rank).

    Dropout masks and anything else drawn during a step then depend on the step alone. Restoring RNG states from a
    checkpoint is not enough for that: between the checkpoint and the next step the unbroken run also draws numbers
    (each DataLoader iterator draws a base seed, validation may run) that a resumed run does not draw again.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        step_seed = hash((self.seed, trainer.global_step, trainer.global_rank)) % 2**32
        random.seed(step_seed)
        np.random.seed(step_seed)
        torch.manual_seed(step_seed)  # seeds every CUDA device too
