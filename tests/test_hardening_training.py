"""Training hardening: stage chains inside multirun jobs, PPO's step unit (max_steps, checkpoints, resume), failures
in backward, and PPO under DDP."""

from __future__ import annotations

import math
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import open_dict
from safetensors.torch import load_file

from gliclass.training.module import TooManySkippedBatchesError
from gliclass.training.ppo import PPOModule
from gliclass.training.stages import run_stages, stage_config
from tests.conftest import tiny_model
from tests.test_ppo import fit as fit_ppo
from tests.test_ppo import make_module as make_ppo_module
from tests.test_ppo import rule_batch
from tests.test_train_module import ListDataModule, examples, make_module, trainer
from tests.test_train_run import CONF, KillAtStep, Killed, compose_train, run, run_py


# ------------------------------------------------------------------------------- item 11: stages in a multirun
@pytest.fixture
def multirun_job(tmp_path):
    """Hydra's runtime config of a multirun job, as a job of `run.py -m` sees it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hydra_cfg = compose("train", return_hydra_config=True, overrides=[f"paths.log_dir={tmp_path}"])
    with open_dict(hydra_cfg):
        hydra_cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(hydra_cfg)
    yield
    HydraConfig.instance().cfg = None


def test_stages_of_a_multirun_job_chain_to_the_jobs_own_exports(tmp_path, multirun_job):
    cfg = compose_train(tmp_path / "job0", ["experiment=three_stage_tiny"])
    seen = {}

    def fake_train(stage):
        seen[Path(stage.paths.output_dir).name] = (stage.get("init_from"), stage.paths.export_dir)
        return {"test/f1_macro": 0.0}

    run_stages(cfg, fake_train, CONF)
    job = tmp_path / "job0"
    # run.py exports a multirun job's model to <its output_dir>/model: the next stage starts from exactly there
    assert seen == {
        "0_pretrain": (None, str(job / "0_pretrain" / "model")),
        "1_mid": (str(job / "0_pretrain" / "model"), str(job / "1_mid" / "model")),
        "2_post": (str(job / "1_mid" / "model"), str(job / "2_post" / "model")),
    }


def test_a_stage_leaves_a_group_the_run_switched_off_switched_off(tmp_path):
    # debug presets set callbacks=null; stage=mid edits the checkpoint callback, which must not bring the whole
    # callbacks group back (its LearningRateMonitor then fails without the logger debug also switched off)
    cfg = compose_train(tmp_path, ["experiment=three_stage_tiny", "debug=fdr"])
    assert cfg.callbacks is None and cfg.logger is None
    mid = stage_config(cfg, cfg.stages.mid, CONF)
    assert mid.callbacks is None and mid.module._target_ == "gliclass.training.ppo.PPOModule"
    assert compose_train(tmp_path, ["stage=mid"]).callbacks.model_checkpoint._target_.endswith("StepCheckpoint")


def pooler_weights(export: Path) -> dict[str, torch.Tensor]:
    """The BERT pooler never reaches the loss: no stage changes it, so it tells which model a stage started from."""
    weights = load_file(export / "model.safetensors")
    pooler = {k: v for k, v in weights.items() if ".pooler." in k}
    assert pooler, sorted(weights)[:5]
    return pooler


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_multirun_of_a_staged_experiment_chains_each_job_to_its_own_stages(tmp_path):
    # a stale model where a single run of the experiment would export: no job may start from it
    decoy, processor = tiny_model(seed=7)
    for stage in ("pretrain", "mid"):
        decoy.save_pretrained(tmp_path / "shared" / stage)
        processor.save_pretrained(tmp_path / "shared" / stage)
    result = run_py(
        "-m",
        "experiment=three_stage_tiny",
        "seed=1,2",
        "trainer.max_steps=2",
        "test=false",
        "logger=csv",
        f"paths.log_dir={tmp_path}",
        f"paths.export_dir={tmp_path}/shared",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    jobs = [tmp_path / "train" / "multiruns" / "three_stage_tiny" / str(n) for n in range(2)]
    poolers = {}
    for job in jobs:
        exports = [job / f"{i}_{stage}" / "model" for i, stage in enumerate(("pretrain", "mid", "post"))]
        assert all((export / "model.safetensors").is_file() for export in exports)
        log = (job / "run.log").read_text()
        assert f"init_from={exports[0]}" in log and f"init_from={exports[1]}" in log
        pretrain, mid, post = (pooler_weights(export) for export in exports)
        assert same(pretrain, mid) and same(mid, post), f"{job.name}: a stage did not start from the previous one"
        poolers[job.name] = pretrain
    assert not same(poolers["0"], poolers["1"])  # seeds 1 and 2 built different models: the check can tell them apart
    assert not any(same(p, pooler_weights(tmp_path / "shared" / "pretrain")) for p in poolers.values())


# ------------------------------------------------------------------------------- item 12: PPO counts policy updates
def start_export(tmp_path: Path) -> Path:
    """A tiny_bert model, built as the pretrain stage builds it, exported for stage=mid to start from."""
    path = tmp_path / "start"
    if not path.is_dir():
        model, processor = instantiate(compose_train(tmp_path, ["backbone=tiny_bert"]).model)
        model.save_pretrained(path)
        processor.save_pretrained(path)
    return path


def ppo_run(tmp_path: Path, name: str, overrides: list[str] = (), kill_at: int | None = None) -> Path:
    """stage=mid on data=tiny (8 batches of 4 per epoch): 8 policy updates, a checkpoint every 2; its checkpoints."""
    cfg = compose_train(
        tmp_path / name,
        [
            "stage=mid",
            f"init_from={start_export(tmp_path)}",
            "data=tiny",
            "trainer.max_steps=8",
            "callbacks.model_checkpoint.every_n_train_steps=2",
            "eval_untrained=false",
            "test=false",
            "export=false",
            "logger=csv",
            *overrides,
        ],
    )
    if kill_at is not None:
        with open_dict(cfg):
            cfg.callbacks.kill = {"_target_": f"{KillAtStep.__module__}.KillAtStep", "step": kill_at}
    run.train(cfg)
    return tmp_path / name / "checkpoints"


def test_ppo_max_steps_and_checkpoint_interval_count_policy_updates(tmp_path):
    checkpoints = ppo_run(tmp_path, "run")
    # 3 updates per batch: batches end at updates 3, 6 and 8 (the last batch makes the 2 updates left); each of them
    # reached a multiple of 2 (Lightning's own check saw only 6: every 6 updates instead of every 2)
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "last.ckpt",
        "step_0000003.ckpt",
        "step_0000006.ckpt",
        "step_0000008.ckpt",
    ]
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 8  # not 9
    # the schedule ran over exactly those 8 updates: warm-up then linear decay to 0
    assert last["lr_schedulers"][0]["last_epoch"] == 8
    assert last["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(0.0)


@pytest.mark.slow
def test_a_resumed_ppo_run_ends_like_an_unbroken_one(tmp_path):
    unbroken = ppo_run(tmp_path, "unbroken")
    with pytest.raises(Killed):
        ppo_run(tmp_path, "resumed", kill_at=3)  # dies at the start of batch 2, after the step-3 checkpoint
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    resumed = ppo_run(tmp_path, "resumed", ["ckpt_path=last"])
    a = torch.load(unbroken / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(resumed / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 8
    assert a["state_dict"].keys() == b["state_dict"].keys() and any("value_head" in k for k in a["state_dict"])
    for name, tensor in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], tensor, rtol=0, atol=1e-6, msg=name)
    torch.testing.assert_close(b["value_optimizer"]["state"], a["value_optimizer"]["state"], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------- item 13: failures in backward
class FailInBackward(torch.autograd.Function):
    """Identity forward; the backward raises `error`, or returns NaN gradients when `error` is None."""

    @staticmethod
    def forward(ctx, logits, error):
        ctx.error = error
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx, grad):
        if ctx.error is not None:
            raise ctx.error
        return torch.full_like(grad, math.nan), None


def fail_backward_of_call(model, call: int, error: Exception | None) -> None:
    """Make the backward of the model's `call`-th forward (1-based) fail."""
    forward, calls = model.forward, []

    def patched(*args, **kwargs):
        output = forward(*args, **kwargs)
        calls.append(1)
        if len(calls) == call:
            output.logits = FailInBackward.apply(output.logits, error)
        return output

    model.forward = patched


