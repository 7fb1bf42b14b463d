"""`GLiClassModule`: supervised training (paper 2.3.1, pre-training stage) of a GLiClass model built outside.

One `model_step` serves train, val and test. Validation runs on the held-out part of the training mix; test runs
zero-shot on the datamodule's evaluation datasets, each with every one of its labels as a candidate, and decides
like the pipeline: argmax over the text's labels for single-label datasets, sigmoid >= threshold for multi-label.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import nn
from torchmetrics import MaxMetric

from gliclass.data.label_groups import ROW_EXAMPLE, reassemble
from gliclass.modeling.architectures import GLiClassOutput
from gliclass.modeling.losses import GLiClassLoss
from gliclass.modeling.segments import gate_log_values
from gliclass.training.distill import Teacher
from gliclass.training.metrics import LabelF1, decide
from gliclass.training.optim import is_encoder_parameter

log = logging.getLogger(__name__)

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "labels_mask", "class_input_ids", "class_attention_mask")


def model_inputs(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The model's tensors from a batch (which also holds `targets` and `label_names`)."""
    return {key: batch[key] for key in MODEL_INPUT_KEYS if batch.get(key) is not None}


def gradients_finite(parameters: Iterable[nn.Parameter]) -> bool:
    """Whether every gradient is finite (parameters without one are ignored); one device sync."""
    checks = [torch.isfinite(p.grad).all() for p in parameters if p.grad is not None]
    return bool(torch.stack(checks).all()) if checks else True


class TooManySkippedBatchesError(RuntimeError):
    """More training batches failed than the configured fraction allows: the run is broken, not unlucky."""


class SkippedBatches:
    """Counts training batches skipped after an out-of-memory error (in forward or backward), a non-finite loss or a
    non-finite gradient (paper 2.3.1).

    The fraction is taken over at least `min_batches` batches, so a burst of failures at the start stops the run
    after `max_fraction * min_batches` skips instead of on the very first one.
    """

    def __init__(self, max_fraction: float, min_batches: int) -> None:
        if not 0 <= max_fraction < 1:
            raise ValueError(f"max_skipped_fraction={max_fraction} must be in [0, 1)")
        self.max_fraction = max_fraction
        self.min_batches = max(1, min_batches)
        self.seen = 0
        self.skipped = 0

    def record(self, failure: str | None, step: int) -> None:
        self.seen += 1
        if failure is not None:
            self._skip(failure, step)

    def record_late_failure(self, failure: str, step: int) -> None:
        """The batch last recorded as a success failed after its forward pass (in backward): count it skipped."""
        if self.seen == 0:
            raise RuntimeError("record_late_failure before any batch was recorded")
        self._skip(failure, step)

    def _skip(self, failure: str, step: int) -> None:
        self.skipped += 1
        log.warning("skipping training batch at step %d: %s (%d skipped so far)", step, failure, self.skipped)
        if self.skipped > self.max_fraction * max(self.seen, self.min_batches):
            raise TooManySkippedBatchesError(
                f"{self.skipped} of {self.seen} training batches were skipped (last: {failure}), more than "
                f"max_skipped_fraction={self.max_fraction} allows over at least {self.min_batches} batches. "
                "Lower the learning rate or the batch size / max_length, or check the data."
            )

    def state_dict(self) -> dict[str, int]:
        return {"seen": self.seen, "skipped": self.skipped}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.seen, self.skipped = state["seen"], state["skipped"]


