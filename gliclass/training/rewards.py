"""Rewards for PPO mid-training (paper 2.3.2: R = sum_i w_i r_i(s, a), per-sample F1 by default).

A reward component scores the sampled actions `a` [B, C] (1 = the label is predicted) of a batch. It returns the
reward, per sample [B] or per label slot [B, C], and `covered` [B, C]: the slots whose actions it depends on. PPO
trains only covered slots, so a label whose truth is unknown (target NaN or < 0, or `known_mask` False in the
batch: the paper's partially annotated, data-sparse case) gets no gradient from the metric rewards.

Components are looked up by name in `REWARD_COMPONENTS`; a config picks them by name with a weight:

    components:
      f1: {weight: 1.0}
      label_count: {weight: 0.05, free: 1}
      human: {type: feedback, path: feedback.jsonl, weight: 0.5}   # `type` defaults to the key
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

Tensor = torch.Tensor


@dataclass
class RewardContext:
    """Everything a component may read: the actions and the batch they were taken on."""

    actions: Tensor  # [B, C] float 0/1
    probs: Tensor  # [B, C] the policy's label probabilities
    targets: Tensor  # [B, C] float; NaN or negative = unknown truth
    labels_mask: Tensor  # [B, C] bool, real label slots
    known: Tensor  # [B, C] bool, real slots with a known target
    batch: Mapping[str, Any]


def known_mask(targets: Tensor, labels_mask: Tensor, batch: Mapping[str, Any] | None = None) -> Tensor:
    """Real label slots whose truth is known: finite, non-negative targets, and `known_mask` where the batch has one."""
    known = labels_mask.bool() & torch.isfinite(targets) & (targets >= 0)
    if batch is not None and batch.get("known_mask") is not None:
        known = known & batch["known_mask"].bool()
    return known


class RewardComponent:
    """Base class: `__call__(ctx) -> (reward [B] or [B, C], covered [B, C] bool)`."""

    def __call__(self, ctx: RewardContext) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


REWARD_COMPONENTS: dict[str, Callable[..., RewardComponent]] = {}


def register_reward(name: str) -> Callable[[type[RewardComponent]], type[RewardComponent]]:
    """Class decorator: make a component available to configs under `name`."""

    def add(cls: type[RewardComponent]) -> type[RewardComponent]:
        if name in REWARD_COMPONENTS:
            raise ValueError(f"reward component {name!r} is already registered")
        REWARD_COMPONENTS[name] = cls
        return cls

    return add


def _counts(actions: Tensor, targets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Soft true positives, false positives and false negatives per sample over `mask` (soft targets allowed)."""
    m = mask.to(actions.dtype)
    t = torch.nan_to_num(targets, nan=0.0).clamp(0, 1)
    return (actions * t * m).sum(-1), (actions * (1 - t) * m).sum(-1), ((1 - actions) * t * m).sum(-1)


def _ratio(num: Tensor, den: Tensor, empty: float) -> Tensor:
    return torch.where(den > 0, num / den.clamp(min=1e-12), torch.full_like(num, empty))


@register_reward("f1")
class F1Reward(RewardComponent):
    """Per-sample F1 over known labels; 1 when there was nothing to find and nothing was predicted."""

    def __call__(self, ctx: RewardContext) -> tuple[Tensor, Tensor]:
        tp, fp, fn = _counts(ctx.actions, ctx.targets, ctx.known)
        return _ratio(2 * tp, 2 * tp + fp + fn, 1.0), ctx.known


@register_reward("precision")
class PrecisionReward(RewardComponent):
    """Per-sample precision over known labels; `zero_division` when nothing known was predicted."""

    def __init__(self, zero_division: float = 1.0) -> None:
        self.zero_division = zero_division

    def __call__(self, ctx: RewardContext) -> tuple[Tensor, Tensor]:
        tp, fp, _ = _counts(ctx.actions, ctx.targets, ctx.known)
        return _ratio(tp, tp + fp, self.zero_division), ctx.known


@register_reward("recall")
class RecallReward(RewardComponent):
    """Per-sample recall over known labels; 1 when the sample has no known positive."""

    def __call__(self, ctx: RewardContext) -> tuple[Tensor, Tensor]:
        tp, _, fn = _counts(ctx.actions, ctx.targets, ctx.known)
        return _ratio(tp, tp + fn, 1.0), ctx.known


@register_reward("accuracy")
class AccuracyReward(RewardComponent):
    """Fraction of known label slots decided correctly (soft targets: expected agreement)."""

    def __call__(self, ctx: RewardContext) -> tuple[Tensor, Tensor]:
        tp, fp, fn = _counts(ctx.actions, ctx.targets, ctx.known)
        n = ctx.known.sum(-1).to(ctx.actions.dtype)
        return _ratio(n - fp - fn, n, 0.0), ctx.known


@register_reward("label_count")
class LabelCountPenalty(RewardComponent):
    """Minus the number of predicted labels beyond `free` ones: a push towards short label sets.

    It depends on every real slot's action, known truth or not, so it covers all of them.
    """

    def __init__(self, free: float = 0.0) -> None:
        self.free = free

    def __call__(self, ctx: RewardContext) -> tuple[Tensor, Tensor]:
        count = (ctx.actions * ctx.labels_mask.to(ctx.actions.dtype)).sum(-1)
        return -(count - self.free).clamp(min=0), ctx.labels_mask.bool()