class WeightsPerBatch(L.Callback):
    """Whether each training batch changed the weights."""

    def __init__(self) -> None:
        self.changed: list[bool] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.before = [p.detach().clone() for p in module.parameters()]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        after = list(module.parameters())
        self.changed.append(any(not torch.equal(a, b) for a, b in zip(self.before, after, strict=True)))


@pytest.mark.parametrize(
    "error", [torch.OutOfMemoryError("CUDA out of memory in backward"), None], ids=["oom", "nan_gradient"]
)
def test_a_failure_in_backward_skips_and_counts_the_batch(make_tiny, error):
    model, processor = make_tiny("bert")
    fail_backward_of_call(model, 2, error)
    module, weights = make_module(model), WeightsPerBatch()
    run_ = trainer(callbacks=[weights], gradient_clip_val=1.0)
    run_.fit(module, datamodule=ListDataModule(processor, examples(8)))
    assert module.skipped.state_dict() == {"seen": 4, "skipped": 1}
    assert run_.callback_metrics["train/skipped_batches"] == 1
    assert weights.changed == [True, False, True, True]  # the failed batch left the weights (and AdamW) alone
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert run_.global_step == 4


def test_failures_in_backward_count_towards_the_limit(make_tiny):
    model, processor = make_tiny("bert")
    fail_backward_of_call(model, 1, None)
    module = make_module(model, max_skipped_fraction=0.3, min_batches=2)
    with pytest.raises(TooManySkippedBatchesError, match="1 of 1 training batches.*non-finite gradient"):
        trainer().fit(module, datamodule=ListDataModule(processor, examples(8)))


