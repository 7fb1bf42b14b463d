"""run.py end to end on tiny backbones: fast_dev_run of every experiment, a short full run, multirun, resume, DDP."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from lightning.pytorch import Callback
from omegaconf import DictConfig, open_dict

from gliclass import GLiClassModel, GLiClassProcessor
from gliclass.training.module import model_inputs

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


KEPT: dict[str, Any] = {}


class KeepTested(Callback):
    """Keeps the module and data module of the last test loop: the model the run exports, as it was tested."""

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        KEPT.update(module=pl_module, datamodule=trainer.datamodule)


def first_batch_f1(module: L.LightningModule, datamodule: L.LightningDataModule) -> dict[str, float]:
    """Macro-F1 of each eval set's first test batch (all that a fast_dev_run tests), decided and counted by hand."""
    model, threshold = module.model.eval(), module.hparams.threshold
    f1 = {}
    for (name, multi), loader in zip(module.eval_datasets, datamodule.test_dataloader(), strict=True):
        batch = next(iter(loader))
        with torch.no_grad():
            logits = model(**model_inputs(batch)).logits
        counts: dict[str, list[int]] = {}
        for i, names in enumerate(batch["label_names"]):
            slots = batch["labels_mask"][i].nonzero().flatten().tolist()
            best = max(slots, key=lambda s: logits[i, s].item())
            for s in slots:
                picked = torch.sigmoid(logits[i, s]).item() >= threshold if multi else s == best
                truth = batch["targets"][i, s].item() >= 0.5
                tp_fp_fn = counts.setdefault(names[s], [0, 0, 0])
                tp_fp_fn[0] += picked and truth
                tp_fp_fn[1] += picked and not truth
                tp_fp_fn[2] += truth and not picked
        per_label = [2 * tp / (2 * tp + fp + fn) for tp, fp, fn in counts.values() if tp + fp + fn]
        f1[name] = sum(per_label) / len(per_label) if per_label else 0.0
    return f1


# the paper recipes build their full pattern stream in the post stage (~25 s a recipe here): slow, like their dry runs
# in tests/test_paper_recipes.py
@pytest.mark.parametrize(
    "experiment",
    [None, *(pytest.param(e, marks=pytest.mark.slow) if e.startswith("paper_") else e for e in EXPERIMENTS)],
)
def test_fast_dev_run(tmp_path, experiment):
    """One batch of train, validation and test per stage; the test numbers are those of the model it exports."""
    overrides = ["debug=fdr", "data=tiny", "backbone=tiny_deberta"]
    if experiment is not None:
        overrides = [f"experiment={experiment}", *overrides[:2], tiny_backbone_for(tmp_path, experiment)]
        if experiment == "recipe_cv":  # a cross-validation run needs its fold, and trains on train-only sets only
            overrides += ["fold=f0", "data.benchmarks=['mpqa:train:24','sem_eval_2018_ec:train:16']"]
    cfg = compose_train(tmp_path, overrides)
    with open_dict(cfg):
        cfg.callbacks = {"keep": {"_target_": f"{__name__}.KeepTested"}}
    KEPT.clear()
    metrics = run.train(cfg)
    stages = [f"{stage}/" for stage in cfg.get("stages") or {}] or [""]
    for stage in stages:
        assert metrics[f"{stage}perf/train_steps"] == 1, stage  # exactly one training batch
        assert torch.isfinite(torch.tensor(metrics[f"{stage}train/loss_epoch"])), stage
        assert metrics[f"{stage}train/loss_epoch"] == pytest.approx(metrics[f"{stage}train/loss_step"]), stage
        assert metrics[f"{stage}val/f1_macro_best"] == metrics[f"{stage}val/f1_macro"], stage  # one validation
    # the last stage's test loop: every eval set, its F1 recomputed from the tested model, and their mean
    f1 = first_batch_f1(KEPT.pop("module"), KEPT.pop("datamodule"))
    assert set(f1) == {str(spec).split(":")[0] for spec in cfg.data.eval_datasets}  # every eval set was tested
    for name, value in f1.items():
        assert metrics[f"test/{name}/f1_macro"] == pytest.approx(value, abs=1e-6), name
    assert metrics["test/f1_macro"] == pytest.approx(sum(f1.values()) / len(f1), abs=1e-6)


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
    (sweep,) = (tmp_path / "train" / "multiruns" / "default").iterdir()  # an un-named sweep: default/<overrides>-<hash>
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [job.name for job in jobs] == [str(n) for n in range(9)]
    ran = {tuple(yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())[:2]) for job in jobs}
    assert ran == {(f"arch={a}", f"pooling={p}") for a in ("uni", "bi", "fused") for p in ("first", "mean", "attn")}
    assert all((job / "csv").is_dir() for job in jobs), "every job logs into its own directory"


