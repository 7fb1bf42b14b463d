"""Keeping more of the backbone (issue 22's options): L2 towards the starting weights (`optim.start_decay`) and
frozen lower layers (`model.freeze_layers`)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import TINY_BACKBONES, hydra_conf_dir, tiny_tokenizer
from hydra import compose
from hydra.utils import instantiate
from test_train_module import ListDataModule, examples, make_module, trainer

from gliclass.modeling import build_model
from gliclass.training.build import freeze_lower_layers, tie_towers
from gliclass.training.optim import is_encoder_parameter, parameter_groups

pytestmark = pytest.mark.usefixtures("single_thread")

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def tiny_bi(backbone: str = "bert", seed: int = 0):
    """A tiny bi-encoder without dropout, so two runs from one seed take identical steps."""
    torch.manual_seed(seed)
    spec = {**TINY_BACKBONES[backbone], **NO_DROPOUT}
    return build_model(
        spec, tokenizer=tiny_tokenizer(), initializer_range=0.3, architecture_type="bi-encoder", dropout=0.0
    )


def fit(model, processor, start_decay: float, epochs: int = 1, ckpt_path=None, save_to=None):
    module = make_module(model, start_decay=start_decay)
    run = trainer(max_epochs=epochs)
    L.seed_everything(0, verbose=False)  # the collator shuffles each row's labels
    run.fit(module, datamodule=ListDataModule(processor, examples(2)), ckpt_path=ckpt_path)  # one step per epoch
    if save_to is not None:
        run.save_checkpoint(save_to)
    return module


def test_start_decay_pulls_the_encoders_back_by_lr_times_strength_per_step():
    (plain, processor), (decayed, _) = tiny_bi(), tiny_bi()
    start = {name: p.detach().clone() for name, p in plain.named_parameters()}
    fit(plain, processor, start_decay=0.0)
    fit(decayed, processor, start_decay=100.0)
    factor = 1 - 1e-3 * 100.0  # make_module's lr (1e-3, no schedule) x the strength
    moved = 0
    for (name, p), q in zip(plain.named_parameters(), decayed.parameters(), strict=True):
        if is_encoder_parameter(name) and not torch.equal(p, start[name]):
            torch.testing.assert_close(q - start[name], factor * (p - start[name]), rtol=1e-4, atol=1e-7)
            moved += 1
        else:  # the head (and encoder weights the step left alone) is not decayed
            torch.testing.assert_close(q, p, rtol=0, atol=0)
    assert moved > 10


def test_a_resumed_run_decays_towards_the_weights_the_run_started_from(tmp_path):
    """Lightning restores a checkpoint after `setup`, where the start is taken: the resumed run keeps the anchor of
    the run it continues, so two epochs in one go equal one epoch, a checkpoint and a resumed second epoch."""
    whole, processor = tiny_bi()
    fit(whole, processor, start_decay=100.0, epochs=2)
    first, _ = tiny_bi()
    fit(first, processor, start_decay=100.0, save_to=tmp_path / "epoch1.ckpt")
    resumed, _ = tiny_bi()  # rebuilt from the seed, as run.py rebuilds the model before it resumes
    fit(resumed, processor, start_decay=100.0, epochs=2, ckpt_path=tmp_path / "epoch1.ckpt")
    for p, q in zip(whole.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7)
    # control: anchoring at the resumed weights would give another second step
    assert any(not torch.equal(p, q) for p, q in zip(whole.parameters(), first.parameters(), strict=True))


def test_bad_start_decay_is_refused(make_tiny):
    model, processor = make_tiny("bert")
    with pytest.raises(ValueError, match="start_decay=-1"):
        make_module(model, start_decay=-1.0)
    module = make_module(model, start_decay=1.0)
    module.automatic_optimization = False  # as PPO (stage=mid) runs
    with pytest.raises(ValueError, match="automatic optimiser steps"):
        trainer(max_steps=1).fit(module, datamodule=ListDataModule(processor, examples(2)))


@pytest.mark.parametrize("backbone", ["bert", "deberta", "modernbert"])
def test_freeze_layers_freezes_embeddings_and_the_lowest_layers_of_every_tower(backbone):
    model, _ = tiny_bi(backbone)
    frozen = freeze_lower_layers(model, 1)
    assert frozen > 0
    for name, param in model.named_parameters():
        if not is_encoder_parameter(name):
            assert param.requires_grad, name  # the head learns
        elif ".embeddings." in name or ".layer.0." in name or ".layers.0." in name:
            assert not param.requires_grad, name
        else:
            assert param.requires_grad, name
    trained = {id(p) for group in parameter_groups(model, encoder_lr=1e-5) for p in group["params"]}
    assert all((id(p) in trained) == p.requires_grad for p in model.parameters())
    assert any(".layer.1." in n or ".layers.1." in n for n, p in model.named_parameters() if p.requires_grad)


def test_freeze_layers_counts_tied_towers_once_and_refuses_bad_values():
    model, _ = tiny_bi()
    tie_towers(model)
    assert freeze_lower_layers(model, 0) == 0
    assert all(p.requires_grad for p in model.parameters())
    once = freeze_lower_layers(model, 2)
    untied, _ = tiny_bi()
    assert freeze_lower_layers(untied, 2) == 2 * once  # two towers
    for bad in (3, -1, 1.5, True):
        with pytest.raises(ValueError, match="freeze_layers"):
            freeze_lower_layers(tiny_bi()[0], bad)


def test_hydra_options_reach_the_model_and_the_module():
    with hydra_conf_dir():
        cfg = compose(
            config_name="train",
            overrides=["backbone=tiny_bert", "model.backbone.spec.num_hidden_layers=3", "model.freeze_layers=2"]
            + ["optim.start_decay=10"],
        )
        default = compose(config_name="train")
    assert default.model.freeze_layers == 0 and default.optim.start_decay == 0.0 and default.module.start_decay == 0.0
    model, _ = instantiate(cfg.model)
    layers = model.model.encoder_model.encoder.layer
    assert not any(p.requires_grad for p in layers[1].parameters())
    assert all(p.requires_grad for p in layers[2].parameters())
    module = instantiate(cfg.module, model=model)
    assert module.start_decay == 10.0
    with hydra_conf_dir():
        mid = compose(config_name="train", overrides=["stage=mid", "init_from=x", "optim.start_decay=5"])
    assert mid.module.start_decay == 5.0  # read by PPO's module, which refuses it at fit start
