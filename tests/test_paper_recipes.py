"""The paper recipes (conf/experiment/paper_*.yaml): each model's backbone, architecture and Table 1 LoRA; a training
mix without any paper Table 3 set; the LoRA preset that follows the backbone (a wrong one is an error); the GPU
throughput switches; and a dry run of every recipe's three stages on a tiny backbone of the same family."""

from __future__ import annotations

import copy
import importlib
import logging
import sys
from pathlib import Path

import pytest
import torch
from conftest import hydra_conf_dir
from hydra import compose
from hydra.utils import instantiate
from omegaconf import OmegaConf

from gliclass.data.datamodule import BenchmarkSpec
from gliclass.data.hub import HUB_SOURCES
from gliclass.training.build import apply_throughput_options, build_model_and_processor
from gliclass.training.lora import apply_lora, check_preset_fits_backbone
from gliclass.training.stages import build_model_and_processor_from, chain_configs, stage_config
from tests.conftest import needs_cpp_compiler, tiny_model

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
pytestmark = pytest.mark.usefixtures("single_thread")

# paper Table 3's datasets under every name they go by here or on the hub (Table 4 says enron_spam, banking77)
TABLE_3 = frozenset(
    {
        "cr", "sst2", "sst5", "20_news_groups", "20newsgroups", "spam", "enron_spam", "financial_phrasebank",
        "imdb", "ag_news", "emotion", "cap_sotu", "rotten_tomatoes", "massive", "banking", "banking77", "snips",
    }
)  # fmt: skip
# model -> (backbone, scorer, paper Table 1 LoRA: r, alpha, targets)
DEBERTA_TARGETS = ["query_proj", "key_proj", "value_proj", "dense", "linear_1", "linear_2", "mlp.0", "mlp.2", "mlp.4"]
MODERN_TARGETS = ["Wqkv", "Wo", "Wi", "linear_1", "linear_2"]
PAPER = {
    "paper_edge": ("jhu-clsp/ettin-encoder-32m", "mlp", (1536, 3072, [*MODERN_TARGETS, "mlp.0", "mlp.2", "mlp.4"])),
    "paper_base": ("microsoft/deberta-v3-base", "mlp", (384, 768, DEBERTA_TARGETS)),
    "paper_large": ("microsoft/deberta-v3-large", "mlp", (384, 768, DEBERTA_TARGETS)),
    "paper_modern_base": ("answerdotai/ModernBERT-base", "simple", (512, 1024, MODERN_TARGETS)),
    "paper_modern_large": ("answerdotai/ModernBERT-large", "simple", (768, 1536, MODERN_TARGETS)),
}
# a tiny random backbone of each recipe's family, and the name of its paper LoRA preset in conf/lora/
TINY = {
    "paper_edge": ("tiny_modernbert", "edge"),
    "paper_base": ("tiny_deberta", "deberta"),
    "paper_large": ("tiny_deberta", "deberta"),
    "paper_modern_base": ("tiny_modernbert", "modernbert_base"),
    "paper_modern_large": ("tiny_modernbert", "modernbert_large"),
}


@pytest.fixture(scope="module", autouse=True)
def hydra_conf():
    with hydra_conf_dir():
        yield


def compose_train(overrides: list[str], tmp_path: Path | None = None):
    paths = []
    if tmp_path is not None:
        paths = [f"paths.log_dir={tmp_path}", f"paths.output_dir={tmp_path}", f"paths.export_dir={tmp_path}/model"]
    return compose(config_name="train", overrides=[*overrides, *paths, "extras.print_config=false"])


def stage_configs(cfg):
    """Each stage's config as the chain builds it (without the chain's directories and preset check)."""
    return {name: stage_config(cfg, overrides, CONF) for name, overrides in cfg.stages.items()}


# ------------------------------------------------------------------------------------------------ the recipes
def test_there_is_one_recipe_per_paper_model():
    assert sorted(p.stem for p in (CONF / "experiment").glob("paper_*.yaml")) == sorted(PAPER)


