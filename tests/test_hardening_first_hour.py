"""Hardening items reported resolved that were not (issue 23, item 5): init_from overrides, tags in the loggers,
config checks through from_pretrained, inputs an architecture does not read, reserved tokens in training rows,
PPO (rolled-back batches, trimmed-row logging, accumulation checked at the start) and fp16 with a fused AdamW."""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import instantiate
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.plugins import MixedPrecision
from omegaconf import open_dict
from torch.utils.data import DataLoader

from gliclass import GLiClassConfig, GLiClassModel
from gliclass.data.formats import DataFormatError, read_training_file
from gliclass.modeling.losses import GLiClassLoss
from gliclass.training.module import GLiClassModule
from gliclass.training.optim import warmup_schedule
from gliclass.training.ppo import PPOModule
from gliclass.training.stages import check_init_from, init_from_conflicts
from tests.conftest import tiny_model
from tests.test_ppo import Collect, fit, make_module, rule_batch
from tests.test_train_run import CONF, compose_train, run

pytestmark = pytest.mark.usefixtures("single_thread")


class Boom(Exception):
    pass


class BoomAtTest(Callback):
    """Stops a run at its first evaluation (the untrained model's), i.e. right after everything was built."""

    def on_test_start(self, trainer, pl_module) -> None:
        raise Boom("stopped at the first evaluation")


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> Path:
    """The default run's architecture (bi-encoder, mean pooling, dot scorer) on the tiny_bert backbone, exported."""
    root = tmp_path_factory.mktemp("export")
    cfg = compose_train(root, ["backbone=tiny_bert", "data=tiny"])
    model, processor = instantiate(cfg.model)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return root / "model"


# ------------------------------------------------------------------------------------------ init_from overrides
def mid_config(tmp_path, export, *overrides):
    return compose_train(tmp_path, ["stage=mid", f"init_from={export}", "backbone=tiny_bert", "data=tiny", *overrides])


def test_init_from_an_export_refuses_model_overrides_it_would_ignore(tmp_path, tiny_export):
    assert init_from_conflicts(mid_config(tmp_path, tiny_export), CONF) == []  # matching (or default) settings
    cfg = mid_config(tmp_path, tiny_export, "arch=uni", "pooling=attn", "scorer=mlp")
    conflicts = " ".join(init_from_conflicts(cfg, CONF))
    for field in ("architecture_type (arch=...)", "pooling_strategy (pooling=...)", "scorer_type (scorer=...)"):
        assert f"model.config.{field}" in conflicts
    with pytest.raises(ValueError, match="architecture_type.*'uni-encoder' here, 'bi-encoder' in the export"):
        check_init_from(cfg, CONF)
    # a single field set on the command line, and another backbone
    cfg = mid_config(tmp_path, tiny_export, "model.config.normalize_features=false")
    assert init_from_conflicts(cfg, CONF) == ["model.config.normalize_features: False here, True in the export"]
    cfg = mid_config(tmp_path, tiny_export, "backbone=tiny_deberta")
    assert any(
        line.startswith("model.backbone.spec: model_type='deberta-v2'") for line in init_from_conflicts(cfg, CONF)
    )


def test_run_refuses_a_conflicting_init_from_before_building_anything(tmp_path, tiny_export):
    cfg = mid_config(tmp_path, tiny_export, "arch=uni")
    with open_dict(cfg):
        cfg.callbacks = {"boom": {"_target_": f"{__name__}.BoomAtTest"}}
    with pytest.raises(ValueError, match="init_from=.* is an export directory.*architecture_type"):
        run.train(cfg)


# ------------------------------------------------------------------------------------------ tags
def tensorboard_text(log_dir: Path, tag: str) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    events.Reload()
    name = f"{tag}/text_summary"
    if name not in events.Tags()["tensors"]:
        return []
    return [value.decode() for event in events.Tensors(name) for value in event.tensor_proto.string_val]


