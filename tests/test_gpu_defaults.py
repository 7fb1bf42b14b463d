"""Defaults a GPU-cluster user meets (issue 23, item 6): debug presets keep the trainer's accelerator, DataLoader
workers follow SLURM's CPUs, the embed-sim baseline runs on the requested device, a randomly initialised hub
architecture builds offline from a local config + tokenizer directory, and the README states the optimiser's lrs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import hydra_conf_dir
from hydra import compose
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import AutoTokenizer, BertConfig, BertModel

import gliclass  # noqa: F401  (registers the configs' resolvers)
from gliclass.modeling import build_model, resolve_backbone

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FAKE_HUB_NAME = "example-org/no-such-backbone"  # not on the hub: any fetch of it fails


@pytest.fixture(scope="module")
def hydra_conf():
    with hydra_conf_dir():
        yield


def compose_train(overrides: list[str], hydra: bool = False):
    return compose(config_name="train", overrides=overrides, return_hydra_config=hydra)


# --- debug presets ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["fdr", "limit", "overfit", "profiler"])
@pytest.mark.parametrize(("trainer", "accelerator"), [("gpu", "gpu"), ("cpu", "cpu"), ("default", "auto")])
def test_debug_presets_keep_the_trainer_groups_accelerator(hydra_conf, preset, trainer, accelerator):
    cfg = compose_train([f"debug={preset}", f"trainer={trainer}"])
    assert cfg.trainer.accelerator == accelerator
    assert cfg.trainer.devices == 1  # still one process


def test_debug_fdr_on_the_gpu_trainer_keeps_its_precision_and_runs_one_batch(hydra_conf):
    cfg = compose_train(["debug=fdr", "trainer=gpu"])
    assert (cfg.trainer.accelerator, cfg.trainer.precision, cfg.trainer.fast_dev_run) == ("gpu", "bf16-mixed", True)


# --- DataLoader workers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", ["default", "zeroshot", "tiny"])
def test_num_workers_is_zero_outside_slurm(hydra_conf, monkeypatch, data):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert compose_train([f"data={data}"]).data.num_workers == 0
    assert compose_train([f"data={data}", "trainer=gpu"]).data.num_workers == 0


def test_num_workers_follows_the_slurm_launchers_cpus(hydra_conf, monkeypatch):
    cfg = compose_train(["hydra/launcher=submitit_slurm", "trainer=gpu"], hydra=True)
    cpus = cfg.hydra.launcher.cpus_per_task
    # SLURM exports the launcher's cpus_per_task to the job as SLURM_CPUS_PER_TASK; the job resolves the config there
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", str(cpus))
    cfg = compose_train(["trainer=gpu"])
    assert cfg.data.num_workers == cpus - 1  # one CPU stays with the training process
    assert OmegaConf.to_container(cfg.data, resolve=True)["num_workers"] == cpus - 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert compose_train([]).data.num_workers == 0
    # an explicit value wins, and the debug presets keep loading in the main process
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")
    assert compose_train(["data.num_workers=3"]).data.num_workers == 3
    assert compose_train(["debug=fdr"]).data.num_workers == 0


def test_num_workers_names_a_bad_slurm_value(hydra_conf, monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "eight")
    with pytest.raises(Exception, match="SLURM_CPUS_PER_TASK"):
        _ = compose_train([]).data.num_workers


# --- embed-sim on the model's device ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_backbone_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random BERT and the MiniLM tokenizer, saved as a local checkpoint."""
    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_embed_sim_runs_its_encoder_on_the_device_it_is_given(tiny_backbone_dir):
    from gliclass.evaluation.systems import EmbeddingSimilarity

    class Stop(Exception):
        pass

    seen = {}

    def record_inputs(module, args, kwargs):
        seen.update({name: value.device.type for name, value in kwargs.items() if torch.is_tensor(value)})
        raise Stop  # a meta tensor holds no numbers to compute with: the devices are the point

    # "meta" stands in for a GPU on this CPU machine: any device but the CPU shows where the work goes
    system = EmbeddingSimilarity(str(tiny_backbone_dir), device="meta", max_length=32)
    assert system.device == torch.device("meta")
    assert {p.device.type for p in system.encoder.parameters()} == {"meta"}
    system.encoder.register_forward_pre_hook(record_inputs, with_kwargs=True)
    with pytest.raises(Stop):
        system.embed(["a first text", "a second, longer text"])
    assert seen and set(seen.values()) == {"meta"}, seen  # the batch follows the encoder to its device

    cpu = EmbeddingSimilarity(str(tiny_backbone_dir), device=torch.device("cpu"), max_length=32)
    scores = cpu.scores(["good movie", "bad film"], ["positive", "negative"], multi_label=False)
    assert scores.shape == (2, 2) and abs(float(scores.sum()) - 2.0) < 1e-5