class Killed(Exception):
    pass


class KillAtStep(Callback):
    """Dies where a preempted job may: at the start of a step, after the previous step's checkpoint was written, or
    (`in_validation`) at the start of the validation that follows the step-`step` checkpoint."""

    def __init__(self, step: int, in_validation: bool = False) -> None:
        self.step, self.in_validation = step, in_validation

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if not self.in_validation and trainer.global_step == self.step:
            raise Killed(f"killed at step {self.step}")

    def on_validation_start(self, trainer: L.Trainer, *args) -> None:
        if self.in_validation and trainer.global_step == self.step and not trainer.sanity_checking:
            raise Killed(f"killed in the validation after step {self.step}")


def resumable_run(tmp_path: Path, overrides: list[str], kill: dict | None = None):
    # the real GLiClassDataModule: its training loader checkpoints its position (gliclass/data/resumable.py)
    cfg = compose_train(tmp_path, ["backbone=tiny_bert", "data=tiny", "eval_untrained=false", "logger=csv", *overrides])
    with open_dict(cfg):
        cfg.callbacks.model_checkpoint.every_n_train_steps = 1
        if kill is not None:
            cfg.callbacks.kill = {"_target_": f"{__name__}.KillAtStep", **kill}
    return run.train(cfg)


def validations(run_dir: Path, version: int) -> list[tuple[int, float]]:
    """(logged step, val/f1_macro) of every validation a run logged (logger=csv)."""
    with open(run_dir / "csv" / f"version_{version}" / "metrics.csv") as f:
        return [(int(row["step"]), float(row["val/f1_macro"])) for row in csv.DictReader(f) if row["val/f1_macro"]]


