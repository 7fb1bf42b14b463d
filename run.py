"""Train, test and export a GLiClass model; every setting is a Hydra config (conf/).

python run.py                                   # the default run: MiniLM bi-encoder, models/default/
python run.py experiment=minilm_bi              # a preset from conf/experiment/
python run.py -m arch=uni,bi,fused pooling=first,mean,attn   # a multirun of the default recipe: 9 jobs, 9 dirs
python run.py -m experiment=ablation_cpu arch=uni,bi,fused pooling=first,mean,attn   # the README's ablation table:
python -m gliclass.evaluation.sweep logs/train/multiruns/ablation_cpu   # every job of it: <sweep dir>/summary.*
python run.py run_name=my_run ...               # a run of its own: logs/train/runs/my_run/, models/my_run/
python run.py ckpt_path=null                    # from scratch (default auto: resume this run's own last.ckpt)
python run.py hparams_search=optuna             # an Optuna sweep over the optimisation settings
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

from gliclass.modeling import resolve_backbone  # noqa: E402
from gliclass.training.callbacks import RunConfigRecord, SaveOnPreemption, last_checkpoint_path  # noqa: E402
from gliclass.training.lora import export_model, trained_loss  # noqa: E402
from gliclass.training.resume import (  # noqa: E402  (also registers ${gliclass.sweep_dir:}, conf/hydra/default.yaml)
    PREEMPTION,
    exit_after_preemption,
    preemption_signal,
    resolve_ckpt_path,
    resumed_step,
    run_config,
)
from gliclass.training.stages import check_init_from, run_stages  # noqa: E402
from gliclass.training.utils import (  # noqa: E402  (after PROJECT_ROOT, which the configs read)
    apply_extras,
    embed_sim_metrics,
    group_choices,
    instantiate_all,
    interpolate_weights,
    log_hyperparameters,
    log_tags,
    snapshot_weights,
    zero_shot_summary,
)

log = logging.getLogger(__name__)
# the metric families shown in TensorBoard's HParams table (one row per run or sweep job)
HPARAM_METRICS = ("val", "test", "zeroshot_finetuned", "embed_sim", "perf", "model")


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items() if not torch.is_tensor(value) or value.numel() == 1}


def save_end_of_training(trainer: L.Trainer) -> None:
    """Lightning writes last.ckpt at its checkpoint events only (every N steps, validation): the steps after the last
    event, or a max_time stop mid-epoch, would be lost. The end state replaces it (what `ckpt_path=last` resumes),
    where the run's checkpoint callback keeps a last.ckpt; a run without one (checkpointing off) saves nothing."""
    callback = trainer.checkpoint_callback
    if callback is not None and callback.save_last and callback.dirpath:
        trainer.save_checkpoint(Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}")


def train(cfg: DictConfig) -> dict[str, float]:
    """`_train` with SLURM's preemption and time-limit signals handled (SIGUSR1, SIGUSR2, SIGTERM): the run stops at
    the end of the running step with last.ckpt saved, raising `Preempted` (gliclass/training/resume.py)."""
    with PREEMPTION.handling():
        return _train(cfg)


