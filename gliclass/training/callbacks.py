"""Callbacks: per-step seeding, so a resumed run draws the same random numbers as an unbroken one; checkpoints
every N optimiser steps also when a batch makes several (PPO)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


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


class StepCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose `every_n_train_steps` holds when one batch makes several optimiser steps.

    Lightning checks `global_step % every_n_train_steps == 0` at batch ends only, so with PPO's 3 policy updates per
    batch an interval of 1000 saves every 3000 updates. This saves at the end of each batch during which
    `global_step` reached a multiple of the interval instead (the same batches as Lightning's check when a batch
    makes one step). Everything else is `ModelCheckpoint`'s.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._step_at_batch_start = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        every, step = self._every_n_train_steps, trainer.global_step
        passed_inside = every >= 1 and step % every != 0 and step // every > self._step_at_batch_start // every
        if not passed_inside:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)  # Lightning's own check
            return
        # what ModelCheckpoint does at a multiple of the interval (its settings, and so its state key, unchanged)
        if self._should_skip_saving_checkpoint(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        if self.monitor is not None and self.monitor not in candidates:
            self._defer_save_until_validation = True
            return
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)


class ValidateSkippedOnResume(Callback):
    """Runs, when a resumed fit starts, the validation that the checkpoint it resumed from was written before.

    Step checkpoints are written at the end of a training batch, before the validation that follows the batch (at
    the end of an epoch, or every `val_check_interval`). Lightning counts that validation as done when it resumes from
    such a checkpoint, so a run killed between the two never validates that model and `val/*_best` can end differently
    from an unbroken run's. This notes in each checkpoint whether that validation was still to come, and runs it first
    thing when resuming (or at the end of the fit if the checkpoint was the run's last step).
    """

    def __init__(self) -> None:
        self.pending = False

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        loop = trainer.fit_loop.epoch_loop
        batches = loop.batch_progress.total
        # Lightning's own test for a checkpoint written at a training batch's end (its RESTARTED_ON_TRAIN_BATCH_END)
        at_batch_end = (
            trainer.training and batches.ready == batches.started == batches.processed == batches.completed + 1
        )
        checkpoint["validation_pending"] = bool(
            at_batch_end
            and not getattr(loop, "_skip_next_val", False)
            and loop._should_check_val_fx(trainer.fit_loop._data_fetcher)
        )

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        self.pending = bool(checkpoint.get("validation_pending", False))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validate_if_pending(trainer)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validate_if_pending(trainer)  # the fit loop had no step left to run, so no `on_train_start`

    def _validate_if_pending(self, trainer: Trainer) -> None:
        if not self.pending:
            return
        self.pending = False
        loop = trainer.fit_loop.epoch_loop.val_loop
        loop.restarting = False  # a whole pass, as Lightning's training loop runs it (not the rest of a saved one)
        first_loop_iter = trainer._logger_connector._first_loop_iter
        trainer.validating = True
        try:
            loop.run()
        finally:
            trainer.training = True
            trainer._logger_connector._first_loop_iter = first_loop_iter
