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
from torch.utils.data import DataLoader, Sampler

from gliclass import GLiClassModel, GLiClassProcessor
from gliclass.data import GLiClassCollator, GLiClassDataset, read_benchmark, to_examples

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
    assert checkpoints == ["last.ckpt", "step_0000002.ckpt", "step_0000004.ckpt"]
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


class EpochSampler(Sampler[int]):
    """A permutation drawn from (seed, epoch), resumable after any sample. Lightning calls `set_epoch` at each
    epoch start, so an epoch's order does not depend on what ran before it."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self.epoch = self.yielded = self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.skip = epoch, 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
        start, self.skip = self.skip, 0
        for position in range(start, self.size):
            self.yielded = position + 1
            yield order[position].item()


class ResumableLoader(DataLoader):
    """Lightning stores `state_dict()` of a training loader that has one in each checkpoint."""

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "yielded": self.sampler.yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.sampler
        sampler.epoch, sampler.skip = state["epoch"], state["yielded"]
        if sampler.skip == len(sampler):  # saved after an epoch's last batch: Lightning continues with this iterator
            sampler.epoch, sampler.skip = sampler.epoch + 1, 0


class ResumableData(L.LightningDataModule):
    """Tiny benchmark data whose training loader resumes mid-epoch (the GLiClassDataModule contract otherwise)."""

    def __init__(self, processor: GLiClassProcessor, data_dir: str, seed: int) -> None:
        super().__init__()
        self.processor, self.seed = processor, seed
        self.train = to_examples(read_benchmark("emotion", "train", data_dir, limit=28), max_negatives=3, seed=seed)
        self.val = to_examples(read_benchmark("emotion", "validation", data_dir, limit=8), all_labels=True)
        self.eval_names, self.eval_multi_label = ["sst2"], {"sst2": False}
        self.test = to_examples(read_benchmark("sst2", "test", data_dir, limit=8), all_labels=True)

    def loader(self, rows: list) -> DataLoader:
        return DataLoader(
            GLiClassDataset(rows, self.processor), batch_size=8, collate_fn=GLiClassCollator(self.processor)
        )

    def train_dataloader(self) -> DataLoader:
        sampler = EpochSampler(len(self.train), seed=self.seed)
        dataset = GLiClassDataset(self.train, self.processor)
        return ResumableLoader(dataset, batch_size=4, sampler=sampler, collate_fn=GLiClassCollator(self.processor))

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val)

    def test_dataloader(self) -> list[DataLoader]:
        return [self.loader(self.test)]


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
    cfg = compose_train(tmp_path, ["backbone=tiny_bert", "eval_untrained=false", "logger=csv", *overrides])
    with open_dict(cfg):
        cfg.data = {"_target_": f"{__name__}.ResumableData", "data_dir": "${paths.data_dir}", "seed": "${seed}"}
        cfg.callbacks.model_checkpoint.every_n_train_steps = 1
        if kill_at is not None:
            cfg.callbacks.kill = {"_target_": f"{__name__}.KillAtStep", "step": kill_at}
    return run.train(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [5, 7, 10])  # mid-epoch, at the end of epoch 1, mid-epoch after a resumed epoch
def test_a_resumed_run_ends_like_an_unbroken_one(tmp_path, kill_at):
    steps = ["trainer.max_epochs=2"]  # 7 batches per epoch, 14 steps
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
        ["trainer=ddp_sim", "data=tiny", "backbone=tiny_bert", "trainer.max_steps=2", "eval_untrained=false"],
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
