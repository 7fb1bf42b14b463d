"""PPO mid-training (paper 2.3.2, eqs. 25-32): each label slot is a Bernoulli action on the model's sigmoid score.

Per batch: sample actions once, score them with the composite reward, store their log-probs, then make
`num_rl_iters` clipped-ratio updates against those stored log-probs (eq. 26). The advantage is A_ij = R_ij - V(s_i)
with V a small value head on the detached pooled text embedding (its own AdamW), or the batch-mean reward when the
value head is off. L_total = L_PPO + L_value + L_KL + L_entropy (eq. 25). A setting of -1 (any value <= 0, or < 0
for the focal alpha) switches a term off: it is neither computed nor logged, and the frozen reference model is not
even built when the KL term is off.

`PPOObjective` is the pure-torch loss; `PPOModule` is the supervised `GLiClassModule` with a PPO training step
(manual optimisation: two optimisers, several steps per batch). Validation, zero-shot testing, metrics, the
parameter groups and the learning-rate schedule are the supervised module's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import nn

from gliclass.modeling.architectures import GLiClassOutput
from gliclass.modeling.losses import GLiClassLoss
from gliclass.training.metrics import decide
from gliclass.training.module import GLiClassModule, gradients_finite, model_inputs
from gliclass.training.rewards import CompositeReward, RewardResult, known_mask

Tensor = torch.Tensor


@dataclass
class PPOSettings:
    """Paper defaults (2.3.2): clip 0.2, 3 updates per batch, every optional term off (-1), Bernoulli actions."""

    clip_eps: float = 0.2
    num_rl_iters: int = 3
    kl_beta: float = -1.0
    entropy_beta: float = -1.0
    focal_alpha: float = -1.0
    focal_gamma: float = -1.0
    label_smoothing: float = -1.0
    actions: str = "bernoulli"  # or "threshold": a = 1[p >= the module's decision threshold] (eq. 32)

    def __post_init__(self) -> None:
        if self.actions not in ("bernoulli", "threshold"):
            raise ValueError(f"actions={self.actions!r}: choose 'bernoulli' or 'threshold'")
        if self.num_rl_iters < 1:
            raise ValueError(f"num_rl_iters={self.num_rl_iters} must be >= 1")
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"clip_eps={self.clip_eps} must be in (0, 1)")
        if self.label_smoothing >= 1 or self.focal_alpha > 1:
            raise ValueError("label_smoothing must be < 1 and focal_alpha <= 1 (or -1 to disable)")

    @property
    def use_kl(self) -> bool:
        return self.kl_beta > 0

    @property
    def use_entropy(self) -> bool:
        return self.entropy_beta > 0

    @property
    def use_focal(self) -> bool:
        return self.focal_alpha >= 0 or self.focal_gamma > 0

    @property
    def use_smoothing(self) -> bool:
        return self.label_smoothing > 0


def sample_actions(logits: Tensor, mode: str, threshold: float = 0.5) -> Tensor:
    """Eq. 32: a ~ Bernoulli(p) (stochastic) or 1[p >= threshold] (deterministic, as `decide`); float 0/1."""
    probs = torch.sigmoid(logits.detach().float())
    if mode == "bernoulli":
        return torch.bernoulli(probs)
    return (probs >= threshold).float()


def action_log_probs(logits: Tensor, actions: Tensor, smoothing: float = -1.0) -> Tensor:
    """log pi(a | s) per slot from logits (stable log-sigmoids); eq. 31 smooths the actions towards 0.5 first."""
    if smoothing > 0:
        actions = (1 - smoothing) * actions + 0.5 * smoothing
    logits = logits.float()
    return actions * F.logsigmoid(logits) + (1 - actions) * F.logsigmoid(-logits)


def bernoulli_kl(ref_logits: Tensor, logits: Tensor) -> Tensor:
    """Exact per-slot D_KL(pi_ref || pi_theta) between two Bernoullis (eq. 28); exactly 0 where they are equal."""
    ref_logits, logits = ref_logits.float(), logits.float()
    p_ref = torch.sigmoid(ref_logits)
    return p_ref * (F.logsigmoid(ref_logits) - F.logsigmoid(logits)) + (1 - p_ref) * (
        F.logsigmoid(-ref_logits) - F.logsigmoid(-logits)
    )


def bernoulli_entropy(logits: Tensor) -> Tensor:
    """Per-slot entropy H(pi_theta) of a Bernoulli (eq. 29)."""
    logits = logits.float()
    p = torch.sigmoid(logits)
    return -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits))


def clipped_surrogate(logp: Tensor, old_logp: Tensor, advantages: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Per-slot -min(r A, clip(r, 1-eps, 1+eps) A) (eq. 26) and where the ratio left [1-eps, 1+eps]."""
    ratio = torch.exp(logp - old_logp)
    loss = -torch.min(ratio * advantages, ratio.clamp(1 - eps, 1 + eps) * advantages)
    return loss, (ratio - 1).abs() > eps