def test_a_genuine_error_in_backward_is_raised(make_tiny):
    model, processor = make_tiny("bert")
    fail_backward_of_call(model, 2, RuntimeError("a genuine bug in backward"))
    with pytest.raises(RuntimeError, match="a genuine bug in backward"):
        trainer().fit(make_module(model), datamodule=ListDataModule(processor, examples(8)))


def test_a_non_finite_ppo_gradient_skips_the_batch():
    model, processor = tiny_model()
    fail_backward_of_call(model, 2, None)  # the rollout forward of batch 1 feeds its first update
    module = make_ppo_module(model, value_model=False)
    fit_ppo(module, rule_batch(processor), 3)
    assert module.skipped.state_dict() == {"seen": 3, "skipped": 1}
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ------------------------------------------------------------------------------- item 17: PPO under DDP
def test_ppo_under_ddp_fails_at_start_with_a_clear_error(tmp_path):
    cfg = compose_train(tmp_path, ["stage=mid", "trainer=ddp_sim"])
    module = instantiate(cfg.module, model=tiny_model()[0])
    assert isinstance(module, PPOModule)
    module.trainer = instantiate(cfg.trainer, logger=False)  # 2 spawned CPU processes; setup is the first hook of fit
    with pytest.raises(ValueError, match=re.escape("stage=mid (PPO) trains on a single device")):
        module.setup("fit")


def test_a_stage_chain_with_ppo_under_ddp_fails_before_its_first_stage(tmp_path):
    cfg = compose_train(tmp_path, ["experiment=three_stage_tiny", "trainer=ddp_sim"])
    ran = []
    with pytest.raises(ValueError, match=re.escape("stage=mid (PPO) trains on a single device")):
        run_stages(cfg, lambda stage: ran.append(stage) or {}, CONF)
    assert ran == []  # not after a whole pre-training stage