@register_reward("feedback")
class FeedbackReward(RewardComponent):
    """Rewards read from a JSONL feedback file (human or external judge), keyed by example `id` or `text`.

    Two row forms:
    - `{"id" | "text": ..., "rewards": {label: v}}`: per label; predicting the label earns v, rejecting it earns -v.
    - `{"id" | "text": ..., "reward": s, "labels": [...]}`: a rating s of the label set `labels`; the sample earns
      s * F1(actions, labels), so highly rated sets attract the policy and negatively rated ones repel it.
    The batch must carry `label_names` and `ids` or `texts`; examples without feedback are not covered.
    """

    def __init__(self, path: str | Path) -> None:
        self.by_key: dict[str, dict[str, Any]] = {}
        with open(path) as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                where = f"{path}:{line_no}"
                if "id" not in row and "text" not in row:
                    raise ValueError(f"{where}: a feedback row needs an 'id' or a 'text'")
                if ("rewards" in row) == ("reward" in row):
                    raise ValueError(f"{where}: give exactly one of 'rewards' (per label) or 'reward' (scalar)")
                if "reward" in row and not isinstance(row.get("labels"), list):
                    raise ValueError(f"{where}: a scalar 'reward' needs the 'labels' list it rates")
                for key in ("id", "text"):
                    if key in row:
                        self.by_key[f"{key}:{row[key]}"] = row

    def lookup(self, batch: Mapping[str, Any]) -> list[dict[str, Any] | None]:
        for key, name in (("ids", "id"), ("texts", "text")):
            if batch.get(key) is not None:
                return [self.by_key.get(f"{name}:{value}") for value in batch[key]]
        raise KeyError("the feedback reward needs 'ids' or 'texts' in the batch to find each example's feedback")

    def __call__(self, ctx: RewardContext) -> tuple[Tensor, Tensor]:
        label_names: Sequence[Sequence[str]] = ctx.batch["label_names"]
        reward = torch.zeros_like(ctx.actions)
        covered = torch.zeros_like(ctx.labels_mask, dtype=torch.bool)
        for i, row in enumerate(self.lookup(ctx.batch)):
            if row is None:
                continue
            names = list(label_names[i])
            if "rewards" in row:
                for j, name in enumerate(names):
                    if name in row["rewards"]:
                        reward[i, j] = float(row["rewards"][name]) * (2 * ctx.actions[i, j] - 1)
                        covered[i, j] = True
            else:
                rated = torch.tensor([float(name in row["labels"]) for name in names], dtype=ctx.actions.dtype)
                slots = torch.zeros_like(covered[i])
                slots[: len(names)] = True
                padded = torch.zeros_like(ctx.actions[i])
                padded[: len(names)] = rated.to(padded.device)
                tp, fp, fn = _counts(ctx.actions[i : i + 1], padded[None], slots[None])
                reward[i, slots] = float(row["reward"]) * _ratio(2 * tp, 2 * tp + fp + fn, 1.0)
                covered[i] = slots
        return reward, covered


@dataclass
class RewardResult:
    total: Tensor  # [B, C] weighted sum, per-sample rewards broadcast over label slots
    covered: Tensor  # [B, C] slots some component depends on
    components: dict[str, Tensor]  # name -> [B] unweighted per-sample value (mean over covered slots)
    has_reward: dict[str, Tensor]  # name -> [B] bool, samples the component covers at all


class CompositeReward:
    """R = sum_k w_k r_k, built from `{name: {weight, type?, **kwargs}}` (paper 2.3.2, "reward composition")."""

    def __init__(self, components: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        components = components if components is not None else {"f1": {"weight": 1.0}}
        if not components:
            raise ValueError("the reward has no components; the default is {'f1': {'weight': 1.0}}")
        self.components: dict[str, tuple[float, RewardComponent]] = {}
        for name, spec in components.items():
            spec = dict(spec or {})
            kind = spec.pop("type", name)
            weight = float(spec.pop("weight", 1.0))
            if kind not in REWARD_COMPONENTS:
                raise ValueError(
                    f"unknown reward component {kind!r} (for {name!r}); known: {sorted(REWARD_COMPONENTS)}"
                )
            self.components[name] = (weight, REWARD_COMPONENTS[kind](**spec))

    def __call__(
        self, actions: Tensor, probs: Tensor, targets: Tensor, labels_mask: Tensor, batch: Mapping[str, Any]
    ) -> RewardResult:
        labels_mask = labels_mask.bool()
        ctx = RewardContext(actions, probs, targets, labels_mask, known_mask(targets, labels_mask, batch), batch)
        total = torch.zeros_like(actions)
        covered = torch.zeros_like(labels_mask)
        values, has = {}, {}
        for name, (weight, component) in self.components.items():
            reward, slots = component(ctx)
            slots = slots & labels_mask
            if reward.dim() == 1:
                values[name] = reward
                reward = reward.unsqueeze(1).expand_as(actions)
            else:
                n = slots.sum(-1).clamp(min=1)
                values[name] = (reward * slots).sum(-1) / n
            total = total + weight * reward * labels_mask
            covered = covered | slots
            has[name] = slots.any(-1)
        return RewardResult(total, covered, values, has)