@pytest.mark.parametrize("experiment", sorted(PAPER))
def test_recipe_has_the_papers_backbone_architecture_and_hyperparameters(experiment):
    backbone, scorer, (r, alpha, targets) = PAPER[experiment]
    cfg = compose_train([f"experiment={experiment}"])
    assert cfg.run_name == experiment and cfg.model.backbone.name == backbone
    config = cfg.model.config
    # the drift of issue 25: paper_base composed to a bi-encoder with the CPU recipe's cosine head
    assert config.architecture_type == "uni-encoder"  # paper 2.1
    assert (config.pooling_strategy, config.class_token_pooling, config.scorer_type) == ("first", "first", scorer)
    assert config.normalize_features is False and cfg.model.head_init == "random"
    assert cfg.loss.classification == "focal"  # paper 2.3.1
    assert (cfg.optim.encoder_lr, cfg.optim.lr, cfg.module.param_groups.weight_decay) == (1e-5, 3e-5, 0.01)  # 2.3.2
    assert cfg.model.max_length == 1024 and cfg.data.val_fraction == 0.1  # paper 2.3.1
    checkpoint = cfg.callbacks.model_checkpoint
    assert (checkpoint.every_n_train_steps, checkpoint.save_top_k) == (1000, 3)  # paper 2.3.2
    # CPU-recipe settings the paper does not have
    assert cfg.weight_ensemble_alpha == 1.0 and cfg.eval_embed_sim is False
    assert (cfg.lora.r, cfg.lora.alpha, list(cfg.lora.target_modules)) == (r, alpha, targets)  # paper Table 1
    stages = stage_configs(cfg)
    assert list(stages) == ["pretrain", "mid", "post"]
    for name, stage in stages.items():  # the local mix (data=paper_local) in every stage: no paper Table 3 set
        assert_no_table_3_set(stage.data, f"{experiment} {name}")
    assert stages["mid"].module._target_.endswith("PPOModule") and stages["mid"].module.ppo.clip_eps == 0.2
    post = stages["post"]
    assert post.module._target_.endswith("LoraModule") and post.loss.focal_alpha == 0.7  # Table 1
    assert (post.lora.r, post.lora.alpha) == (r, alpha) and post.model.max_length == 1024
    assert post.data.pattern_examples_per_bucket * 15 == pytest.approx(2000, abs=15)  # paper 2.2: 2,000 texts
    assert post.data.pattern_copies == 2  # paper 2.2: each example duplicated


def test_every_recipe_value_names_its_source():
    """Each paper recipe cites the paper, the official defaults, or says the value is ours."""
    for path in sorted((CONF / "experiment").glob("paper_*.yaml")):
        text = path.read_text()
        assert "[paper" in text or "paper_base.yaml, every value cited there" in text, path.name
    base = (CONF / "experiment" / "paper_base.yaml").read_text()
    for tag in ("[paper 2.1]", "[paper 2.3.1]", "[paper 2.3.2]", "[paper Table 1]", "[official]", "[ours]"):
        assert tag in base, tag


# ------------------------------------------------------------------------------------------------ the training mix
def trained_names(data) -> set[str]:
    names = {BenchmarkSpec.parse(spec, "train").name for spec in data.get("benchmarks") or []}
    names |= {Path(str(spec if isinstance(spec, str) else spec["path"])).stem for spec in data.get("train_files") or []}
    if data.get("nli"):
        names.add("snli")
    return names


def table_3_sets_in(data) -> set[str]:
    return trained_names(data) & TABLE_3


def assert_no_table_3_set(data, where: str) -> None:
    assert trained_names(data), where
    assert not table_3_sets_in(data), f"{where} trains on Table 3 sets {table_3_sets_in(data)}"
    evaluated = {BenchmarkSpec.parse(spec, "test").name for spec in data.eval_datasets}
    assert evaluated and evaluated <= TABLE_3, f"{where} evaluates on {evaluated - TABLE_3}"


def test_the_hub_mix_has_no_table_3_set_in_any_stage():
    cfg = compose_train(["experiment=paper_base", "data=paper_hub"])  # the other recipes share its stages
    for name, stage in stage_configs(cfg).items():
        assert_no_table_3_set(stage.data, f"paper_base data=paper_hub {name}")
        assert all(spec["source"] == "hub" for spec in stage.data.benchmarks), name  # no local spec slips in


