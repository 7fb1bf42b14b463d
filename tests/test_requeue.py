"""Resuming only one's own checkpoint, and SLURM preemption (issue 23, items 3 and 4).

- A checkpoint records its run's config; a resumed fit must share it (`ckpt_path=last` or a path refuses another
  config's checkpoint naming the fields, `ckpt_path=auto`, the default, starts fresh instead).
- SIGUSR1/SIGUSR2/SIGTERM stop a fit at the end of the running step with last.ckpt saved there; run with the same
  command again (as a requeued job is), it resumes by itself and ends with the weights of an unbroken run.
- Under DDP the training sampler deals whole batches (one dataset each) to the processes, Lightning keeps it, and a
  run stopped mid-epoch resumes exactly.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from omegaconf import open_dict
from torch.utils.data import Dataset, DistributedSampler

from gliclass import GLiClassModel
from gliclass.data.resumable import EpochSampler, ResumableLoader
from gliclass.training.callbacks import RunConfigRecord
from gliclass.training.resume import (
    RUN_CONFIG_KEY,
    CheckpointConfigMismatch,
    Preempted,
    PreemptionFlag,
    config_differences,
    preemption_signal,
    resolve_ckpt_path,
)
from tests.test_train_run import compose_train, run, run_py

# ---------------------------------------------------------------------------------------------- resolving ckpt_path


def fake_checkpoint(path: Path, config: dict | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": 3} | ({RUN_CONFIG_KEY: config} if config is not None else {}), path)
    return path


FOCAL = {"loss": {"_target_": "focal", "focal_alpha": 0.5}, "seed": 1}
CONTRASTIVE = {"loss": {"_target_": "contrastive", "focal_alpha": 0.5}, "seed": 1}


def test_auto_resumes_only_a_checkpoint_of_the_same_config(tmp_path, caplog):
    last = fake_checkpoint(tmp_path / "last.ckpt", FOCAL)
    assert resolve_ckpt_path("auto", last, FOCAL) == str(last)
    with caplog.at_level("WARNING"):
        assert resolve_ckpt_path("auto", last, CONTRASTIVE) is None  # another config: fresh, saying why
    assert "loss._target_" in caplog.text and "starting fresh" in caplog.text
    # the other config's progress is kept beside, not overwritten by the fresh run
    (kept,) = tmp_path.glob("last-superseded-*.ckpt")
    assert not last.exists() and torch.load(kept, weights_only=False)["global_step"] == 3
    last = fake_checkpoint(tmp_path / "last.ckpt", FOCAL)
    assert resolve_ckpt_path("auto", tmp_path / "none.ckpt", FOCAL) is None  # nothing to resume yet
    assert resolve_ckpt_path("auto", last, FOCAL, fit=False) is None  # a test-only run tests the model it builds
    assert resolve_ckpt_path(None, last, FOCAL) is None  # null: always fresh
    old = fake_checkpoint(tmp_path / "old" / "last.ckpt", None)  # written before checkpoints held their config
    assert resolve_ckpt_path("auto", old, FOCAL) is None
    assert len(list(old.parent.glob("last-superseded-*.ckpt"))) == 1  # kept beside, not overwritten
    old = fake_checkpoint(old, None)
    assert resolve_ckpt_path("last", old, FOCAL) == str(old)  # asked for by name: resumed unchecked


def test_last_or_a_path_of_another_config_is_refused_naming_the_fields(tmp_path):
    last = fake_checkpoint(tmp_path / "last.ckpt", FOCAL | {"data": {"batch_size": 8}})
    current = CONTRASTIVE | {"data": {"batch_size": 16}}
    for value in ("last", str(last)):
        with pytest.raises(CheckpointConfigMismatch, match=r"loss\._target_: \"focal\" -> \"contrastive\"") as err:
            resolve_ckpt_path(value, last, current)
        assert "data.batch_size: 8 -> 16" in str(err.value) and "2 field(s) differ" in str(err.value)
        assert "ckpt_path=null" in str(err.value)
    # a test-only run may test any checkpoint; a missing one is an error; no last.ckpt yet: fresh
    assert resolve_ckpt_path(str(last), last, current, fit=False) == str(last)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        resolve_ckpt_path(str(tmp_path / "typo.ckpt"), last, FOCAL)
    assert resolve_ckpt_path("last", tmp_path / "none.ckpt", FOCAL) is None


def test_config_differences_name_nested_and_missing_fields():
    saved = {"model": {"config": {"pooling": "avg", "dropout": 0.0}}, "seed": 1}
    now = {"model": {"config": {"pooling": "first"}, "max_length": 256}, "seed": 1}
    assert config_differences(saved, now) == [
        "model.config.dropout: 0.0 -> <not set>",
        'model.config.pooling: "avg" -> "first"',
        "model.max_length: <not set> -> 256",
    ]


def test_the_record_callback_refuses_another_configs_checkpoint_in_a_fit_only():
    callback = RunConfigRecord(CONTRASTIVE)
    checkpoint: dict = {}
    callback.on_save_checkpoint(None, None, checkpoint)
    assert checkpoint[RUN_CONFIG_KEY] == CONTRASTIVE
    fit = SimpleNamespace(state=SimpleNamespace(fn="fit"), ckpt_path="x.ckpt")
    with pytest.raises(CheckpointConfigMismatch, match="loss._target_"):
        callback.on_load_checkpoint(fit, None, {RUN_CONFIG_KEY: FOCAL})
    callback.on_load_checkpoint(fit, None, {RUN_CONFIG_KEY: CONTRASTIVE})
    callback.on_load_checkpoint(SimpleNamespace(state=SimpleNamespace(fn="test")), None, {RUN_CONFIG_KEY: FOCAL})


# ---------------------------------------------------------------------------------------------- runs in one directory

SHORT = [
    "backbone=tiny_bert",
    "data=tiny",
    "eval_untrained=false",
    "eval_embed_sim=false",
    "logger=csv",
    "data.benchmarks=['emotion:train:12']",
    "data.eval_datasets=['sst2:test:4']",
]


def short_run(tmp_path: Path, overrides: list[str], callbacks: dict | None = None) -> dict[str, float]:
    keys = {o.split("=", 1)[0] for o in overrides}
    cfg = compose_train(tmp_path, [*(o for o in SHORT if o.split("=", 1)[0] not in keys), *overrides])
    if callbacks:
        with open_dict(cfg):
            cfg.callbacks.update(callbacks)
    return run.train(cfg)


def test_a_second_config_in_the_same_directory_never_resumes_the_firsts_checkpoint(tmp_path):
    """The issue's case: a focal-loss run left last.ckpt; a contrastive run in the same directory with ckpt_path=last
    restored it, trained 0 steps and reported completed. Now it is refused, naming the loss fields; with the default
    (auto) the new config trains from scratch; the same config resumes."""
    once = ["trainer.max_steps=2", "test=false", "export=false"]
    assert short_run(tmp_path, ["loss=focal", *once])["perf/train_steps"] == 2
    with pytest.raises(CheckpointConfigMismatch, match=r"field\(s\) differ.* loss\.") as err:
        short_run(tmp_path, ["loss=contrastive", "ckpt_path=last", *once])
    assert "module.loss" in str(err.value)
    assert short_run(tmp_path, ["loss=contrastive", *once])["perf/train_steps"] == 2  # auto: fresh, not 0 steps
    # the same config resumes its own checkpoint (here: the finished contrastive run, nothing left to train)
    assert short_run(tmp_path, ["loss=contrastive", *once])["perf/train_steps"] == 0


# ---------------------------------------------------------------------------------------------- preemption


class SignalAt(Callback):
    """Sends this process `signum` (by name) as training step `step` starts (global_step == step), as the validation
    after step `step` starts (`in_validation`), or as the first test batch starts (`step` None): a SLURM signal
    arriving mid-step. Under DDP only process `rank` gets it."""

    def __init__(self, signum: str, step: int | None = None, rank: int = 0, in_validation: bool = False) -> None:
        self.signum, self.step, self.rank, self.sent = getattr(signal, signum), step, rank, False
        self.in_validation = in_validation

    def on_train_start(self, trainer: Trainer, *args) -> None:
        self.sent = self.sent or trainer.global_step > 0  # a resumed run (a requeued job) is not signalled again

    def _send(self, trainer: Trainer) -> None:
        if not self.sent and trainer.global_rank == self.rank:
            self.sent = True
            os.kill(os.getpid(), self.signum)

    def on_train_batch_start(self, trainer: Trainer, *args) -> None:
        if self.step is not None and not self.in_validation and trainer.global_step == self.step:
            self._send(trainer)

    def on_validation_start(self, trainer: Trainer, *args) -> None:
        if self.in_validation and trainer.training is False and trainer.global_step == self.step:
            self._send(trainer)

    def on_test_batch_start(self, trainer: Trainer, *args) -> None:
        if self.step is None:
            self._send(trainer)


def signal_at(signum: str, step: int | None = None, **kwargs) -> dict:
    return {"signal": {"_target_": f"{__name__}.SignalAt", "signum": signum, "step": step, **kwargs}}


def checkpoint_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def exported(path: Path) -> dict[str, torch.Tensor]:
    return GLiClassModel.from_pretrained(path).state_dict()


# 9 training rows of 12, batch 4: 3 steps an epoch, 6 in all; checkpoints only every 1000 steps (the default)
TWO_EPOCHS = ["trainer.max_epochs=2"]


def test_a_signalled_fit_saves_its_step_and_resumes_to_the_weights_of_an_unbroken_run(tmp_path):
    unbroken = short_run(tmp_path / "unbroken", TWO_EPOCHS)
    assert unbroken["perf/train_steps"] == 6
    # SIGUSR1 as step 4 runs (mid epoch 2): the step finishes, last.ckpt holds step 5, the run stops
    with pytest.raises(Preempted) as stopped:
        short_run(tmp_path / "resumed", TWO_EPOCHS, signal_at("SIGUSR1", step=4))
    assert (stopped.value.signum, stopped.value.step) == (signal.SIGUSR1, 5)
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    assert checkpoint_step(last) == 5 and not (tmp_path / "resumed" / "model").exists()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL, "the handlers are the process's own again"
    # the same command again (a requeued job): ckpt_path=auto resumes step 5 and trains only step 6
    resumed = short_run(tmp_path / "resumed", TWO_EPOCHS)
    assert resumed["perf/train_steps"] == 1
    for key in ("val/f1_macro_best", "test/f1_macro", "test/sst2/loss"):
        assert resumed[key] == pytest.approx(unbroken[key], abs=1e-6), key
    unbroken_weights, resumed_weights = (
        exported(tmp_path / "unbroken" / "model"),
        exported(tmp_path / "resumed" / "model"),
    )
    for name, tensor in unbroken_weights.items():
        torch.testing.assert_close(resumed_weights[name], tensor, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("in_validation", [False, True], ids=["in-a-step", "in-a-validation"])
def test_sigterm_saves_the_step_despite_lightnings_own_handler(tmp_path, in_validation):
    """Lightning installs a SIGTERM handler when a fit starts, which ends the run at the end of the running batch
    (after its validation) with nothing saved; ours takes SIGTERM back, so the next step end saves and stops. In a
    validation (the one after step 3, the end of epoch 1) the fit saves at the end of step 4."""
    with pytest.raises(Preempted) as stopped:
        short_run(
            tmp_path,
            [*TWO_EPOCHS, "test=false"],
            signal_at("SIGTERM", 1 + 2 * in_validation, in_validation=in_validation),
        )
    assert (stopped.value.signum, stopped.value.step) == (signal.SIGTERM, 2 + 2 * in_validation)
    assert checkpoint_step(tmp_path / "checkpoints" / "last.ckpt") == 2 + 2 * in_validation


def test_a_signal_during_an_evaluation_stops_at_the_end_of_the_batch(tmp_path):
    with pytest.raises(Preempted) as stopped:
        short_run(tmp_path, ["eval_untrained=true", "trainer.max_steps=2"], signal_at("SIGUSR2"))
    assert stopped.value.signum == signal.SIGUSR2 and stopped.value.step is None
    assert not (tmp_path / "checkpoints").exists(), "stopped in the untrained evaluation, before any training"


def test_the_flag_is_one_object_in_spawned_processes_and_reads_spawned_errors():
    import pickle

    from gliclass.training.resume import PREEMPTION

    assert pickle.loads(pickle.dumps(PREEMPTION)) is PREEMPTION
    other = pickle.loads(pickle.dumps(PreemptionFlag(["SIGUSR1"])))
    assert other is not PREEMPTION and other.signals == [signal.SIGUSR1]
    # a spawned DDP process's Preempted reaches the launching process as its traceback's text
    text = "Traceback ...\ngliclass.training.resume.Preempted: stopped by SIGUSR1 (signal 10) after step 3, saved"
    assert preemption_signal(RuntimeError(text)) == 10 and preemption_signal(RuntimeError("boom")) is None


@pytest.mark.slow
def test_run_py_exits_preempted_and_the_same_command_resumes(tmp_path):
    """The whole job as SLURM sees it: the signalled run.py saves, marks result.json preempted and exits with
    128 + SIGUSR1 (no SLURM here, so nothing to requeue); the same command then resumes and completes."""
    command = [*SHORT, *TWO_EPOCHS, "test=false", "export=false", f"paths.log_dir={tmp_path}"]
    signalled = run_py(
        *command,
        "+callbacks.signal._target_=tests.test_requeue.SignalAt",
        "+callbacks.signal.signum=SIGUSR1",
        "+callbacks.signal.step=2",
    )
    assert signalled.returncode == 128 + signal.SIGUSR1, signalled.stderr[-3000:]
    run_dir = tmp_path / "train" / "runs" / "default"
    record = json.loads((run_dir / "result.json").read_text())
    assert record["status"] == "preempted" and "SIGUSR1" in record["error"]
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == 3
    again = run_py(*command)
    assert again.returncode == 0, again.stderr[-3000:]
    record = json.loads((run_dir / "result.json").read_text())
    assert record["status"] == "completed" and record["metrics"]["perf/train_steps"] == 3


@pytest.mark.slow
def test_a_submitit_job_is_requeued_by_submitit_and_resumes_in_its_own_directory(tmp_path):
    """`hydra/launcher=submitit_local` runs the job as `submitit_slurm` does, and requeues it the same way (its
    controller restarts a job that exits for requeueing). SIGUSR2, submitit's time-limit signal, as step 2 runs: the
    job saves step 3 and hands over to submitit's handler, which checkpoints the Hydra job and requeues it; the
    requeued job finds its own directory and last.ckpt and trains steps 4-6 only."""
    result = run_py(
        "-m",
        "hydra/launcher=submitit_local",
        *SHORT,
        *TWO_EPOCHS,
        "test=false",
        "export=false",
        f"paths.log_dir={tmp_path}",
        "+callbacks.signal._target_=tests.test_requeue.SignalAt",
        "+callbacks.signal.signum=SIGUSR2",
        "+callbacks.signal.step=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns" / "default").iterdir()
    assert [p.name for p in sweep.iterdir() if p.name.isdigit()] == ["0"], "the requeued job used the same directory"
    record = json.loads((sweep / "0" / "result.json").read_text())
    assert record["status"] == "completed" and record["metrics"]["perf/train_steps"] == 3
    assert checkpoint_step(sweep / "0" / "checkpoints" / "last.ckpt") == 6
    log = (sweep / "0" / "run.log").read_text()  # the job's log, both runs of it
    assert "preempted (signal 12): stopping after step 3" in log and "handing over to submitit's handler" in log
    assert "resuming" in log and (sweep / "0" / "csv" / "version_1").is_dir()


# ---------------------------------------------------------------------------------------------- DDP sampler


class Rows(Dataset):
    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index):
        return index[0] if isinstance(index, tuple) else index


def batches_of(sampler: EpochSampler, batch_size: int) -> list[list[int]]:
    return [b.tolist() for b in ResumableLoader(Rows(sampler.size), batch_size=batch_size, sampler=sampler)]


@pytest.mark.parametrize("size", [37, 40, 3])
def test_the_distributed_sampler_deals_whole_batches_of_one_dataset(size):
    groups = [["a", "b", "c"][i % 3] for i in range(size)]
    make = lambda rank: EpochSampler(size, 7, groups=groups, batch_size=4, num_replicas=2, rank=rank)  # noqa: E731
    whole = batches_of(EpochSampler(size, 7, groups=groups, batch_size=4), 4)
    ranks = [batches_of(make(rank), 4) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == -(-len(whole) // 2), "every process steps the same number of times"
    # batch i of the single-process epoch goes to process i mod 2; the last round is completed with the first batches
    dealt = [b for pair in zip(*ranks, strict=True) for b in pair]
    assert dealt[: len(whole)] == whole and all(b in whole[:2] for b in dealt[len(whole) :])
    full = sum(groups.count(g) // 4 for g in "abc")  # full batches of each dataset precede the leftovers
    for batch in whole[:full]:
        assert len({groups[i] for i in batch}) == 1
    # Lightning keeps it: it is already a DistributedSampler, so no sampler of Lightning's deals single samples
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False, enable_progress_bar=False)
    loader = ResumableLoader(Rows(size), batch_size=4, sampler=make(0))
    assert isinstance(loader.sampler, DistributedSampler)
    assert not trainer._data_connector._requires_distributed_sampler(loader)


def test_the_distributed_sampler_resumes_every_process_from_process_0s_position():
    size, groups = 45, [["a", "b"][i % 2] for i in range(45)]

    def loader(rank: int) -> ResumableLoader:
        sampler = EpochSampler(size, 3, groups=groups, batch_size=4, tag_draws=True, num_replicas=3, rank=rank)
        return ResumableLoader(Rows(size), batch_size=4, sampler=sampler)

    for stop in (0, 2, 3, 4):  # batches trained before the stop (each process has 4 an epoch)
        unbroken = [batches_of(loader(rank).sampler, 4) for rank in range(3)]
        first = loader(0)
        iterator = iter(first)
        for _ in range(stop):
            next(iterator)
        state = first.state_dict()  # Lightning checkpoints process 0's
        for rank in range(3):
            resumed = loader(rank)
            resumed.load_state_dict(state)
            rest = [b.tolist() for b in resumed]
            expected = unbroken[rank][stop:] if stop < 4 else batches_of(next_epoch(loader(rank)), 4)
            assert rest == expected, (stop, rank)


def next_epoch(loader: ResumableLoader) -> EpochSampler:
    loader.sampler.set_epoch(1)
    return loader.sampler


# ---------------------------------------------------------------------------------------------- DDP, end to end


class RecordBatches(Callback):
    """Appends each training batch's step and source datasets to `<folder>/rank<r>.jsonl` (in each DDP process)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_batch_start(self, trainer: Trainer, pl_module, batch, batch_idx: int) -> None:
        source = {ex.text: ex.meta.get("dataset") for ex in trainer.datamodule.train_examples}
        row = {"step": trainer.global_step, "datasets": [source[text] for text in batch["texts"]]}
        row["texts"] = batch["texts"]
        with open(Path(self.folder) / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


def recorded(folder: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (folder / f"rank{rank}.jsonl").read_text().splitlines()]


DDP = [
    "trainer=ddp_sim",
    "data.benchmarks=['emotion:train:24','sem_eval_2018_ec:train:16']",
    "+data.group_batches_by_dataset=true",
    *TWO_EPOCHS,
    "test=false",
    "export=false",
    "weight_ensemble_alpha=1.0",
]


@pytest.mark.slow
def test_ddp_keeps_one_dataset_per_batch_and_resumes_a_signalled_run_exactly(tmp_path):
    """Two simulated DDP processes. 30 training rows of two datasets, batch 4: 8 batches an epoch, 4 a process.
    Every full batch holds one dataset, the processes train different batches, and a run signalled (process 0 only)
    as step 5 runs stops both processes at step 6, then resumes mid-epoch to the batches and weights of an unbroken
    run."""

    def ddp_run(name: str, callbacks: dict | None = None) -> dict[str, float]:
        folder = tmp_path / f"{name}_batches"
        folder.mkdir(exist_ok=True)
        record = {"record": {"_target_": f"{__name__}.RecordBatches", "folder": str(folder)}}
        return short_run(tmp_path / name, DDP, record | (callbacks or {}))

    ddp_run("unbroken")
    unbroken = [recorded(tmp_path / "unbroken_batches", rank) for rank in (0, 1)]
    assert [len(batches) for batches in unbroken] == [8, 8]
    for rank_batches in unbroken:
        for batch in rank_batches:
            if len(batch["datasets"]) == 4:  # a full batch: one dataset (only the epoch's leftovers are mixed)
                assert len(set(batch["datasets"])) == 1, batch
    for epoch in (0, 1):  # the processes share out an epoch's rows
        texts = [set(t for b in batches[4 * epoch : 4 * epoch + 4] for t in b["texts"]) for batches in unbroken]
        assert texts[0] and texts[1] and not texts[0] & texts[1]

    with pytest.raises(Exception) as stopped:  # Preempted in each spawned process, reported to this one as text
        ddp_run("resumed", signal_at("SIGUSR1", step=5))
    assert preemption_signal(stopped.value) == signal.SIGUSR1
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    assert checkpoint_step(last) == 6
    ddp_run("resumed")  # the same command again: resumes step 6 by itself
    resumed = [recorded(tmp_path / "resumed_batches", rank) for rank in (0, 1)]
    for rank in (0, 1):
        assert [b["step"] for b in resumed[rank]] == [0, 1, 2, 3, 4, 5, 6, 7]
        assert resumed[rank] == unbroken[rank], f"process {rank} trained other batches after resuming"
    weights = [
        torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        for run in ("unbroken", "resumed")
    ]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=0, atol=1e-6, msg=name)