def focal_weights(probs: Tensor, targets: Tensor, actions: Tensor, known: Tensor, alpha: float, gamma: float) -> Tensor:
    """Eq. 30 weights alpha_ij (p_t)^gamma; p_t is the probability of the true value where it is known, else of the
    taken action. Detached: a weight on the PPO term, not an objective of its own."""
    truth = torch.where(known, torch.nan_to_num(targets, nan=0.0).clamp(0, 1), actions)
    probs = probs.detach()
    weights = torch.ones_like(probs)
    if gamma > 0:
        weights = weights * (probs * truth + (1 - probs) * (1 - truth)) ** gamma
    if alpha >= 0:
        weights = weights * (alpha * truth + (1 - alpha) * (1 - truth))
    return weights


class PPOObjective:
    """The loss terms of eq. 25 for one update; only enabled terms appear in the returned dict."""

    def __init__(self, settings: PPOSettings) -> None:
        self.settings = settings

    def __call__(
        self,
        logits: Tensor,
        actions: Tensor,
        old_logp: Tensor,
        advantages: Tensor,
        active: Tensor,
        targets: Tensor,
        known: Tensor,
        ref_logits: Tensor | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(loss terms, detached monitors). `active` [B, C] marks the slots that receive a policy gradient."""
        s = self.settings
        mask = active.to(torch.float32)
        num_active = mask.sum().clamp(min=1)
        logp = action_log_probs(logits, actions, s.label_smoothing)
        per_slot, clipped = clipped_surrogate(logp, old_logp, advantages, s.clip_eps)
        if s.use_focal:
            per_slot = per_slot * focal_weights(
                torch.sigmoid(logits.float()), targets, actions, known, s.focal_alpha, s.focal_gamma
            )
        # eq. 26: sum over label slots, mean over the N samples of the batch
        terms = {"ppo_loss": (per_slot * mask).sum() / logits.shape[0]}
        monitors = {"clip_frac": (clipped.float() * mask).sum() / num_active}
        if s.use_kl:
            if ref_logits is None:
                raise ValueError("kl_beta > 0 needs the reference policy's logits")
            kl = (bernoulli_kl(ref_logits, logits) * mask).sum() / num_active
            terms["kl_loss"] = s.kl_beta * kl
            monitors["kl"] = kl.detach()
        if s.use_entropy:
            entropy = (bernoulli_entropy(logits) * mask).sum() / num_active
            terms["entropy_loss"] = -s.entropy_beta * entropy  # a bonus: more entropy lowers the minimised loss
            monitors["entropy"] = entropy.detach()
        return terms, monitors


class ValueHead(nn.Module):
    """V(s): a small MLP on the pooled text embedding, detached so the value loss never moves the encoder."""

    def __init__(self, hidden_size: int, inner_size: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(hidden_size, inner_size), nn.GELU(), nn.Linear(inner_size, 1))

    def forward(self, output: GLiClassOutput) -> Tensor:
        state = output.text_embeddings.detach()
        if state.dim() == 3:  # pooling "pass" keeps every token: average the real ones
            mask = output.token_mask
            if mask is None or mask.shape[:2] != state.shape[:2]:
                mask = torch.ones(state.shape[:2], device=state.device)
            weights = mask.to(state.dtype).unsqueeze(-1)
            state = (state * weights).sum(1) / weights.sum(1).clamp(min=1)
        return self.mlp(state.float()).squeeze(-1)


class FrozenPolicy(nn.Module):
    """pi_ref: a frozen copy of the starting model, always in eval mode (no dropout noise in the KL)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.policy = copy.deepcopy(model).requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FrozenPolicy:
        return super().train(False)

    @torch.no_grad()
    def forward(self, **inputs: Tensor) -> Tensor:
        return self.policy(**inputs).logits


def mean_reward(total: Tensor, active: Tensor) -> Tensor:
    """Batch-mean reward: each sample's mean over its active slots, over the samples that have any."""
    per_sample = (total * active).sum(-1) / active.sum(-1).clamp(min=1)
    has_reward = active.any(-1)
    return (per_sample * has_reward).sum() / has_reward.sum().clamp(min=1)


def value_loss(value: Tensor, rewards: Tensor, active: Tensor) -> Tensor:
    """Eq. 27: |V(s) - R|^2 averaged over the active slots (per-label rewards regress V to their mean)."""
    mask = active.to(value.dtype)
    return (((value.unsqueeze(1) - rewards) ** 2) * mask).sum() / mask.sum().clamp(min=1)


class PPOModule(GLiClassModule):
    """Mid-training with PPO (stage=mid). `loss` only scores validation and test batches (val/loss, test/loss).

    `optimizer`, `param_groups` and `scheduler` build the policy optimiser as in supervised training. The unit of
    training progress is the policy update (`num_rl_iters` per batch): `global_step`, the scheduler,
    `trainer.max_steps` (the last batch makes only the updates left, so a run stops at exactly max_steps) and the
    checkpoint interval (`callbacks.model_checkpoint.every_n_train_steps`, with `StepCheckpoint`, which stage=mid
    selects) all count policy updates. The value head has its own AdamW. Gradients are clipped here to
    `max_grad_norm` (Lightning's clipping does not apply to manual optimisation: keep `trainer.gradient_clip_val`
    null). Single-device only, checked when fitting starts (`setup`): under DDP the value head would train apart on
    each process and a batch skipped on one process would hang the others. A batch that fails (out of memory, a
    non-finite loss or gradient) at any of its updates is skipped whole: the updates it made before are rolled back
    (weights, value head, both optimisers, schedule and `global_step`), so `train/skipped_batches` counts batches
    that changed nothing.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: GLiClassLoss,
        optimizer: Callable[..., torch.optim.Optimizer],
        reward: CompositeReward | Mapping[str, Mapping[str, Any]] | None = None,
        ppo: PPOSettings | Mapping[str, Any] | None = None,
        value_model: bool = True,
        value_lr: float = 1e-4,
        value_weight_decay: float = 0.01,
        value_inner_size: int = 256,
        max_grad_norm: float | None = 1.0,
        **supervised: Any,
    ) -> None:
        if supervised.get("distill") is not None:
            raise ValueError("PPOModule does not distil (its loss is the PPO objective): drop module.distill")
        super().__init__(model=model, loss=loss, optimizer=optimizer, **supervised)
        self.settings = ppo if isinstance(ppo, PPOSettings) else PPOSettings(**dict(ppo or {}))
        self.save_hyperparameters(ignore=[*self.NOT_HYPERPARAMETERS, "reward", "ppo"], logger=False)
        self.hparams["ppo"] = asdict(self.settings)  # plain values, so checkpoints load with weights_only=True
        self.automatic_optimization = False  # several policy updates and a second optimiser per batch
        self.reward = reward if isinstance(reward, CompositeReward) else CompositeReward(reward)
        self.objective = PPOObjective(self.settings)
        self.value_lr, self.value_weight_decay = value_lr, value_weight_decay
        self.max_grad_norm = max_grad_norm
        # kept out of the module tree: not trained, not checkpointed (a resumed run rebuilds it from init_from)
        object.__setattr__(self, "reference", FrozenPolicy(model) if self.settings.use_kl else None)
        self.value_head = None
        self.value_optimizer: torch.optim.Optimizer | None = None
        # the batch in progress: policy updates made so far, and the state before its first (`_snapshot`)
        self._applied_updates = 0
        self._before_updates: dict[str, Any] | None = None
        self._value_optimizer_state: dict[str, Any] | None = None
        if value_model:
            self.value_head = ValueHead(model.config.encoder_config.get_text_config().hidden_size, value_inner_size)

    @staticmethod
    def check_trainer(trainer: Trainer) -> None:
        """Raise unless `trainer` suits manual optimisation on a single device: no gradient accumulation, no
        Lightning clipping, one process. run.py calls this before a run's first evaluation, run_stages before a
        chain's first stage, so a mid stage that cannot run fails at the start, not after the stages before it."""
        if trainer.accumulate_grad_batches != 1:
            raise ValueError(
                f"stage=mid (PPO) optimises manually (num_rl_iters policy updates per batch), which Lightning's "
                f"gradient accumulation does not apply to: trainer.accumulate_grad_batches="
                f"{trainer.accumulate_grad_batches} (experiment=paper_base sets 2) must be 1 for this stage. Run it "
                "with trainer.accumulate_grad_batches=1, or raise data.batch_size for larger batches"
            )
        if trainer.gradient_clip_val:
            raise ValueError(
                f"stage=mid (PPO) clips its own gradients (module.max_grad_norm); Lightning's clipping does not apply "
                f"to manual optimisation: set trainer.gradient_clip_val=null (got {trainer.gradient_clip_val})"
            )
        strategy = trainer.strategy
        if not isinstance(strategy, SingleDeviceStrategy) or trainer.world_size > 1:
            raise ValueError(
                f"stage=mid (PPO) trains on a single device, but the trainer uses {type(strategy).__name__} with "
                f"{trainer.world_size} process(es). PPO's training step is not written for DDP: the value head's "
                "updates are not all-reduced (each process would train its own), and a batch skipped on one "
                "process (OOM, non-finite loss) would leave the others waiting in a gradient all-reduce. Use "
                "trainer=gpu or trainer=cpu (trainer.devices=1, no trainer.strategy)."
            )

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.check_trainer(self.trainer)
        super().setup(stage)

    def on_fit_start(self) -> None:
        if self.reference is not None:
            self.reference.to(self.device)

    def _training_steps(self) -> int:
        """Policy updates in the run: num_rl_iters per batch, capped by trainer.max_steps (which counts updates)."""
        updates = super()._training_steps() * self.settings.num_rl_iters
        return updates if self.trainer.max_steps == -1 else min(updates, self.trainer.max_steps)

    def configure_optimizers(self) -> dict[str, Any]:
        """The supervised policy optimiser (and schedule); the value head's AdamW is stepped outside Lightning's
        bookkeeping, so that `global_step` (max_steps, checkpoint intervals) counts policy updates only."""
        self.value_optimizer = None
        if self.value_head is not None:
            self.value_optimizer = torch.optim.AdamW(
                self.value_head.parameters(), lr=self.value_lr, weight_decay=self.value_weight_decay
            )
            if self._value_optimizer_state is not None:
                self.value_optimizer.load_state_dict(self._value_optimizer_state)
        return super().configure_optimizers()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.value_optimizer is not None:
            checkpoint["value_optimizer"] = self.value_optimizer.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._value_optimizer_state = checkpoint.get("value_optimizer")  # applied when configure_optimizers runs

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self.count_trimmed_rows(batch)
        self._applied_updates, self._before_updates = 0, None
        try:
            failure = self._ppo_step(batch)
        except torch.OutOfMemoryError:
            failure = "out of memory"
        if failure is not None:
            # outside the except block: its traceback no longer pins the failed step's tensors
            self.optimizers().zero_grad()
            if self.value_optimizer is not None:
                self.value_optimizer.zero_grad()
            if self._before_updates is not None:  # a skipped batch changes nothing: undo what it changed
                if self._applied_updates:
                    failure += f" (the batch's {self._applied_updates} earlier update(s) rolled back)"
                self._roll_back()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self._before_updates = None
        self.skipped.record(failure, self.global_step)

    def _snapshot(self) -> dict[str, Any]:
        """What a policy update changes: trainable weights, the value head, both optimisers' states and the
        schedule. Taken before a batch's first update (one copy of the trainable weights and optimiser moments), so
        that a batch failing at a later update is skipped whole, as a batch failing at its first is."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        modules = [self.model] + ([self.value_head] if self.value_head is not None else [])
        return {
            "weights": [
                {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}
                for module in modules
            ],
            "optimizer": copy.deepcopy(optimizer.optimizer.state_dict()),
            "scheduler": None if scheduler is None else copy.deepcopy(scheduler.state_dict()),
            "value_optimizer": None
            if self.value_optimizer is None
            else copy.deepcopy(self.value_optimizer.state_dict()),
        }

    def _roll_back(self) -> None:
        """Restore the snapshot of `_snapshot` and take the batch's updates off `global_step` (Lightning counts a
        manual optimisation's steps in its progress tracker), so the schedule, max_steps and checkpoint intervals
        count the updates that were kept."""
        state, count = self._before_updates, self._applied_updates
        modules = [self.model] + ([self.value_head] if self.value_head is not None else [])
        with torch.no_grad():
            for module, weights in zip(modules, state["weights"], strict=True):
                for name, param in module.named_parameters():
                    if name in weights:
                        param.copy_(weights[name])
        self.optimizers().optimizer.load_state_dict(state["optimizer"])
        if state["scheduler"] is not None:
            self.lr_schedulers().load_state_dict(state["scheduler"])
        if state["value_optimizer"] is not None:
            self.value_optimizer.load_state_dict(state["value_optimizer"])
        progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        for tracker in (progress.total, progress.current):
            tracker.completed -= count
            tracker.ready = tracker.completed  # equal between batches (a step that failed was ready, not completed)
        self._applied_updates = 0

    def _updates_left(self) -> int:
        """num_rl_iters, or fewer on the batch that reaches trainer.max_steps (which counts policy updates)."""
        if self.trainer.max_steps < 0:
            return self.settings.num_rl_iters
        return min(self.settings.num_rl_iters, self.trainer.max_steps - self.global_step)  # >= 1: Lightning stops at 0

    def _ppo_step(self, batch: Mapping[str, Any]) -> str | None:
        """Rollout, then num_rl_iters updates (fewer at max_steps); the reason when the batch had to be abandoned."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        inputs = model_inputs(batch)
        output, actions, result, advantages, old_logp, ref_logits = self._rollout(batch, inputs)
        targets = batch["targets"].to(output.logits.dtype)
        known = known_mask(targets, output.labels_mask, batch)
        preds = decide(output.logits.detach(), output.labels_mask, multi_label=True, threshold=self.hparams.threshold)
        self.train_metrics.update(preds, targets.nan_to_num(0).clamp(min=0), known, batch["label_names"])

        logged: dict[str, Tensor] = {}
        updates = self._updates_left()
        for iteration in range(updates):
            if iteration > 0:
                output = self.model(**inputs)
            terms, monitors = self.objective(
                output.logits, actions, old_logp, advantages, result.covered, targets, known, ref_logits
            )
            policy_loss = torch.stack(list(terms.values())).sum()
            if self.value_head is not None:
                terms["value_loss"] = value_loss(self.value_head(output), result.total, result.covered)
            loss = torch.stack(list(terms.values())).sum()  # eq. 25
            if not torch.isfinite(loss):
                return f"non-finite PPO loss ({loss.item()}) at update {iteration + 1}"
            optimizer.zero_grad()
            self.manual_backward(policy_loss)
            if not gradients_finite(self.model.parameters()):
                return f"non-finite policy gradient at update {iteration + 1}"
            if self.max_grad_norm is not None:
                self.clip_gradients(optimizer, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
            if self._before_updates is None:  # the batch's first update: what a later failure rolls back to
                self._before_updates = self._snapshot()
            optimizer.step()
            self._applied_updates += 1
            if scheduler is not None:
                scheduler.step()
            if self.value_optimizer is not None:  # its own graph: the value head reads detached embeddings
                self.value_optimizer.zero_grad()
                terms["value_loss"].backward()
                if self.max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(self.value_head.parameters(), self.max_grad_norm)
                self.value_optimizer.step()
            for name, value in {"loss": loss, **terms, **monitors}.items():
                logged[name] = logged.get(name, 0) + value.detach() / updates

        self._log_rollout(logged, result, advantages, len(actions))
        return None

    def _rollout(
        self, batch: Mapping[str, Any], inputs: Mapping[str, Tensor]
    ) -> tuple[GLiClassOutput, Tensor, RewardResult, Tensor, Tensor, Tensor | None]:
        """Actions, rewards, advantages and old log-probs: fixed for all num_rl_iters updates of this batch."""
        output = self.model(**inputs)
        targets = batch["targets"].to(output.logits.dtype)
        threshold = self.hparams.threshold
        actions = sample_actions(output.logits, self.settings.actions, threshold)
        result = self.reward(actions, torch.sigmoid(output.logits.detach()), targets, output.labels_mask, batch)
        ref_logits = self.reference(**inputs) if self.reference is not None else None
        if self.value_head is not None:
            baseline = self.value_head(output).detach()
        else:
            baseline = mean_reward(result.total, result.covered).expand(len(actions))
        advantages = (result.total - baseline.unsqueeze(1)) * result.covered
        old_logp = action_log_probs(output.logits.detach(), actions, self.settings.label_smoothing)
        return output, actions, result, advantages, old_logp, ref_logits

    def _log_rollout(self, logged: dict[str, Tensor], result: RewardResult, advantages: Tensor, size: int) -> None:
        logged["reward"] = mean_reward(result.total, result.covered)
        logged["advantage_mean"] = advantages.sum() / result.covered.sum().clamp(min=1)
        for name, values in result.components.items():
            covered = result.has_reward[name]
            logged[f"reward/{name}"] = (values * covered).sum() / covered.sum().clamp(min=1)
        self.log("train/loss", logged["loss"], on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        self.log_dict(
            {f"train/{k}": v for k, v in logged.items() if k != "loss"}, on_step=True, on_epoch=False, batch_size=size
        )