def test_the_table_3_check_catches_a_leak():
    data = OmegaConf.create(OmegaConf.to_container(compose_train(["data=paper_local"]).data))
    assert not table_3_sets_in(data)
    data.benchmarks = [*data.benchmarks, "snips:train"]
    assert table_3_sets_in(data) == {"snips"}
    data = OmegaConf.create(OmegaConf.to_container(compose_train(["data=paper_hub"]).data))
    data.benchmarks.append({"name": "banking77", "split": "train", "source": "hub"})
    assert table_3_sets_in(data) == {"banking77"}
    # the default mix before issue 25 (data=full) trained on emotion, banking77 and snips
    assert table_3_sets_in(compose_train(["data=full"]).data) == {"emotion", "banking77", "snips"}


def test_the_hub_mix_reads_every_source_through_the_hub_loaders():
    data = compose_train(["data=paper_hub"]).data
    for spec in [*data.benchmarks, *data.eval_datasets]:
        assert spec["source"] == "hub" and spec["name"] in HUB_SOURCES, spec
    assert [dict(spec) for spec in data.nli] == [{"split": "train", "source": "hub"}]  # SNLI (gliclass.data.nli)
    # every train-only set on the hub is used; the evaluation is the Table 3 sets the hub holds
    train_only = {name for name, source in HUB_SOURCES.items() if source.local_splits == ("train",)}
    assert trained_names(data) - {"snli"} == train_only
    assert {spec["name"] for spec in data.eval_datasets} == set(HUB_SOURCES) & TABLE_3
    # what the paper does not publish (or this project cannot load) is named
    text = (CONF / "data" / "paper_hub.yaml").read_text()
    for missing in ("1.2M", "2,000 synthetic", "GPT-4o", "commonsense_qa", "MultiNLI", "cap_sotu"):
        assert missing in text, missing


# ------------------------------------------------------------------------------------------------ LoRA presets
def test_the_post_stage_takes_the_preset_of_the_backbone():
    cfg = compose_train(["experiment=three_stage", "backbone=deberta_v3_base"])
    post = stage_configs(cfg)["post"]
    # before: lora=minilm was pinned in the post stage whatever the backbone
    assert post.lora.r == 384 and "query_proj" in post.lora.target_modules
    # before: "Could not override 'lora'. No match in the defaults list."
    cfg = compose_train(["experiment=three_stage", "backbone=deberta_v3_base", "lora=deberta_v3_base"])
    assert stage_configs(cfg)["post"].lora.r == 384
    assert compose_train(["stage=post", "backbone=modernbert_large"]).lora.r == 768
    assert compose_train(["stage=post"]).lora.target_modules[0] == "query"  # the offline MiniLM


@pytest.mark.parametrize("backbone", sorted(p.stem for p in (CONF / "backbone").glob("*.yaml") if "t5" not in p.stem))
def test_every_encoder_backbone_has_a_preset_of_its_family(backbone):
    lora = compose_train([f"backbone={backbone}"]).lora
    family = {"deberta": "query_proj", "modernbert": "Wqkv", "ettin": "Wqkv", "minilm": "query", "bert": "query"}
    expected = next(target for key, target in family.items() if key in backbone)
    assert expected in lora.target_modules, (backbone, list(lora.target_modules))


@pytest.mark.parametrize(("backbone", "preset"), [("deberta", "minilm"), ("modernbert", "deberta"), ("bert", "edge")])
def test_a_preset_of_another_family_is_an_error(backbone, preset):
    model, _ = tiny_model(backbone, scorer_type="mlp")
    lora = OmegaConf.to_container(OmegaConf.load(CONF / "lora" / f"{preset}.yaml"))
    # before: with DeBERTa and the MiniLM preset, apply_lora warned and adapted only `dense` and the projectors
    with pytest.raises(ValueError, match="no LoRA target module .* does not fit this backbone"):
        apply_lora(model, r=4, alpha=8, target_modules=lora["target_modules"])


def test_scorer_layers_a_model_lacks_are_only_a_warning(caplog):
    model, _ = tiny_model("modernbert", scorer_type="simple")  # the edge preset names the MLP scorer's layers
    with caplog.at_level(logging.WARNING, logger="gliclass.training.lora"):
        adapted = apply_lora(model, r=4, alpha=8, target_modules=[*MODERN_TARGETS, "mlp.0", "mlp.2", "mlp.4"])
    assert sorted(adapted.peft_config["default"].target_modules) == sorted(MODERN_TARGETS)
    assert "mlp.0" in caplog.text