class GLiClassModule(LightningModule):
    """Supervised GLiClass training: `loss` on every batch, AdamW over encoder / head parameter groups.

    `optimizer` and `scheduler` are partials (Hydra `_partial_: true`); `param_groups(model)` splits the parameters
    (see `gliclass.training.optim.parameter_groups`); `scheduler(optimizer, num_training_steps=...)` is stepped
    every optimiser step.
    """

    # constructor arguments kept out of `hparams` (objects, not plain values); subclasses add their own
    NOT_HYPERPARAMETERS: tuple[str, ...] = ("model", "loss", "optimizer", "param_groups", "scheduler", "distill")

    def __init__(
        self,
        model: nn.Module,
        loss: GLiClassLoss,
        optimizer: Callable[..., torch.optim.Optimizer],
        param_groups: Callable[[nn.Module], Iterable[Any]] | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        threshold: float = 0.5,
        max_skipped_fraction: float = 0.05,
        min_batches: int = 100,
        distill: Teacher | None = None,
        start_decay: float = 0.0,
    ) -> None:
        super().__init__()
        if not start_decay >= 0:
            raise ValueError(f"start_decay={start_decay}: a decay strength must be >= 0 (0: off)")
        # plain values only, so checkpoints load with torch.load(weights_only=True); the logger gets the whole run
        # config from run.py instead
        self.save_hyperparameters(ignore=list(self.NOT_HYPERPARAMETERS), logger=False)
        self.model = model
        self.loss = loss
        self.optimizer_factory = optimizer
        self.param_groups_factory = param_groups
        self.scheduler_factory = scheduler
        # a frozen teacher whose scores the training loss also matches (gliclass.training.distill); a plain
        # attribute, not a submodule: never optimised, saved or exported
        self.distill = distill
        self.train_metrics = LabelF1(macro=False)
        self.val_metrics = LabelF1()
        self.test_metrics = nn.ModuleDict()  # one LabelF1 per evaluation dataset, made in `setup`
        self.val_f1_best = MaxMetric()
        self.val_f1_best.persistent(True)  # a resumed run keeps its best score
        self.skipped = SkippedBatches(max_skipped_fraction, min_batches)
        # training rows whose negative labels were trimmed to fit the length budget (the batch's `rows_trimmed`),
        # summed over processes; checkpointed so a resumed run keeps counting
        self.rows_labels_trimmed = 0
        self._backward_failure: str | None = None  # set by `backward`, consumed by `on_before_optimizer_step`
        self.test_prefix = "test"
        self.eval_datasets: list[tuple[str, bool]] = []  # (name, multi_label) per test dataloader
        # decoupled L2 towards the starting weights of the pretrained encoders (L2-SP): after every optimiser step,
        # w <- w - lr * start_decay * (w - w_start), at each parameter's own learning rate. 0: off
        self.start_decay = start_decay
        self._start_weights: dict[int, torch.Tensor] = {}  # id(param) -> its starting value (not checkpointed)

    # ----------------------------------------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        names: Sequence[str] = getattr(datamodule, "eval_names", [])
        if stage == "test" and not names:
            raise ValueError("testing needs a datamodule with `eval_names` and `eval_multi_label` (GLiClassDataModule)")
        multi_label = datamodule.eval_multi_label if names else {}
        self.eval_datasets = [(name, multi_label[name]) for name in names]
        for name in names:
            if name not in self.test_metrics:
                self.test_metrics[name] = LabelF1()
        if stage == "fit" and self.start_decay > 0 and not self.automatic_optimization:
            raise ValueError(
                f"start_decay={self.start_decay}: the decay towards the start follows Lightning's automatic optimiser "
                f"steps, which {type(self).__name__} does not take (stage=mid's PPO); set optim.start_decay=0"
            )
        if stage == "fit" and self.start_decay > 0 and not self._start_weights:
            # Lightning restores a checkpoint's weights after this hook: a resumed run keeps the anchor of the run it
            # continues (the weights as built, which the seeded build reproduces), not the resumed weights
            self._start_weights = {
                id(param): param.detach().clone()
                for name, param in self.model.named_parameters()
                if param.requires_grad and is_encoder_parameter(name)
            }
            if not self._start_weights:
                raise ValueError("start_decay > 0, but the model has no trainable pretrained-encoder parameter")

    @contextmanager
    def logging_as(self, prefix: str):
        """Log the test stage under another prefix, e.g. the zero-shot score of the untrained model."""
        previous, self.test_prefix = self.test_prefix, prefix
        try:
            yield self
        finally:
            self.test_prefix = previous

    # ----------------------------------------------------------------------------------------------- steps
    def forward(self, **inputs: torch.Tensor) -> GLiClassOutput:
        return self.model(**inputs)

    def model_step(self, batch: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], GLiClassOutput]:
        output = self.model(**model_inputs(batch))
        if ROW_EXAMPLE in batch:  # evaluation rows scored in label groups: one row of logits per text again
            output = reassemble(output, batch)
        return self.loss(output, batch["targets"]), output

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor | None:
        self.count_trimmed_rows(batch)
        terms, output, failure = self._guarded_step(batch)
        # every rank skips together, or DDP would wait forever for the skipping rank's gradients
        skip = self.trainer.strategy.reduce_boolean_decision(failure is not None, all=False)
        if skip and failure is None:
            failure = "a batch failed in another process"
        self.skipped.record(failure, self.global_step)
        if skip:
            return None  # Lightning then skips backward and the optimiser step
        size = len(batch["input_ids"])
        # no sync_dist: the progress bar reads this on rank 0 alone, and a collective there deadlocks DDP
        self.log("train/loss", terms["loss"], on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        self.log_dict(
            {f"train/loss_{name}": value for name, value in terms.items() if name != "loss"},
            on_step=True,
            on_epoch=False,
            batch_size=size,
        )
        preds = decide(output.logits.detach(), output.labels_mask, multi_label=True, threshold=self.hparams.threshold)
        self.train_metrics.update(preds, batch["targets"], output.labels_mask, batch["label_names"])
        return terms["loss"]

    def count_trimmed_rows(self, batch: Mapping[str, Any]) -> None:
        """Add the batch's `rows_trimmed` (summed over processes) to the running count and log it every step."""
        rows = batch.get("rows_trimmed", 0)
        if self.trainer.world_size > 1:  # every rank calls this each step, so the collective cannot deadlock
            rows = self.trainer.strategy.reduce(torch.tensor(float(rows), device=self.device), reduce_op="sum")
        self.rows_labels_trimmed += int(rows)
        self.log("train/rows_labels_trimmed", float(self.rows_labels_trimmed), on_step=True, on_epoch=False)

    def _guarded_step(
        self, batch: Mapping[str, Any]
    ) -> tuple[dict[str, torch.Tensor] | None, GLiClassOutput | None, str | None]:
        """(loss terms, output, None), or (None, None, reason) for the recoverable failures; others propagate.
        With a teacher, its distillation term joins the loss (and is logged as `train/loss_distill`)."""
        try:
            terms, output = self.model_step(batch)
            if self.distill is not None:
                terms = dict(terms, distill=self.distill.loss(output.logits, output.labels_mask, batch))
                terms["loss"] = terms["loss"] + terms["distill"]
        except torch.OutOfMemoryError:
            terms = output = None
        if terms is None:
            # outside the except block: its traceback no longer pins the failed step's tensors
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return None, None, "out of memory"
        if not torch.isfinite(terms["loss"]):
            return None, None, f"non-finite loss ({terms['loss'].item()})"
        return terms, output, None

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Backward of a supervised batch; out of memory there skips the batch like out of memory in forward.

        The gradients it left half-accumulated are dropped before the optimiser step (`on_before_optimizer_step`).
        Only in a single process: under DDP the other ranks already wait in this backward's all-reduce, so the
        error propagates. Manual optimisation (PPO) handles its own backward failures.
        """
        if not self.automatic_optimization or self.trainer.world_size > 1:
            return super().backward(loss, *args, **kwargs)
        try:
            super().backward(loss, *args, **kwargs)
            return
        except torch.OutOfMemoryError:
            pass
        # outside the except block: its traceback no longer pins the failed backward's tensors
        self._backward_failure = "out of memory in backward"
        self.skipped.record_late_failure(self._backward_failure, self.global_step)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip the optimiser step (no gradients: AdamW leaves weights and moments alone) after a backward that ran
        out of memory. With gradient accumulation the whole window is dropped. Non-finite gradients are caught next,
        in `configure_gradient_clipping` (Lightning calls it right after this hook)."""
        if not self.automatic_optimization:
            return
        failure, self._backward_failure = self._backward_failure, None
        if failure is not None:
            optimizer.zero_grad(set_to_none=True)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Skip the optimiser step after a non-finite gradient, then clip as Lightning does.

        The check and norm clipping share one pass over the gradients: the total 2-norm is non-finite exactly when a
        gradient is (or when the norm overflows float, where clipping would zero every gradient anyway). A separate
        `isfinite` over every gradient cost about 1 s per MiniLM step on the 2-core CPU (its embedding gradient
        is dense, 11.7M values). Under fp16 loss scaling the GradScaler handles inf gradients itself (they are not failed
        batches): Lightning's clipping only.
        """
        if not self._checks_gradients():
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:  # the batch was skipped already
            return None
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        # under DDP the gradients are already all-reduced: every rank sees the same norm
        if not torch.isfinite(norm):
            self.skipped.record_late_failure("non-finite gradient", self.global_step)
            optimizer.zero_grad(set_to_none=True)
            return None
        clip = gradient_clip_val if gradient_clip_val is not None else self.trainer.gradient_clip_val
        algorithm = gradient_clip_algorithm or self.trainer.gradient_clip_algorithm or "norm"
        if clip and str(getattr(algorithm, "value", algorithm)).lower() == "norm":
            # what clip_grad_norm_ does after the norm; below the threshold its factor is exactly 1, a no-op pass
            if bool(clip / (norm + 1e-6) < 1.0):
                torch.nn.utils.clip_grads_with_norm_(params, clip, norm)
            return None
        return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _checks_gradients(self) -> bool:
        """False under fp16 loss scaling, whose GradScaler skips steps with inf gradients by design (and lowers its
        scale): those are not failed batches."""
        return getattr(self.trainer.precision_plugin, "scaler", None) is None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # here, not in training_step: a batch whose backward failed is counted after training_step returned
        self.log("train/skipped_batches", float(self.skipped.skipped), on_step=True, on_epoch=False)
        gates = gate_log_values(self.model)  # segment_attention="gated": each layer's gate (none otherwise)
        if gates:
            self.log_dict(gates, on_step=True, on_epoch=False)

    def on_train_epoch_end(self) -> None:
        self.log_dict({f"train/{k}": v for k, v in self.train_metrics.compute().items()})  # synced by compute()
        self.train_metrics.reset()

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        terms, output = self.model_step(batch)
        size = len(batch["targets"])  # texts (a text scored in label groups is several model rows)
        self.log("val/loss", terms["loss"], on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True)
        # the mix mixes single- and multi-label sources; the training objective's decision is the threshold
        preds = decide(output.logits, output.labels_mask, multi_label=True, threshold=self.hparams.threshold)
        self.val_metrics.update(preds, batch["targets"], output.labels_mask, batch["label_names"])

    def on_validation_epoch_end(self) -> None:
        scores = self.val_metrics.compute()
        self.val_metrics.reset()
        self.log_dict({f"val/{k}": v for k, v in scores.items()}, sync_dist=True)
        if self.trainer.sanity_checking:
            return
        self.val_f1_best.update(scores["f1_macro"])
        self.log("val/f1_macro_best", self.val_f1_best.compute(), prog_bar=True, sync_dist=True)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        name, multi_label = self.eval_datasets[dataloader_idx]
        terms, output = self.model_step(batch)
        self.log(
            f"{self.test_prefix}/{name}/loss",
            terms["loss"],
            on_epoch=True,
            add_dataloader_idx=False,
            batch_size=len(batch["targets"]),
            sync_dist=True,
        )
        preds = decide(output.logits, output.labels_mask, multi_label, self.hparams.threshold)
        self.test_metrics[name].update(preds, batch["targets"], output.labels_mask, batch["label_names"])

    def on_test_epoch_end(self) -> None:
        per_dataset = {}
        for name, _ in self.eval_datasets:
            per_dataset[name] = self.test_metrics[name].compute()
            self.test_metrics[name].reset()
        values = {
            f"{self.test_prefix}/{name}/{k}": v for name, scores in per_dataset.items() for k, v in scores.items()
        }
        # the headline number: the unweighted mean over datasets of each score
        for key in next(iter(per_dataset.values()), {}):
            values[f"{self.test_prefix}/{key}"] = torch.stack([s[key] for s in per_dataset.values()]).mean()
        self.log_dict(values, add_dataloader_idx=False, sync_dist=True)

    # ----------------------------------------------------------------------------------------------- state
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skipped_batches"] = self.skipped.state_dict()
        checkpoint["rows_labels_trimmed"] = self.rows_labels_trimmed

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "skipped_batches" in checkpoint:
            self.skipped.load_state_dict(checkpoint["skipped_batches"])
        self.rows_labels_trimmed = int(checkpoint.get("rows_labels_trimmed", 0))  # 0: saved before it was counted

    # ----------------------------------------------------------------------------------------------- optimisation
    def _training_steps(self) -> int:
        total = self.trainer.estimated_stepping_batches
        if total == float("inf"):
            raise ValueError("a learning-rate schedule needs a finite run: set trainer.max_steps or max_epochs")
        return int(total)

    def _optimizer_overrides(self) -> dict[str, Any]:
        """`fused=False` under fp16 loss scaling (trainer.precision=16-mixed): a fused optimiser unscales the
        gradients inside its step, so Lightning refuses to clip them first ("optimizer does not allow for gradient
        clipping"), and every recipe clips (gradient_clip_val, PPO's max_grad_norm). The unfused AdamW makes the same
        update. Elsewhere (32-true, bf16-mixed: no scaler) the configured optimiser is built as it is."""
        fused = getattr(self.optimizer_factory, "keywords", {}).get("fused")
        if fused and not self._checks_gradients():
            log.info("fp16 loss scaling: the optimiser is built with fused=False (Lightning cannot clip a fused one)")
            return {"fused": False}
        return {}

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.start_decay > 0:
            self.decay_to_start(args[2] if len(args) > 2 else kwargs["optimizer"])

    @torch.no_grad()
    def decay_to_start(self, optimizer: torch.optim.Optimizer) -> None:
        """w <- w - lr * start_decay * (w - w_start) for every pretrained-encoder weight that took this step (a
        skipped batch leaves no gradient, and no decay; a step that fp16 loss scaling skips for an inf gradient still
        decays). The step of AdamW's own decay, aimed at the start, not 0."""
        for group in optimizer.param_groups:
            for param in group["params"]:
                start = self._start_weights.get(id(param))
                if start is None or param.grad is None:
                    continue
                if start.device != param.device:  # the snapshot is taken before Lightning moves the model
                    start = self._start_weights[id(param)] = start.to(param.device)
                param.add_(param - start.to(param.dtype), alpha=-group["lr"] * self.start_decay)

    def configure_optimizers(self) -> dict[str, Any]:
        groups = self.model.parameters()
        if self.param_groups_factory is not None:
            groups = self.param_groups_factory(self.model)
        optimizer = self.optimizer_factory(params=groups, **self._optimizer_overrides())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer=optimizer, num_training_steps=self._training_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
