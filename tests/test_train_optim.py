"""Optimiser parameter groups (paper: encoder 1e-5, head 3e-5, decay 0.01 except biases and norms) and schedules."""

from __future__ import annotations

import pytest
import torch

from gliclass.training.optim import is_encoder_parameter, parameter_groups, warmup_schedule


def group_of(groups: list[dict], param: torch.nn.Parameter) -> dict:
    (found,) = [g for g in groups if any(p is param for p in g["params"])]
    return found


def test_groups_split_encoder_from_head_and_decay_from_no_decay(make_tiny):
    model, _ = make_tiny("bert", architecture_type="bi-encoder", use_lstm=True)
    groups = parameter_groups(model, encoder_lr=1e-5, weight_decay=0.01)
    assert [g["name"] for g in groups] == ["encoder", "encoder_no_decay", "head", "head_no_decay"]
    params = dict(model.named_parameters())
    assert sum(len(g["params"]) for g in groups) == len(params)
    expectations = {
        "model.encoder_model.encoder.layer.0.attention.self.query.weight": ("encoder", 0.01),
        "model.encoder_model.encoder.layer.0.attention.self.query.bias": ("encoder_no_decay", 0.0),
        "model.encoder_model.embeddings.LayerNorm.weight": ("encoder_no_decay", 0.0),
        "model.label_encoder.embeddings.word_embeddings.weight": ("encoder", 0.01),
        "model.biencoder_projector.linear_1.weight": ("head", 0.01),  # "encoder" in its name, but a head layer
        "model.text_projector.linear_1.bias": ("head_no_decay", 0.0),
        "model.lstm.lstm.weight_ih_l0": ("head", 0.01),
        "model.logit_scale": ("head_no_decay", 0.0),
    }
    for name, (group, decay) in expectations.items():
        found = group_of(groups, params[name])
        assert (found["name"], found["weight_decay"]) == (group, decay), name


def test_optimizer_learning_rates_come_from_groups_and_optimizer(make_tiny):
    model, _ = make_tiny("deberta")
    optimizer = torch.optim.AdamW(parameter_groups(model, encoder_lr=1e-5), lr=3e-5)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"encoder": 1e-5, "encoder_no_decay": 1e-5, "head": 3e-5, "head_no_decay": 3e-5}


def test_frozen_parameters_are_left_out(make_tiny):
    model, _ = make_tiny("bert")
    model.model.encoder_model.requires_grad_(False)
    groups = parameter_groups(model, encoder_lr=1e-5)
    assert [g["name"] for g in groups] == ["head", "head_no_decay"]


def test_encoder_parameter_names():
    assert is_encoder_parameter("model.encoder_model.layer.0.weight")
    assert is_encoder_parameter("base_model.model.model.label_encoder.x.lora_A.default.weight")  # under peft
    assert is_encoder_parameter("model.encoder_decoder_model.shared.weight")
    assert not is_encoder_parameter("model.biencoder_projector.linear_1.weight")
    assert not is_encoder_parameter("model.layer_wise_attention.W1.weight")


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_warmup_then_decay(name):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    asked = []
    scheduler = warmup_schedule(
        optimizer, num_training_steps=lambda: asked.append(1) or 100, name=name, warmup_ratio=0.1
    )
    assert not asked, "the total must not be needed to build the schedule"
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert lrs[99] < 0.05 and all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert "lr_lambdas" not in scheduler.state_dict() or scheduler.state_dict()["lr_lambdas"] == [None]
    with pytest.raises(ValueError, match="warmup_ratio"):
        warmup_schedule(optimizer, 10, warmup_ratio=1.5)
    with pytest.raises(ValueError, match="schedule"):
        warmup_schedule(optimizer, 10, name="exponential")


def test_without_warmup_training_starts_at_the_full_rate():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    warmup_schedule(optimizer, num_training_steps=10, warmup_ratio=0.0)
    assert optimizer.param_groups[0]["lr"] == 1.0