def test_embed_sim_metrics_passes_the_device_on(monkeypatch):
    import gliclass.evaluation.systems as systems
    from gliclass.training.utils import embed_sim_metrics

    seen = {}

    class Recorder:
        def __init__(self, path, device="cpu", **kwargs):
            seen["device"] = device

    monkeypatch.setattr(systems, "EmbeddingSimilarity", Recorder)

    class NoData:
        eval_names: list[str] = []

    assert embed_sim_metrics(NoData(), "minilm", device=torch.device("meta")) == {}
    assert seen["device"] == torch.device("meta")


def test_run_py_scores_embed_sim_on_the_trainers_device():
    source = (ROOT / "run.py").read_text()
    call = re.search(r"embed_sim_metrics\(([^)]*\([^)]*\)[^)]*)\)", source)
    assert call is not None and "device=device" in call.group(1)
    assert "device = trainer.strategy.root_device" in source


# --- a random hub architecture, offline ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory) -> Path:
    """Only config.json and the tokenizer files (no weights), as a user would copy them from a machine with the hub."""
    path = tmp_path_factory.mktemp("arch_only")
    tokenizer = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
    BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    assert not list(path.glob("*.safetensors")) and not list(path.glob("*.bin"))
    return path


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("arch", ["uni-encoder", "bi-encoder"])
def test_random_hub_architecture_builds_offline_from_a_local_config_dir(config_dir, offline, arch):
    model, processor = build_model(
        FAKE_HUB_NAME, pretrained=False, config_path=config_dir, architecture_type=arch, max_length=64
    )
    assert model.config.encoder_config.hidden_size == 32 and model.config.encoder_model_name == FAKE_HUB_NAME
    if arch == "bi-encoder":
        assert model.config.label_model_config.hidden_size == 32 and model.config.label_model_name == FAKE_HUB_NAME
    batch = processor(["an offline text"], [["alpha", "beta"]])
    with torch.inference_mode():
        logits = model(**batch).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


def test_hydra_backbone_config_path_reaches_the_builder(hydra_conf, config_dir, offline):
    cfg = compose_train(
        [
            "backbone=deberta_v3_base",
            "model.backbone.pretrained=false",
            f"+model.backbone.config_path={config_dir}",
            "model.max_length=64",
        ]
    )
    model, _ = instantiate(cfg.model)
    # the architecture read from the directory, the hub name kept as the backbone's name
    assert model.config.encoder_config.model_type == "bert" and model.config.encoder_config.hidden_size == 32
    assert model.config.encoder_model_name == "microsoft/deberta-v3-base"


def test_config_path_refuses_pretrained_weights_and_a_dir_without_config(config_dir, tmp_path, offline):
    with pytest.raises(ValueError, match="pretrained=false"):
        build_model(FAKE_HUB_NAME, pretrained=True, config_path=config_dir)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_model(FAKE_HUB_NAME, pretrained=False, config_path=tmp_path)
    with pytest.raises(ValueError, match="dict backbone"):
        build_model({"model_type": "bert", "hidden_size": 32}, config_path=config_dir)


# --- README -------------------------------------------------------------------------------------------------------


def test_readme_states_the_default_learning_rates(hydra_conf):
    cfg = compose_train([])
    readme = (ROOT / "README.md").read_text()
    sentence = re.search(r"The optimiser \(AdamW\) uses encoder lr (\S+) and lr (\S+)\s+for the rest", readme)
    assert sentence is not None, "the README's optimiser sentence moved"
    assert (float(sentence.group(1)), float(sentence.group(2))) == (cfg.optim.encoder_lr, cfg.optim.lr)
