"""PPO mid-training: the loss terms of eqs. 25-32 and the LightningModule on a tiny learnable task."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from gliclass.modeling.losses import GLiClassLoss
from gliclass.training.module import model_inputs
from gliclass.training.ppo import (
    PPOModule,
    PPOObjective,
    PPOSettings,
    action_log_probs,
    bernoulli_kl,
    clipped_surrogate,
    sample_actions,
)
from tests.conftest import tiny_model

LABELS = ["sports", "music", "weather", "money"]
TEXTS = [
    "the sports news was good",
    "the music was very good",
    "bad weather for the flight",
    "money in my bank account",
    "sports and music on the day",
    "the weather and the money",
    "we love the new movie",
    "music weather and sports",
]


def rule_batch(processor, texts=TEXTS, labels=LABELS):
    """Batch in the data module's contract; a label is true iff its word occurs in the text."""
    batch = processor.collate(processor.encode_batch(texts, [labels] * len(texts)))
    batch["targets"] = torch.tensor([[float(label in text.split()) for label in labels] for text in texts])
    batch["label_names"] = [list(labels) for _ in texts]
    return batch


def make_module(model, lr=1e-3, **kwargs):
    return PPOModule(model, loss=GLiClassLoss(), optimizer=partial(torch.optim.AdamW, lr=lr), **kwargs)


def objective_inputs(seed=0, shape=(3, 4)):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=gen)
    actions = torch.bernoulli(torch.sigmoid(logits), generator=gen)
    return {
        "logits": logits,
        "actions": actions,
        "old_logp": action_log_probs(logits, actions),
        "advantages": torch.randn(*shape, generator=gen),
        "active": torch.ones(*shape, dtype=torch.bool),
        "targets": (torch.rand(*shape, generator=gen) > 0.5).float(),
        "known": torch.ones(*shape, dtype=torch.bool),
    }


# ------------------------------------------------------------------------------------------ loss terms
def test_kl_is_zero_when_policy_equals_reference():
    logits = torch.randn(5, 7)
    assert torch.equal(bernoulli_kl(logits, logits), torch.zeros(5, 7))
    inputs = objective_inputs()
    _, monitors = PPOObjective(PPOSettings(kl_beta=0.5))(**inputs, ref_logits=inputs["logits"].clone())
    assert monitors["kl"].item() == 0.0
    assert bernoulli_kl(logits, logits + 1).min() > 0


def test_module_reference_matches_starting_policy():
    model, processor = tiny_model()
    module = make_module(model, ppo={"kl_beta": 0.1})
    inputs = model_inputs(rule_batch(processor))
    module.train()  # the reference stays in eval mode whatever the module's mode
    assert not module.reference.training and not any(p.requires_grad for p in module.reference.parameters())
    policy_logits = model.eval()(**inputs).logits
    assert torch.equal(bernoulli_kl(module.reference(**inputs), policy_logits), torch.zeros_like(policy_logits))


def test_clipped_update_has_no_gradient_past_the_bound():
    eps = 0.2
    old_logp = torch.zeros(6)
    # ratios 1.5 and 0.5 lie outside [0.8, 1.2], 1.1 and 0.9 inside; advantages push each away from 1
    ratio = torch.tensor([1.5, 0.5, 1.1, 0.9, 1.5, 0.5])
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 1.0])
    logp = ratio.log().requires_grad_(True)
    loss, clipped = clipped_surrogate(logp, old_logp, advantages, eps)
    loss.sum().backward()
    # beyond 1+eps with A > 0 and below 1-eps with A < 0: the update already went far enough
    assert logp.grad[:2].tolist() == [0.0, 0.0]
    assert (logp.grad[2:4] != 0).all()
    # moving back towards the trust region still gets a gradient (the min picks the unclipped term)
    assert (logp.grad[4:] != 0).all()
    assert clipped.tolist() == [True, True, False, False, True, True]


def test_clip_fraction_counts_active_slots_out_of_bounds():
    inputs = objective_inputs()
    inputs["old_logp"] = inputs["old_logp"] - 1.0  # every ratio is e > 1.2
    inputs["active"][0] = False
    _, monitors = PPOObjective(PPOSettings())(**inputs)
    assert monitors["clip_frac"].item() == 1.0
    _, monitors = PPOObjective(PPOSettings())(**objective_inputs())
    assert monitors["clip_frac"].item() == 0.0  # ratio 1 at the first update