def test_a_chain_with_a_wrong_preset_stops_before_its_first_stage(tmp_path):
    cfg = compose_train(["experiment=three_stage_tiny", "backbone=tiny_deberta", "lora=minilm"], tmp_path)
    with pytest.raises(ValueError, match=r"stage 'post': no LoRA target module \['query', 'key', 'value'\]"):
        chain_configs(cfg, CONF)
    assert not any(tmp_path.iterdir())  # nothing ran
    cfg = compose_train(["experiment=three_stage_tiny", "backbone=tiny_t5", "arch=encdec"], tmp_path)
    assert "lora" not in cfg  # no preset for T5
    with pytest.raises(ValueError, match="has no LoRA preset"):
        chain_configs(cfg, CONF)
    cfg = compose_train(["experiment=three_stage_tiny", "lora=debreta"], tmp_path)  # a typo: Hydra skips it
    with pytest.raises(ValueError, match=r"lora=<name> names none there .* Presets: deberta, deberta_v3_base"):
        chain_configs(cfg, CONF)


def test_the_lora_module_without_a_preset_says_so():
    from gliclass.training.lora import LoraModule

    with pytest.raises(ValueError, match="LoraModule .* has no LoRA preset"):
        LoraModule(model=tiny_model()[0], lora=None, loss=None, optimizer=None)


def test_the_preset_check_reads_named_backbones_from_their_config(tmp_path):
    from transformers import AutoConfig

    AutoConfig.for_model("deberta-v2", hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
        tmp_path
    )
    deberta = {"name": str(tmp_path), "pretrained": True}
    check_preset_fits_backbone({"target_modules": DEBERTA_TARGETS}, deberta, "post")
    with pytest.raises(ValueError, match="Wqkv"):
        check_preset_fits_backbone({"target_modules": MODERN_TARGETS}, deberta, "post")


# ------------------------------------------------------------------------------------------------ throughput switches
TINY_BERT = {"spec": {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                      "intermediate_size": 64, "max_position_embeddings": 128}, "tokenizer": "minilm"}  # fmt: skip
UNI = {"architecture_type": "uni-encoder", "scorer_type": "mlp"}


def checkpointing(model) -> bool:
    return any(getattr(module, "gradient_checkpointing", False) for module in model.modules())


def loss_and_grads(model, processor):
    batch = processor(["the movie was great fun", "bad food and slow service"], [["good", "bad"], ["food", "price"]])
    model.train()
    torch.manual_seed(0)  # the same dropout masks in both runs
    output = model(**{k: v for k, v in batch.items() if torch.is_tensor(v)})
    loss = output.logits[batch["labels_mask"]].square().mean()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backbone", ["bert", "deberta", "modernbert"])
def test_gradient_checkpointing_recomputes_and_keeps_loss_and_gradients(backbone):
    plain, processor = tiny_model(backbone, scorer_type="mlp")
    checkpointed = copy.deepcopy(plain)
    apply_throughput_options(checkpointed, gradient_checkpointing=True)
    calls = []
    # a linear layer inside the first encoder layer: it runs again when backward recomputes that layer
    layer = next(m for name, m in checkpointed.backbone.named_modules() if name in ("encoder.layer.0", "layers.0"))
    next(m for m in layer.modules() if isinstance(m, torch.nn.Linear)).register_forward_hook(lambda *_: calls.append(1))
    loss, grads = loss_and_grads(plain, processor)
    loss_ckpt, grads_ckpt = loss_and_grads(checkpointed, processor)
    assert len(calls) == 2  # the layer ran again in backward: activations were recomputed, not kept
    assert torch.equal(loss, loss_ckpt) and grads.keys() == grads_ckpt.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_the_switches_are_model_config_options_of_every_stage(tmp_path):
    cfg = compose_train(["backbone=tiny_bert", "model.attn_implementation=eager", "model.gradient_checkpointing=true"])
    model, processor = instantiate(cfg.model)
    assert model.backbone.config._attn_implementation == "eager" and checkpointing(model)
    export = tmp_path / "export"
    model.save_pretrained(export)
    processor.save_pretrained(export)
    # a later stage (init_from an export) applies them too
    loaded, _ = build_model_and_processor_from(str(export), backbone={}, attn_implementation="sdpa")
    assert loaded.backbone.config._attn_implementation == "sdpa" and not checkpointing(loaded)
    loaded, _ = build_model_and_processor_from(str(export), backbone={}, gradient_checkpointing=True)
    assert checkpointing(loaded)
    defaults = compose_train([]).model
    assert (defaults.gradient_checkpointing, defaults.attn_implementation, defaults.compile) == (False, None, False)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attn_implementation_reaches_the_backbone(implementation):
    model, _ = build_model_and_processor(TINY_BERT, UNI, attn_implementation=implementation)
    assert model.backbone.config._attn_implementation == implementation
    bi, _ = build_model_and_processor(TINY_BERT, {"architecture_type": "bi-encoder"}, attn_implementation="eager")
    assert bi.model.label_encoder.config._attn_implementation == "eager"  # both towers


