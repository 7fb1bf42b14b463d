"""Stage chaining: stage configs compose, init_from (export dir or .ckpt), and pretrain -> mid -> post end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from safetensors.torch import load_file

from gliclass import GLiClassModel
from gliclass.training.stages import build_model_and_processor_from, load_checkpoint_weights, stage_config
from tests.conftest import tiny_model

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def compose_train(tmp_path: Path, overrides: list[str]):
    GlobalHydra.instance().clear()
    paths = [f"paths.log_dir={tmp_path}", f"paths.output_dir={tmp_path}", f"paths.export_dir={tmp_path}/model"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, *paths, "extras.print_config=false"])


def test_stage_configs_pick_their_modules(tmp_path):
    mid = compose_train(tmp_path, ["stage=mid", "reward=f1_count"])
    assert mid.module._target_ == "gliclass.training.ppo.PPOModule"
    assert mid.trainer.gradient_clip_val is None  # manual optimisation clips by itself
    assert mid.module.ppo.clip_eps == 0.2 and mid.module.ppo.num_rl_iters == 3 and mid.module.ppo.kl_beta == -1
    assert set(mid.reward.components) == {"f1", "label_count"}
    assert mid.module.param_groups.encoder_lr == mid.optim.encoder_lr  # the pre-training optimisation, inherited
    post = compose_train(tmp_path, ["stage=post", "lora=deberta"])
    assert post.module._target_ == "gliclass.training.lora.LoraModule"
    assert post.loss.focal_alpha == 0.7 and post.lora.r == 384
    pretrain = compose_train(tmp_path, [])
    assert pretrain.trainer.gradient_clip_val == 1.0 and "init_from" not in pretrain


def test_stage_config_changes_only_what_the_stage_changes(tmp_path):
    cfg = compose_train(tmp_path, ["data=tiny", "backbone=tiny_bert", "trainer.max_steps=3"])
    post = stage_config(cfg, ["stage=post", "data=nli_pattern"], CONF)
    assert post.module._target_ == "gliclass.training.lora.LoraModule"
    assert post.trainer.max_steps == 3 and post.model.backbone.spec.hidden_size == 32  # the run's choices hold
    assert post.data.batch_size == 4 and list(post.data.nli) == ["validation:2000"]  # tiny data plus the NLI stream
    assert post.data.benchmarks == cfg.data.benchmarks


def test_init_from_an_export_dir_and_a_checkpoint(tmp_path):
    model, processor = tiny_model()
    model.save_pretrained(tmp_path / "export")
    processor.save_pretrained(tmp_path / "export")
    loaded, _ = build_model_and_processor_from(str(tmp_path / "export"), backbone={})
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key

    path = tmp_path / "stage.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()} | {"value_head.w": 1}}, path)
    fresh, _ = tiny_model(seed=1)
    load_checkpoint_weights(fresh, path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())
    with pytest.raises(FileNotFoundError):
        build_model_and_processor_from(str(tmp_path / "missing"), backbone={})


@pytest.mark.slow
def test_three_stage_tiny_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("PROJECT_ROOT", str(ROOT))
    from tests.test_train_run import run  # run.py, loaded as a module

    cfg = compose_train(tmp_path, ["experiment=three_stage_tiny"])
    metrics = run.train(cfg)
    for stage in ("pretrain", "mid", "post"):
        assert (tmp_path / "model" / stage / "model.safetensors").is_file()
        assert f"{stage}/test/f1_macro" in metrics
    assert {"mid/train/reward", "mid/train/ppo_loss", "mid/train/value_loss", "mid/train/kl"} <= set(metrics)
    # each stage started from the previous export: the post stage's config says so
    post_dir = tmp_path / "model" / "post"
    keys = load_file(post_dir / "model.safetensors").keys()
    assert all(k.startswith("model.") for k in keys) and not any("lora" in k for k in keys)
    merged = GLiClassModel.from_pretrained(post_dir)
    mid = GLiClassModel.from_pretrained(tmp_path / "model" / "mid")
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, mid.state_dict()[k])]
    # LoRA touched only adapted weights (attention / dense / projector linears), never embeddings or norms
    assert changed and not any("embeddings" in k or "LayerNorm" in k for k in changed)