def assert_resumed_ends_like_unbroken(tmp_path: Path, steps: list[str], kill: dict) -> None:
    unbroken = resumable_run(tmp_path / "unbroken", steps)
    with pytest.raises(Killed):
        resumable_run(tmp_path / "resumed", steps, kill=kill)
    resumed = resumable_run(tmp_path / "resumed", [*steps, "ckpt_path=last"])
    # every validation after the checkpoint (at step kill["step"], logged one lower) runs again, with the same result
    expected = [(step, f1) for step, f1 in validations(tmp_path / "unbroken", 0) if step >= kill["step"] - 1]
    replayed = validations(tmp_path / "resumed", 1)
    assert expected and [step for step, _ in replayed] == [step for step, _ in expected]
    assert [f1 for _, f1 in replayed] == pytest.approx([f1 for _, f1 in expected], abs=1e-6)
    # (epoch means of training logs are not checkpointed: after a mid-epoch resume they cover the resumed part)
    for key in ("val/f1_macro", "val/loss", "val/f1_macro_best", "test/f1_macro", "test/sst2/loss"):
        assert key in resumed, key
        assert resumed[key] == pytest.approx(unbroken[key], abs=1e-6), key
    unbroken_weights = GLiClassModel.from_pretrained(tmp_path / "unbroken" / "model").state_dict()
    resumed_weights = GLiClassModel.from_pretrained(tmp_path / "resumed" / "model").state_dict()
    for name, tensor in unbroken_weights.items():
        torch.testing.assert_close(resumed_weights[name], tensor, rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
# mid-epoch; at the end of epoch 1 (its step-8 checkpoint precedes epoch 1's validation, which the resumed run must
# still run, or val/f1_macro_best misses it); mid-epoch after a resumed epoch
@pytest.mark.parametrize("kill_at", [5, 8, 11])
# the uni-encoder reads the labels in their shuffled order, which worker processes draw; workers also prefetch
@pytest.mark.parametrize("loader", [[], ["arch=uni", "data.num_workers=2"]], ids=["bi", "uni-2-workers"])
def test_a_resumed_run_ends_like_an_unbroken_one(tmp_path, kill_at, loader):
    # data=tiny: 30 training rows, batch 4: 8 batches per epoch, 16 steps
    assert_resumed_ends_like_unbroken(tmp_path, ["trainer.max_epochs=2", *loader], {"step": kill_at})


@pytest.mark.slow
def test_a_run_killed_in_its_last_validation_runs_it_when_resumed(tmp_path):
    # the step-8 checkpoint is the run's last, written before the validation: the resumed fit has only that to run
    steps = ["trainer.max_epochs=2", "trainer.max_steps=8"]
    assert_resumed_ends_like_unbroken(tmp_path, steps, {"step": 8, "in_validation": True})


def test_resuming_without_a_checkpoint_starts_fresh(tmp_path):
    """ckpt_path=last with no checkpoint yet: the run trains from step 0 and ends exactly like one without ckpt_path
    (same metrics, same exported weights)."""
    steps = ["trainer.max_steps=3", "data.benchmarks=['emotion:train:16']", "data.eval_datasets=['sst2:test:4']"]
    steps += ["eval_embed_sim=false"]
    assert not (tmp_path / "last" / "checkpoints").exists()
    fresh = resumable_run(tmp_path / "last", [*steps, "ckpt_path=last"])
    plain = resumable_run(tmp_path / "plain", steps)
    assert fresh["perf/train_steps"] == plain["perf/train_steps"] == 3
    assert (tmp_path / "last" / "checkpoints" / "last.ckpt").is_file()  # it did checkpoint as it went
    # every logged number but timings; validations (logger=csv) at the same steps with the same scores
    assert {k: v for k, v in fresh.items() if not k.startswith("perf/")} == pytest.approx(
        {k: v for k, v in plain.items() if not k.startswith("perf/")}, abs=1e-6
    )
    assert validations(tmp_path / "last", 0) == validations(tmp_path / "plain", 0) != []
    assert not (tmp_path / "last" / "csv" / "version_1").exists()  # one fit, not a failed resume and a second one
    fresh_weights = GLiClassModel.from_pretrained(tmp_path / "last" / "model").state_dict()
    for name, tensor in GLiClassModel.from_pretrained(tmp_path / "plain" / "model").state_dict().items():
        assert torch.equal(fresh_weights[name], tensor), name


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
    (sweep,) = (tmp_path / "debug" / "multiruns" / "default").iterdir()  # an un-named sweep: default/<overrides>-<hash>
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) >= {"optim.lr", "optim.encoder_lr", "loss.focal_gamma"}


def test_last_ckpt_holds_the_end_of_training_not_the_last_checkpoint_event(tmp_path):
    """3 steps with a checkpoint every 2: Lightning alone would leave last.ckpt at step 2 and lose step 3."""
    cfg = compose_train(
        tmp_path,
        [
            "data=tiny",
            "backbone=tiny_bert",
            "trainer.max_steps=3",
            "callbacks.model_checkpoint.every_n_train_steps=2",
            "weight_ensemble_alpha=1.0",
            "test=false",
            "export=false",
        ],
    )
    run.train(cfg)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 3
    assert torch.load(tmp_path / "checkpoints" / "step_0000002.ckpt", weights_only=False)["global_step"] == 2


def test_a_run_without_checkpointing_writes_no_checkpoint(tmp_path):
    """Checkpointing off (no checkpoint callback): the end of training is not saved either."""
    cfg = compose_train(
        tmp_path,
        [
            "data=tiny",
            "backbone=tiny_bert",
            "trainer.max_steps=2",
            "~callbacks.model_checkpoint",
            "+trainer.enable_checkpointing=false",
            "weight_ensemble_alpha=1.0",
            "test=false",
            "export=false",
        ],
    )
    run.train(cfg)
    assert not list(tmp_path.rglob("*.ckpt"))