def test_disabled_terms_contribute_exactly_zero():
    inputs = objective_inputs()
    terms, monitors = PPOObjective(PPOSettings())(**inputs, ref_logits=None)
    assert set(terms) == {"ppo_loss"} and set(monitors) == {"clip_frac"}
    for setting in ("kl_beta", "entropy_beta", "focal_alpha", "focal_gamma", "label_smoothing"):
        off, _ = PPOObjective(PPOSettings(**{setting: -1.0}))(**inputs, ref_logits=inputs["logits"] + 1)
        assert torch.equal(off["ppo_loss"], terms["ppo_loss"]) and set(off) == {"ppo_loss"}
        on, _ = PPOObjective(PPOSettings(**{setting: 0.3}))(**inputs, ref_logits=inputs["logits"] + 1)
        assert sum(on.values()).item() != pytest.approx(terms["ppo_loss"].item()), setting


def test_disabled_reference_and_value_model_are_not_built():
    model, _ = tiny_model()
    module = make_module(model, value_model=False)
    assert module.reference is None and module.value_head is None
    module.configure_optimizers()
    assert module.value_optimizer is None
    with_value = make_module(model)
    policy = with_value.configure_optimizers()["optimizer"]
    # policy and value each have their own AdamW, over disjoint parameters
    assert isinstance(with_value.value_optimizer, torch.optim.AdamW) and with_value.value_optimizer is not policy
    value_params = {id(p) for g in with_value.value_optimizer.param_groups for p in g["params"]}
    assert value_params == {id(p) for p in with_value.value_head.parameters()}
    assert not value_params & {id(p) for g in policy.param_groups for p in g["params"]}


def test_label_smoothing_and_actions():
    logits = torch.tensor([[3.0, -3.0]])
    actions = torch.tensor([[1.0, 0.0]])
    sharp, smooth = action_log_probs(logits, actions), action_log_probs(logits, actions, 0.2)
    assert (smooth < sharp).all()  # eq. 31 moves the actions towards 0.5
    assert sample_actions(logits, "threshold").tolist() == [[1.0, 0.0]]
    assert set(sample_actions(torch.zeros(100, 10), "bernoulli").unique().tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="actions="):
        PPOSettings(actions="greedy")


# ------------------------------------------------------------------------------------------ module
class Collect(Callback):
    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.history.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def fit(module, batch, steps, callbacks=()):
    loader = DataLoader([batch] * steps, batch_size=None)
    trainer = Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=list(callbacks),
    )
    trainer.fit(module, loader)
    return trainer


def test_training_step_logs_every_term():
    model, processor = tiny_model()
    module = make_module(
        model,
        ppo={"kl_beta": 0.1, "entropy_beta": 0.01},
        reward={"f1": {"weight": 1.0}, "label_count": {"weight": 0.05}},
    )
    collect = Collect()
    fit(module, rule_batch(processor), 2, [collect])
    # global_step counts policy updates: num_rl_iters per batch (the value head's steps are not counted)
    assert module.trainer.global_step == 2 * PPOSettings().num_rl_iters
    keys = set(collect.history[-1])
    expected = {"ppo_loss", "value_loss", "kl", "kl_loss", "entropy", "entropy_loss", "clip_frac"}
    expected |= {"advantage_mean", "reward", "reward/f1", "reward/label_count", "loss_step", "skipped_batches"}
    assert {f"train/{k}" for k in expected} <= keys
    assert all(math.isfinite(v) for v in collect.history[-1].values())


