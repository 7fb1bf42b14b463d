"""run.py end to end on tiny backbones: fast_dev_run of every experiment, a short full run, multirun, resume, DDP."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from lightning.pytorch import Callback
from omegaconf import DictConfig, open_dict

from gliclass import GLiClassModel, GLiClassProcessor

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def load_run_module():
    spec = importlib.util.spec_from_file_location("gliclass_run", ROOT / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = load_run_module()


def compose_train(tmp_path: Path, overrides: list[str]) -> DictConfig:
    """The run config with every output under tmp_path (the compose API has no Hydra run directory)."""
    GlobalHydra.instance().clear()
    paths = [f"paths.log_dir={tmp_path}", f"paths.output_dir={tmp_path}", f"paths.export_dir={tmp_path}/model"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, *paths, "extras.print_config=false"])


def tiny_backbone_for(tmp_path: Path, experiment: str) -> str:
    """Experiments name hub backbones; tests swap in a tiny random one of the same kind."""
    arch = compose_train(tmp_path, [f"experiment={experiment}"]).model.config.architecture_type
    return "backbone=tiny_t5" if arch == "encoder-decoder" else "backbone=tiny_deberta"


@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_fast_dev_run(tmp_path, experiment):
    overrides = ["debug=fdr", "data=tiny", "backbone=tiny_deberta"]
    if experiment is not None:
        overrides = [f"experiment={experiment}", *overrides[:2], tiny_backbone_for(tmp_path, experiment)]
    metrics = run.train(compose_train(tmp_path, overrides))
    assert torch.isfinite(torch.tensor(metrics["train/loss_epoch"]))
    assert {"val/f1_macro_best", "test/f1_macro", "test/sst2/f1_macro"} <= set(metrics)


def test_short_run_logs_checkpoints_and_exports(tmp_path):
    cfg = compose_train(
        tmp_path,
        [
            "data=tiny",
            "backbone=tiny_bert",
            "trainer.max_steps=4",
            "callbacks.model_checkpoint.every_n_train_steps=2",
            "trainer.log_every_n_steps=1",
        ],
    )
    metrics = run.train(cfg)
    # the untrained model was scored the same way, before training
    assert {"zeroshot_untrained/sst2/f1_macro", "test/sst2/f1_macro", "test/go_emotions/f1_macro"} <= set(metrics)
    assert metrics["train/skipped_batches"] == 0
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    # finetuned.ckpt: the weights before weight-space ensembling (the export holds the ensembled ones)
    assert checkpoints == ["finetuned.ckpt", "last.ckpt", "step_0000002.ckpt", "step_0000004.ckpt"]
    events = list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and (tmp_path / "tensorboard" / "version_0" / "hparams.yaml").is_file()

    model = GLiClassModel.from_pretrained(tmp_path / "model").eval()
    processor = GLiClassProcessor.from_pretrained(tmp_path / "model")
    batch = processor(["what a lovely film"], [["positive", "negative"]])
    assert model(**batch).logits.shape == (1, 2)


def run_py(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_ablation_multirun_writes_one_directory_per_job(tmp_path):
    result = run_py(
        "-m",
        "arch=uni,bi,fused",
        "pooling=first,mean,attn",
        "backbone=tiny_deberta",
        "data=tiny",
        "++trainer.fast_dev_run=true",
        "eval_untrained=false",
        "test=false",
        "export=false",
        "logger=csv",
        f"paths.log_dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    sweep = tmp_path / "train" / "multiruns" / "default"
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [job.name for job in jobs] == [str(n) for n in range(9)]
    ran = {tuple(yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())[:2]) for job in jobs}
    assert ran == {(f"arch={a}", f"pooling={p}") for a in ("uni", "bi", "fused") for p in ("first", "mean", "attn")}
    assert all((job / "csv").is_dir() for job in jobs), "every job logs into its own directory"


class Killed(Exception):
    pass


class KillAtStep(Callback):
    """Dies at the start of a step, after the previous step's checkpoint was written: a preempted job."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise Killed(f"killed at step {self.step}")


def resumable_run(tmp_path: Path, overrides: list[str], kill_at: int | None = None):
    # the real GLiClassDataModule: its training loader checkpoints its position (gliclass/data/resumable.py)
    # head_init=random: with the identity head, the kill at step 8 (the end of epoch 1) exposes a gap left open here:
    # the step-8 checkpoint is written before epoch 1's validation, which the resumed run then skips, so
    # val/f1_macro_best misses that epoch when it was the best (it was not, with the random head)
    cfg = compose_train(
        tmp_path,
        ["backbone=tiny_bert", "data=tiny", "eval_untrained=false", "logger=csv", "model.head_init=random", *overrides],
    )
    with open_dict(cfg):
        cfg.callbacks.model_checkpoint.every_n_train_steps = 1
        if kill_at is not None:
            cfg.callbacks.kill = {"_target_": f"{__name__}.KillAtStep", "step": kill_at}
    return run.train(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [5, 8, 11])  # mid-epoch, at the end of epoch 1, mid-epoch after a resumed epoch
def test_a_resumed_run_ends_like_an_unbroken_one(tmp_path, kill_at):
    steps = ["trainer.max_epochs=2"]  # data=tiny: 30 training rows, batch 4: 8 batches per epoch, 16 steps
    unbroken = resumable_run(tmp_path / "unbroken", steps)
    with pytest.raises(Killed):
        resumable_run(tmp_path / "resumed", steps, kill_at=kill_at)
    resumed = resumable_run(tmp_path / "resumed", [*steps, "ckpt_path=last"])
    # (epoch means of training logs are not checkpointed: after a mid-epoch resume they cover the resumed part)
    for key in ("val/f1_macro", "val/loss", "val/f1_macro_best", "test/f1_macro", "test/sst2/loss"):
        assert resumed[key] == pytest.approx(unbroken[key], abs=1e-6), key
    unbroken_weights = GLiClassModel.from_pretrained(tmp_path / "unbroken" / "model").state_dict()
    resumed_weights = GLiClassModel.from_pretrained(tmp_path / "resumed" / "model").state_dict()
    for name, tensor in unbroken_weights.items():
        torch.testing.assert_close(resumed_weights[name], tensor, rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_resuming_without_a_checkpoint_starts_fresh(tmp_path):
    metrics = run.train(compose_train(tmp_path, ["debug=fdr", "data=tiny", "backbone=tiny_bert", "ckpt_path=last"]))
    assert "test/f1_macro" in metrics


@pytest.mark.slow
def test_simulated_ddp_on_two_cpu_processes(tmp_path):
    cfg = compose_train(
        tmp_path,
        ["trainer=ddp_sim", "data=tiny", "backbone=tiny_bert", "eval_untrained=false"],
    )
    metrics = run.train(cfg)
    assert {"val/f1_macro", "test/f1_macro"} <= set(metrics)
    assert (tmp_path / "model" / "config.json").is_file()


@pytest.mark.slow
def test_optuna_sweep_runs_trials_and_reports_the_best(tmp_path):
    result = run_py(
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=1",
        "debug=fdr",
        "backbone=tiny_bert",
        "data=tiny",
        "test=false",
        f"paths.log_dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    best = yaml.safe_load((tmp_path / "debug" / "multiruns" / "default" / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) >= {"optim.lr", "optim.encoder_lr", "loss.focal_gamma"}