def test_an_attention_kernel_the_backbone_lacks_is_an_error():
    deberta = {**TINY_BERT, "spec": {**TINY_BERT["spec"], "model_type": "deberta-v2"}}
    with pytest.raises(ValueError, match="cannot use it"):
        build_model_and_processor(deberta, UNI, attn_implementation="sdpa")  # DeBERTa-v2/v3: eager only
    with pytest.raises(ValueError, match="choose one of"):
        build_model_and_processor(TINY_BERT, UNI, attn_implementation="fast")


@pytest.mark.slow
@needs_cpp_compiler
def test_compile_switch_compiles_the_model_in_place():
    model, processor = build_model_and_processor(TINY_BERT, UNI, compile=True)
    eager, _ = build_model_and_processor(TINY_BERT, UNI)
    eager.load_state_dict(model.state_dict())  # same parameter names: checkpoints and exports are unchanged
    assert model._compiled_call_impl is not None and eager._compiled_call_impl is None
    batch = processor(["the movie was great fun"], [["good", "bad", "film"]])
    batch = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(**batch).logits, eager.eval()(**batch).logits, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------ dry runs
@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(PAPER))
def test_dry_run_of_every_stage_on_a_tiny_backbone_of_the_same_family(tmp_path, monkeypatch, experiment):
    """The recipe as written (its own stages, Table 1's preset of its family), a tiny backbone, 2 steps a stage."""
    monkeypatch.setenv("PROJECT_ROOT", str(ROOT))
    from tests.test_train_run import run  # run.py, loaded as a module

    backbone, preset = TINY[experiment]
    overrides = [f"experiment={experiment}", f"backbone={backbone}", f"lora={preset}", "data=tiny", "trainer=cpu"]
    cfg = compose_train([*overrides, "trainer.max_steps=2", "logger=csv"], tmp_path)
    metrics = run.train(cfg)
    for stage in ("pretrain", "mid", "post"):
        assert metrics[f"{stage}/perf/train_steps"] == 2, stage
        assert torch.isfinite(torch.tensor(metrics[f"{stage}/test/f1_macro"])), stage
        assert (tmp_path / "model" / stage / "model.safetensors").is_file(), stage
    assert {"mid/train/reward", "mid/train/ppo_loss"} <= set(metrics)


@pytest.mark.slow
def test_the_gpu_smoke_script_runs_on_cpu(tmp_path):
    sys.path.insert(0, str(ROOT))
    smoke = importlib.import_module("scripts.gpu.paper_edge_smoke")
    args = ["--device", "cpu", "--backbone", "tiny_modernbert", "--steps", "2", "--rows", "48", "--workers", "0"]
    report = smoke.main([*args, "--out", str(tmp_path)])
    assert (tmp_path / "paper_edge_smoke.json").is_file()
    assert list(report["stages"]) == ["pretrain", "mid", "post"]
    for stage in report["stages"].values():
        assert stage["optimizer_steps"] == 2 and stage["batches_per_s"] > 0 and stage["peak_memory_gib"] > 0
    agreement = report["bf16_vs_fp32"]
    assert agreement["label_slots"] > 0 and 0.9 <= agreement["decision_agreement"] <= 1.0
    assert agreement["min_grad_cosine"] > 0.9