def _train(cfg: DictConfig) -> dict[str, float]:
    """Build everything from `cfg`, then (optionally) score the untrained model, fit, test and export.

    Returns every metric the stages logged (train/..., val/..., test/..., zeroshot_untrained/...). A config with
    `stages` (experiment=three_stage) runs each stage through here in turn, each starting from the previous export.
    """
    if cfg.get("stages"):
        return run_stages(cfg, train, config_dir=Path(__file__).resolve().parent / "conf")
    apply_extras(cfg)
    check_init_from(cfg, config_dir=Path(__file__).resolve().parent / "conf")  # model overrides an export would drop
    L.seed_everything(cfg.seed, workers=True)

    log.info("building the model (%s)", cfg.model.backbone.get("name") or cfg.model.backbone.spec.model_type)
    model, processor = instantiate(cfg.model)
    datamodule = instantiate(cfg.data, processor=processor)
    module = instantiate(cfg.module, model=model)
    loggers = instantiate_all(cfg.get("logger"))
    # every checkpoint records the run's config (a resumed fit must share it); a preemption signal saves last.ckpt
    run_cfg = run_config(cfg)
    callbacks = [*instantiate_all(cfg.get("callbacks")), RunConfigRecord(run_cfg), SaveOnPreemption()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    # auto (the default): this run's last.ckpt if it was written with this config; refuses another config's checkpoint
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), last_checkpoint_path(trainer), run_cfg, fit=cfg.train)
    if hasattr(module, "check_trainer"):  # a module's trainer needs (PPO: one device, no accumulation), at the start
        module.check_trainer(trainer)
    log_tags(loggers, cfg.get("tags"))

    metrics: dict[str, float] = {"model/params": float(sum(p.numel() for p in model.parameters()))}
    if cfg.eval_untrained and cfg.test:
        log.info("zero-shot evaluation of the untrained model")
        with module.logging_as("zeroshot_untrained"):
            trainer.test(module, datamodule=datamodule, verbose=False)
        metrics |= scalars(trainer.callback_metrics)
    alpha = cfg.get("weight_ensemble_alpha", 1.0)
    # the weights as built (seeded, so a resumed run rebuilds the same ones) for weight-space ensembling
    start = snapshot_weights(module.model) if cfg.train and alpha < 1.0 else None
    if cfg.train:
        log.info("training (ckpt_path=%s: %s)", cfg.get("ckpt_path"), ckpt_path or "fresh")
        # the step the fit resumes at (Lightning restores it inside `fit`): perf/train_steps counts this run's own
        start_step, started, cpu = resumed_step(ckpt_path), time.perf_counter(), time.process_time()
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        save_end_of_training(trainer)
        PREEMPTION.check(trainer)  # a signal after the last step (in the final validation): the end state is saved
        metrics |= scalars(trainer.callback_metrics)
        # this process's share of the fit (a resumed run counts only the steps it trained itself); CPU seconds (all
        # threads) are less sensitive than wall seconds to other jobs sharing the machine
        steps = trainer.global_step - start_step
        metrics |= {"perf/train_seconds": seconds, "perf/train_cpu_seconds": cpu, "perf/train_steps": float(steps)}
        if steps > 0 and cfg.data.get("batch_size"):
            metrics["perf/train_texts_per_s"] = steps * cfg.data.batch_size * trainer.world_size / seconds
    if start is not None:
        if cfg.test:
            log.info("zero-shot evaluation of the fine-tuned weights (before weight ensembling)")
            with module.logging_as("zeroshot_finetuned"):
                trainer.test(module, datamodule=datamodule, verbose=False)
            metrics |= scalars(trainer.callback_metrics)
        # the fine-tuned weights are kept beside the export (which holds the ensembled ones)
        trainer.save_checkpoint(Path(cfg.paths.checkpoint_dir) / "finetuned.ckpt", weights_only=True)
        log.info("weight ensembling: %.2f x fine-tuned + %.2f x starting weights", alpha, 1 - alpha)
        interpolate_weights(module.model, start, alpha)
    if cfg.test:
        # the in-memory model after training (and ensembling): the model that is exported
        started, cpu = time.perf_counter(), time.process_time()
        trainer.test(module, datamodule=datamodule, ckpt_path=None if cfg.train else ckpt_path, verbose=False)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        metrics |= scalars(trainer.callback_metrics)
        rows = sum(len(datamodule.eval_examples(name)) for name in datamodule.eval_names)
        if rows:  # inference throughput of the whole test loop (all evaluation sets, batched as in evaluation)
            metrics |= {"perf/test_texts_per_s": rows / seconds, "perf/test_texts_per_cpu_s": rows / cpu}
    backbone = cfg.model.backbone
    # the baseline is the pretrained backbone's cosine: a randomly initialised backbone (pretrained=false) has none
    pretrained = backbone.get("name") and backbone.get("pretrained", True)
    if cfg.test and cfg.get("eval_embed_sim") and trainer.is_global_zero and pretrained:
        log.info("zero-shot evaluation of the embedding-similarity baseline (the backbone's mean-pooled cosine)")
        device = trainer.strategy.root_device  # the trainer's device (the GPU of a GPU run), not always the CPU
        baseline = embed_sim_metrics(datamodule, resolve_backbone(backbone.name), device=device)
        metrics |= baseline
        for logger in loggers:
            logger.log_metrics(baseline)
    if cfg.export and trainer.is_global_zero:
        export_dir = Path(cfg.paths.export_dir)
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            export_dir = Path(cfg.paths.output_dir) / "model"  # sweep jobs must not share one export directory
        # LoRA adapters (stage=post) are merged in; config.json records the loss the weights were trained with
        export_model(module.model, export_dir, processor, loss=trained_loss(module))
        log.info("exported the model to %s", export_dir)

    summary = zero_shot_summary(metrics)
    if summary and trainer.is_global_zero:
        log.info(summary)
    log_hyperparameters(loggers, cfg, {k: v for k, v in metrics.items() if k.split("/")[0] in HPARAM_METRICS})
    return metrics


def _write_status(path: Path, record: dict[str, Any]) -> None:
    """`<output dir>/result.json`, replaced atomically: a sweep summary never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def _job_record(cfg: DictConfig) -> dict[str, Any]:
    """What a sweep summary needs to know about this job besides its metrics: overrides, group choices, commit."""
    from gliclass.evaluation.common import git_commit

    record: dict[str, Any] = {"run_name": cfg.get("run_name"), "git_commit": git_commit()}
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        record["overrides"] = list(hydra_cfg.overrides.task)
        record["choices"] = group_choices()
        record["job_num"] = hydra_cfg.job.get("num")
    return record


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # result.json says whether this run is running, completed or failed (with its error), so a sweep summary
    # (python -m gliclass.evaluation.sweep) can show every job, never silently dropping a failed one
    # (one writer: rank 0 of a DDP job)
    status_path = Path(cfg.paths.output_dir) / "result.json" if rank_zero_only.rank == 0 else None
    record = _job_record(cfg) | {"status": "running", "started": dt.datetime.now(dt.timezone.utc).isoformat()}
    if status_path:
        _write_status(status_path, record)
    try:
        metrics = train(cfg)
    except BaseException as err:
        signum = preemption_signal(err)
        if signum is not None:  # saved and stopped: requeue (under SLURM) and exit with 128 + signum
            record |= {"status": "preempted", "error": str(err)}
            record["finished"] = dt.datetime.now(dt.timezone.utc).isoformat()
            if status_path:
                _write_status(status_path, record)
            exit_after_preemption(signum, is_global_zero=rank_zero_only.rank == 0)
        record |= {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        record["finished"] = dt.datetime.now(dt.timezone.utc).isoformat()
        if status_path:
            _write_status(status_path, record)
        raise
    record |= {"status": "completed", "metrics": metrics, "finished": dt.datetime.now(dt.timezone.utc).isoformat()}
    if status_path:
        _write_status(status_path, record)
    value = metrics.get(cfg.get("optimized_metric"))
    if cfg.get("optimized_metric") and value is None:
        log.warning("optimized_metric %r was not logged; logged: %s", cfg.optimized_metric, sorted(metrics))
    return value


if __name__ == "__main__":
    main()
