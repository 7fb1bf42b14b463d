"""Optimiser parameter groups and learning-rate schedules (paper 2.3.2, "Layer-specific Optimization")."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

# submodules holding pretrained encoders (text, label, encoder-decoder); everything else is the freshly built head
ENCODER_MODULES = frozenset({"encoder_model", "label_encoder", "encoder_decoder_model"})
# the gates of segment_attention="gated" (gliclass/modeling/segments.py): their own group, never decayed towards 0
GATE_PARAMETERS = frozenset({"segment_gate", "slot_gate"})

# decay factor after warmup, as a function of the progress through the decay phase (0 -> 1)
SCHEDULES: dict[str, Callable[[float], float]] = {
    "linear": lambda progress: 1.0 - progress,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    "constant": lambda progress: 1.0,
}


def is_encoder_parameter(name: str) -> bool:
    """By path segment, so projectors such as `biencoder_projector` stay in the head (a substring test would not)."""
    return not ENCODER_MODULES.isdisjoint(name.split("."))


def no_decay_parameter_names(model: nn.Module) -> set[str]:
    """Biases, normalisation weights (LayerNorm, RMSNorm, T5LayerNorm, ...) and scalars such as the logit scale."""
    names = set()
    for module_name, module in model.named_modules():
        is_norm = "norm" in type(module).__name__.lower()
        for param_name, param in module.named_parameters(recurse=False):
            if is_norm or param_name == "bias" or param.ndim == 0:
                names.add(f"{module_name}.{param_name}" if module_name else param_name)
    return names


def is_gate_parameter(name: str) -> bool:
    """The gated segment attention's gates (`segment_gates.segment_gate`, the fused `slot_gate`)."""
    return name.rsplit(".", 1)[-1] in GATE_PARAMETERS


def parameter_groups(
    model: nn.Module, encoder_lr: float, weight_decay: float = 0.01, gate_lr: float | None = None
) -> list[dict[str, Any]]:
    """Named groups: encoder / head x decay / no decay, and `gates` (the gated segment attention's gates, no weight
    decay, learning rate `gate_lr`; None: the optimiser's). Head groups carry no `lr`, so they take the optimiser's.

    Frozen parameters (e.g. outside LoRA adapters) are left out. Empty groups are dropped.
    """
    if gate_lr is not None and not gate_lr > 0:
        raise ValueError(f"gate_lr={gate_lr}: a learning rate must be > 0 (null: the head's)")
    no_decay = no_decay_parameter_names(model)
    groups: dict[str, dict[str, Any]] = {
        "encoder": {"lr": encoder_lr, "weight_decay": weight_decay},
        "encoder_no_decay": {"lr": encoder_lr, "weight_decay": 0.0},
        "head": {"weight_decay": weight_decay},
        "head_no_decay": {"weight_decay": 0.0},
        "gates": {"weight_decay": 0.0} | ({} if gate_lr is None else {"lr": gate_lr}),
    }
    members: dict[str, list[nn.Parameter]] = {name: [] for name in groups}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if is_gate_parameter(name):
            members["gates"].append(param)
            continue
        group = "encoder" if is_encoder_parameter(name) else "head"
        members[group + ("_no_decay" if name in no_decay else "")].append(param)
    return [{"name": name, "params": members[name], **groups[name]} for name in groups if members[name]]


def warmup_schedule(
    optimizer: torch.optim.Optimizer,
    num_training_steps: int | Callable[[], int],
    name: str = "linear",
    warmup_ratio: float = 0.05,
) -> LambdaLR:
    """Linear warmup over `warmup_ratio` of the optimiser steps, then linear or cosine decay to 0.

    `num_training_steps` may be a function, called at the first step after the initial one. Lightning's
    `trainer.estimated_stepping_batches` must not be read in `configure_optimizers`: it sets up the training data
    before the checkpoint's loop state is restored, and a resumable loader then restarts its epoch.
    """
    if name not in SCHEDULES:
        raise ValueError(f"schedule {name!r}: choose one of {list(SCHEDULES)}")
    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"warmup_ratio={warmup_ratio} must be in [0, 1)")
    total_steps = num_training_steps if callable(num_training_steps) else lambda: num_training_steps

    def factor(step: int) -> float:
        if step == 0:  # the value at step 0 needs no total: 0 with warmup, 1 without
            return 0.0 if warmup_ratio > 0 else 1.0
        total = total_steps()
        warmup = int(warmup_ratio * total)
        if step < warmup:
            return step / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return SCHEDULES[name](progress)

    return LambdaLR(optimizer, factor)  # a closure, so the scheduler's state_dict holds no callable