def test_tags_reach_every_logger_at_the_start_of_a_run(tmp_path):
    cfg = compose_train(tmp_path, ["data=tiny", "backbone=tiny_bert", "tags=[alpha,beta]"])
    with open_dict(cfg):
        cfg.logger.csv = {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": str(tmp_path), "name": "csv"}
        cfg.callbacks = {"boom": {"_target_": f"{__name__}.BoomAtTest"}}
    with pytest.raises(Boom):  # a run that dies at its first evaluation still carries its tags
        run.train(cfg)
    assert tensorboard_text(tmp_path / "tensorboard" / "version_0", "tags") == ["alpha, beta"]
    hparams = yaml.safe_load((tmp_path / "csv" / "version_0" / "hparams.yaml").read_text())
    assert hparams["tags"] == "alpha, beta"


# ------------------------------------------------------------------------------------------ config checks
@pytest.fixture(scope="module")
def bi_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bi")
    model, processor = tiny_model(architecture_type="bi-encoder")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_from_pretrained_keyword_overrides_are_validated(bi_dir):
    with pytest.raises(ValueError, match="squeeze_layers=True is read only by the uni-encoder"):
        GLiClassModel.from_pretrained(bi_dir, squeeze_layers=True)
    with pytest.raises(ValueError, match="extract_text_features=True is read only by the uni-encoder"):
        GLiClassConfig.from_pretrained(bi_dir, extract_text_features=True)
    with pytest.raises(ValueError, match="pooling_strategy='nope' is not supported"):
        GLiClassConfig.from_pretrained(bi_dir, pooling_strategy="nope")
    assert GLiClassConfig.from_pretrained(bi_dir, dropout=0.0).dropout == 0.0  # valid overrides still apply


@pytest.mark.parametrize(
    ("arch", "extra"),
    [("uni-encoder", "class_embeddings"), ("uni-encoder", "class_input_ids"), ("encoder-decoder", "class_embeddings")],
)
def test_inputs_an_architecture_does_not_read_are_refused(arch, extra):
    model, processor = tiny_model(architecture_type=arch)
    batch = processor(["the team won the game"], [["sports", "weather"]])
    model(**batch)  # what it reads is fine
    unread = {"class_embeddings": torch.zeros(1, 2, 32), "class_input_ids": torch.ones(1, 2, 3, dtype=torch.long)}
    batch[extra] = unread[extra]
    with pytest.raises(ValueError, match=f"{arch} does not read {extra}"):
        model(**batch)


# ------------------------------------------------------------------------------------------ reserved tokens
@pytest.mark.parametrize(
    ("field", "row"),
    [
        ("text", {"text": "see <<SEP>> here"}),
        ("prompt", {"prompt": "classify <<LABEL>> this"}),
        ("examples[0].text", {"examples": [{"text": "an <<EXAMPLE>> shot", "labels": ["a"]}]}),
    ],
)
def test_reserved_tokens_in_training_rows_fail_at_load_naming_the_line(tmp_path, field, row):
    path = tmp_path / "train.jsonl"
    good = {"text": "a fine text", "all_labels": ["a", "b"], "true_labels": ["a"]}
    path.write_text(json.dumps(good) + "\n" + json.dumps(good | row) + "\n")
    with pytest.raises(DataFormatError, match=re.escape(f"train.jsonl:2: '{field}' contains the reserved token '<<")):
        read_training_file(path)


# ------------------------------------------------------------------------------------------ PPO
def test_a_ppo_batch_failing_at_a_later_update_is_rolled_back_whole():
    model, processor = tiny_model()
    batch = rule_batch(processor)
    module = make_module(model, scheduler=partial(warmup_schedule, warmup_ratio=0.0))
    objective, calls = module.objective, []

    def fails_at_the_second_update(*args, **kwargs):
        terms, monitors = objective(*args, **kwargs)
        calls.append(None)
        if len(calls) == 2:  # the first batch's second update: its first one was applied already
            terms = {name: value * float("nan") for name, value in terms.items()}
        return terms, monitors

    module.objective = fails_at_the_second_update
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    head = {k: v.clone() for k, v in module.value_head.state_dict().items()}
    after_first: dict = {}

    class AfterFirstBatch(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx == 0:
                optimizer = pl_module.optimizers().optimizer
                after_first.update(
                    step=trainer.global_step,
                    same_weights=all(torch.equal(weights[k], v) for k, v in model.state_dict().items()),
                    same_head=all(torch.equal(head[k], v) for k, v in pl_module.value_head.state_dict().items()),
                    moments=len(optimizer.state),
                    value_moments=len(pl_module.value_optimizer.state),
                    schedule=pl_module.lr_schedulers().last_epoch,
                    skipped=pl_module.skipped.skipped,
                )

    fit(module, batch, 2, [AfterFirstBatch()])
    assert after_first == dict(
        step=0, same_weights=True, same_head=True, moments=0, value_moments=0, schedule=0, skipped=1
    )
    # the next batch trains as a first batch would: all its updates counted
    assert module.trainer.global_step == 3 and module.skipped.skipped == 1
    assert module.lr_schedulers().last_epoch == 3
    assert not all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_ppo_logs_trimmed_rows():
    model, processor = tiny_model()
    batch = rule_batch(processor)
    batch["rows_trimmed"] = 2
    collect = Collect()
    fit(make_module(model), batch, 2, [collect])
    assert collect.history[-1]["train/rows_labels_trimmed"] == 4


def test_ppo_refuses_gradient_accumulation_at_the_start(tmp_path, tiny_export):
    with pytest.raises(ValueError, match="accumulate_grad_batches=2"):
        PPOModule.check_trainer(Trainer(accelerator="cpu", accumulate_grad_batches=2, logger=False))
    # a single mid run: refused before the untrained evaluation (which BoomAtTest would stop)
    cfg = mid_config(tmp_path, tiny_export, "trainer.accumulate_grad_batches=2")
    with open_dict(cfg):
        cfg.callbacks = {"boom": {"_target_": f"{__name__}.BoomAtTest"}}
    with pytest.raises(ValueError, match="accumulate_grad_batches=2"):
        run.train(cfg)
    # a chain: refused before its pre-training stage runs
    cfg = compose_train(tmp_path / "chain", ["experiment=three_stage_tiny", "trainer.accumulate_grad_batches=2"])
    with pytest.raises(ValueError, match="accumulate_grad_batches=2"):
        run.train(cfg)
    assert not (tmp_path / "chain" / "0_pretrain").exists()


# ------------------------------------------------------------------------------------------ fp16
def supervised_fit(plugins=()):
    model, processor = tiny_model()
    texts, labels = ["the team won the game", "bad weather today"], ["sports", "weather"]
    batch = processor.collate(processor.encode_batch(texts, [labels] * 2))
    batch["targets"], batch["label_names"] = torch.eye(2), [labels] * 2
    module = GLiClassModule(model.train(), GLiClassLoss(), optimizer=partial(torch.optim.AdamW, lr=1e-3, fused=True))
    trainer = Trainer(
        accelerator="cpu",
        max_steps=1,
        gradient_clip_val=1.0,  # the recipes clip
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        plugins=list(plugins),
    )
    trainer.fit(module, DataLoader([batch], batch_size=None))
    return trainer


def test_fp16_loss_scaling_builds_an_unfused_adamw_that_can_be_clipped():
    """16-mixed (a GradScaler) with the recipes' fused AdamW and clipping used to stop at the first step with
    Lightning's "does not allow for gradient clipping"; the CPU stands in for the GPU with the same plugin."""
    scaled = supervised_fit([MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))])
    assert scaled.global_step == 1 and scaled.optimizers[0].defaults["fused"] is False
    plain = supervised_fit()  # no loss scaling: the configured optimiser as it is
    assert plain.optimizers[0].defaults["fused"] is True