@pytest.mark.parametrize(
    "ppo",
    [{}, {"kl_beta": 0.1, "entropy_beta": 0.05, "focal_alpha": 0.7, "focal_gamma": 2.0, "label_smoothing": 0.1}],
    ids=["plain", "every-term"],
)
def test_partially_annotated_labels_get_no_gradient(ppo):
    """The loss gradient reaching the logits is exactly zero in an unannotated label's slots, at every update, and
    nonzero in the annotated ones; the update stays finite."""
    model, processor = tiny_model()
    batch = rule_batch(processor)
    batch["targets"][:, 1] = float("nan")  # "music" is never annotated
    batch["targets"][0, 2] = -1.0  # nor is "weather" in the first text (negative = unknown)
    module = make_module(model, value_model=True, ppo=ppo)  # built first: the KL reference copies the plain model
    grads: list[torch.Tensor] = []
    forward = model.forward

    def spy(**inputs):  # records d(loss)/d(logits) of every forward that takes part in an update
        output = forward(**inputs)
        if output.logits.requires_grad:
            output.logits.register_hook(lambda grad: grads.append(grad.detach().clone()))
        return output

    model.forward = spy
    fit(module, batch, 1)
    assert (module.skipped.seen, module.skipped.skipped) == (1, 0)
    assert len(grads) == PPOSettings().num_rl_iters  # one policy backward per update
    unknown = torch.zeros_like(batch["targets"], dtype=torch.bool)
    unknown[:, 1] = unknown[0, 2] = True
    for grad in grads:
        assert torch.isfinite(grad).all()
        assert (grad[unknown] == 0).all(), grad
        assert (grad[~unknown] != 0).sum() >= (~unknown).sum() // 2  # the annotated slots do learn
    del model.forward
    assert torch.isfinite(model.eval()(**model_inputs(batch)).logits).all()


def test_value_head_trains_frozen_encoder_side():
    model, processor = tiny_model()
    module = make_module(model, lr=0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head_before = [p.clone() for p in module.value_head.parameters()]
    fit(module, rule_batch(processor), 2)
    # lr 0 for the policy: only the value head moved (its loss never reaches the encoder)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(head_before, module.value_head.parameters(), strict=True))


def learn(batch, batches, lr, seed=0, model_config=None, **module_kwargs):
    """Train a tiny model with PPO on one fixed batch; (per-batch mean rewards, greedy F1 before, after)."""
    # the official random head: these tests measure PPO's learning signal from a small random start
    model, _ = tiny_model(
        seed=seed, dropout=0.0, initializer_range=0.03, **{"head_init": "random", **(model_config or {})}
    )
    module = make_module(model, lr=lr, **module_kwargs)

    def greedy_f1() -> float:
        with torch.no_grad():
            logits = model(**model_inputs(batch)).logits
        actions = sample_actions(logits, "threshold")
        result = module.reward(actions, torch.sigmoid(logits), batch["targets"], batch["labels_mask"], batch)
        return result.components["f1"].mean().item()

    before = greedy_f1()
    collect = Collect()
    fit(module, batch, batches, [collect])
    return [h["train/reward"] for h in collect.history], before, greedy_f1()


@pytest.mark.parametrize("value_model", [True, False])
def test_mean_reward_rises_on_a_label_rule(value_model):
    # the rule: "sports" and "weather" apply to every text, the other labels to none
    model, processor = tiny_model()
    batch = rule_batch(processor)
    batch["targets"] = torch.tensor([[1.0, 0.0, 1.0, 0.0]]).expand(len(TEXTS), -1).clone()
    rewards, before, after = learn(batch, 100, lr=1e-3, value_model=value_model, value_lr=1e-2)
    early, late = sum(rewards[:5]) / 5, sum(rewards[-10:]) / 10
    assert late > early + 0.25, (early, late)
    assert after > max(before, 0.8), (before, after)  # the greedy (p >= 0.5) policy learned the rule too


@pytest.mark.slow
def test_mean_reward_rises_on_a_word_rule():
    # the rule: a label applies iff its word occurs in the text (needs the text, not just label priors); the KL
    # term keeps the random tiny model from collapsing onto "predict every label" before it reads the text
    _, processor = tiny_model()
    rewards, _, _ = learn(
        rule_batch(processor),
        300,
        lr=1e-3,
        model_config={"pooling_strategy": "avg"},
        value_lr=1e-2,
        ppo={"kl_beta": 0.1},
    )
    early, late = sum(rewards[:50]) / 50, sum(rewards[-50:]) / 50
    assert late > early + 0.15, (early, late)
