"""Callbacks: per-step seeding, so a resumed run draws the same random numbers as an unbroken one; checkpoints
every N optimiser steps also when a batch makes several (PPO); a uniform average of the late training weights; the
run's config in every checkpoint (a resumed fit must share it); last.ckpt saved when SLURM preempts the job."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging

from gliclass.training.resume import (
    PREEMPTION,
    RUN_CONFIG_KEY,
    CheckpointConfigMismatch,
    Preempted,
    PreemptionFlag,
    config_differences,
    mismatch_message,
)

log = logging.getLogger(__name__)


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


class DenseWeightAveraging(WeightAveraging):
    """Uniform average of the weights seen over the last part of training (SWA without its learning-rate cycle;
    SWAD, Cha et al. 2021, for robustness on unseen domains). Training ends with the averaged weights in the model.

    The average takes a sample every `every_n_steps` optimiser steps once `start_fraction` of the run's steps are done
    (`trainer.estimated_stepping_batches`, which `max_steps` bounds; a `max_time` stop ends it early with the samples so
    far). Validation runs on the average. Checkpoints hold it as their `state_dict` and the raw weights beside it, so a
    resumed run continues the same average. Only parameters are averaged: buffers (position ids) are not weights.
    """

    def __init__(self, start_fraction: float = 0.5, every_n_steps: int = 10) -> None:
        if not 0.0 <= start_fraction < 1.0:
            raise ValueError(f"start_fraction={start_fraction} must be in [0, 1)")
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} must be >= 1")
        super().__init__(use_buffers=False)
        self.start_fraction = start_fraction
        self.every_n_steps = every_n_steps
        self._first_step: int | None = None
        self._raw_state: dict[str, Any] | None = None
        self._swapped = False  # the average is in the model for this validation

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._trainer = trainer

    def samples(self) -> int:
        """How many weight samples the average holds (0 before `start_fraction`, or outside fit)."""
        return 0 if self._average_model is None else int(self._average_model.n_averaged.item())

    # Before the first sample the averaged copy still holds the weights training started from: validating, saving or
    # ending with it would report or keep the start as if it were the average. Until then the raw weights stand.
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swapped = self.samples() > 0
        if self._swapped:
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._swapped:
            super().on_validation_epoch_end(trainer, pl_module)
        self._swapped = False

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.samples() > 0:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)
            if self._raw_state is not None:  # saved after training ended: the raw weights are the ones kept aside
                checkpoint["current_model_state"] = self._raw_state

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.samples() > 0:
            # the model takes the average; a checkpoint written afterwards still resumes from the raw weights
            self._raw_state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            super().on_train_end(trainer, pl_module)
        else:
            log.warning("weight averaging took no sample before training ended: the model keeps its last weights")

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is None:
            return False
        if self._first_step is None:  # read once training runs (not in setup: it would build the loaders early)
            self._first_step = int(self.start_fraction * self._trainer.estimated_stepping_batches)
        return step_idx >= self._first_step and (step_idx - self._first_step) % self.every_n_steps == 0


class RunConfigRecord(Callback):
    """Writes the run's config (`gliclass.training.resume.run_config`) into every checkpoint, and refuses to resume a
    fit from a checkpoint written with another one, naming the fields that differ. (run.py checks before the fit
    starts, `resolve_ckpt_path`; this also covers checkpoints Lightning finds by itself, such as `ckpt_path=hpc`.)
    A test-only run may load any checkpoint."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[RUN_CONFIG_KEY] = self.config

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(RUN_CONFIG_KEY)
        if saved is None or trainer.state.fn != "fit":
            return
        differences = config_differences(saved, self.config)
        if differences:
            raise CheckpointConfigMismatch(mismatch_message(trainer.ckpt_path, differences))


class SaveOnPreemption(Callback):
    """A preemption or time-limit signal (SIGUSR1, SIGUSR2, SIGTERM; `gliclass.training.resume.PREEMPTION`) stops
    the run at the end of the running training step, with last.ckpt saved at that step; in an evaluation it stops
    at the end of the running batch (there is nothing to save). Stopping raises `Preempted` on every process.

    Under DDP all processes check at the same points and agree (a signal to any one stops them all at the same
    step). With gradient accumulation it waits for the step's last batch (the gradients of a partial step are not
    checkpointed), so at most one step is lost. The checkpoint is the one Lightning's `ModelCheckpoint` would write
    at that batch end (`last.ckpt` beside its others), so `ckpt_path=auto` or `last` resumes it exactly. A trainer
    without a checkpoint callback (checkpointing off, fast_dev_run) stops without saving.

    Lightning (2.6) registers its own SIGTERM handler when each trainer function starts (it ends the run after the
    running batch and its validation, saving nothing, and under DDP its ranks can disagree: Lightning issue #20806)
    and, in a SLURM job, a SIGUSR1 handler that saves an `hpc_ckpt` from inside the handler, mid-step, unless a
    handler exists: this callback installs its handlers before Lightning's (at `setup`, needed in spawned DDP
    processes) and takes SIGTERM back when training or evaluation starts.
    """

    def __init__(self, flag: PreemptionFlag = PREEMPTION) -> None:
        self.flag = flag
        self._step_at_batch_start = 0

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.flag.install()  # a no-op where run.py installed it; spawned DDP processes start without handlers

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.flag.reassert()

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.flag.reassert()

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.flag.reassert()

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        signum = self.flag.agreed(trainer)
        if signum is None or trainer.global_step == self._step_at_batch_start:
            return  # no signal, or the batch only accumulated gradients: stop after the step's last batch
        path = last_checkpoint_path(trainer)
        if path is not None:
            trainer.save_checkpoint(path)
        for logger in trainer.loggers:
            logger.save()
        log.warning("preempted (signal %d): stopping after step %d, saved to %s", signum, trainer.global_step, path)
        raise Preempted(signum, trainer.global_step if path is not None else None)

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any) -> None:
        self._stop_evaluation(trainer)

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any) -> None:
        if trainer.state.fn != "fit":  # inside a fit, the next training step's end saves and stops
            self._stop_evaluation(trainer)

    def _stop_evaluation(self, trainer: Trainer) -> None:
        signum = self.flag.agreed(trainer)
        if signum is not None:
            raise Preempted(signum)


def last_checkpoint_path(trainer: Trainer) -> Path | None:
    """Where the trainer's checkpoint callback keeps last.ckpt (None: the trainer has no checkpoint callback)."""
    callback = trainer.checkpoint_callback
    if callback is None or not getattr(callback, "dirpath", None):
        return None
    return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
