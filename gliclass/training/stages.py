"""Chaining the training stages (paper 2.3.3): pre-training -> PPO mid-training -> LoRA post-training.

A stage starts from the previous one's weights with `init_from`: a Hugging Face export directory (the official
layout, as every stage writes at its end) or a Lightning `.ckpt` of any stage (its `model.` weights).

An experiment with a `stages` mapping (`{name: [overrides]}`, see conf/experiment/three_stage.yaml) runs them in
order. Each stage's config is the run's config changed exactly as the stage's overrides change the default config
(so `data=tiny`, `debug=fdr` or `trainer.max_steps=...` on the command line hold for every stage), with its own
output and export directories below the run's, and `init_from` set to the previous stage's export (every stage but
the last exports, whatever `export` says). A job of a multirun exports each stage to `<job dir>/<i>_<stage>/model`
(run.py: sweep jobs never share an export directory), so every job chains its own stages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from gliclass.modeling import GLiClassModel
from gliclass.processing import GLiClassProcessor
from gliclass.training.build import apply_tower_options, build_model_and_processor

log = logging.getLogger(__name__)


def build_model_and_processor_from(
    init_from: str | None,
    backbone: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    max_length: int = 1024,
    head_init: str = "identity",
    tie_encoders: bool = False,
    freeze_word_embeddings: bool = False,
    label_template: str | None = None,
    freeze_label_encoder: bool = False,
) -> tuple[GLiClassModel, GLiClassProcessor]:
    """The previous stage's model and processor, or a fresh one (`build_model_and_processor`, with `head_init`) when
    `init_from` is None. An export directory brings its own architecture config; a `.ckpt` is loaded into the
    configured one. `tie_encoders`, `freeze_word_embeddings`, `freeze_label_encoder` and `label_template` apply as in
    `build_model_and_processor`; from an export, a null `label_template` keeps the export's own, and tying needs its
    two towers to hold equal weights (as a tied run exports them)."""
    if init_from is None:
        return build_model_and_processor(
            backbone,
            config,
            max_length,
            head_init,
            tie_encoders,
            freeze_word_embeddings,
            label_template,
            freeze_label_encoder,
        )
    path = Path(init_from)
    if path.is_dir():
        log.info("starting from the export %s (its config.json fixes the architecture)", path)
        model = GLiClassModel.from_pretrained(path)
        extra = {} if label_template is None else {"label_template": label_template}
        processor = GLiClassProcessor.from_pretrained(path, config=model.config, max_length=max_length, **extra)
    elif path.suffix == ".ckpt" and path.is_file():
        model, processor = build_model_and_processor(
            backbone, config, max_length, head_init, label_template=label_template
        )
        load_checkpoint_weights(model, path)  # before tying: the checkpoint names both towers
    else:
        raise FileNotFoundError(f"init_from={init_from!r} is neither an export directory nor a .ckpt file")
    apply_tower_options(
        model, tie_encoders, freeze_word_embeddings, trained=True, freeze_label_encoder=freeze_label_encoder
    )
    return model, processor


def load_checkpoint_weights(model: GLiClassModel, path: str | Path) -> None:
    """Load the `model.` entries of a Lightning checkpoint (value head, optimiser state, ... are left out)."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    weights = {key[len("model.") :]: value for key, value in state.items() if key.startswith("model.")}
    if any("lora_" in key for key in weights):
        raise ValueError(f"{path} holds LoRA adapters: start from that stage's export, where they are merged")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [key for key in missing if not key.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit the configured model (same backbone/arch/pooling/scorer groups as the run that "
            f"wrote it?): missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def _changes(default: Any, changed: Any, target: dict[str, Any]) -> None:
    """Apply to `target` what turns `default` into `changed` (nested dicts; other values are replaced whole)."""
    for key, value in changed.items():
        if isinstance(value, dict) and isinstance(default.get(key), dict) and isinstance(target.get(key), dict):
            _changes(default[key], value, target[key])
        elif isinstance(value, dict) and isinstance(default.get(key), dict) and key in target and target[key] is None:
            continue  # the run switched this group off (debug presets: callbacks=null): a stage's edits stay off
        elif key not in default or default[key] != value:
            target[key] = value
    for key in default.keys() - changed.keys():
        target.pop(key, None)


def stage_config(cfg: DictConfig, overrides: Sequence[str], config_dir: str | Path) -> DictConfig:
    """`cfg` with the changes that `overrides` make to the default `train` config."""
    context = (
        nullcontext()
        if GlobalHydra.instance().is_initialized()
        else initialize_config_dir(str(config_dir), version_base="1.3")
    )
    with context:
        default = OmegaConf.to_container(compose("train"), resolve=False)
        changed = OmegaConf.to_container(compose("train", overrides=list(overrides)), resolve=False)
    target = OmegaConf.to_container(cfg, resolve=False)
    _changes(default, changed, target)
    return OmegaConf.create(target)


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (`python run.py -m ...`)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def export_location(cfg: DictConfig) -> Path:
    """Where run.py's `train` writes the export of `cfg`: `paths.export_dir`, or `<paths.output_dir>/model` for a
    multirun job, so that the jobs of one sweep never overwrite (or start from) each other's models."""
    return Path(cfg.paths.output_dir) / "model" if in_multirun() else Path(cfg.paths.export_dir)


def run_stages(
    cfg: DictConfig, train: Callable[[DictConfig], dict[str, float]], config_dir: str | Path
) -> dict[str, float]:
    """Run `cfg.stages` in order; metrics come back as `<stage>/<metric>`, plus the last stage's unprefixed.

    Every stage's config is built and checked before the first one runs, so a stage that cannot run (no init_from,
    a trainer its module refuses: PPO under DDP) fails the chain at its start, not after the stages before it."""
    stages = chain_configs(cfg, config_dir)
    for stage in stages.values():
        check = getattr(get_class(stage.module._target_), "check_trainer", None)
        if check is not None:
            check(instantiate(stage.trainer, logger=False))
    metrics: dict[str, float] = {}
    for index, (name, stage) in enumerate(stages.items()):
        log.info(
            "stage %d/%d: %s (%s), init_from=%s",
            index + 1,
            len(stages),
            name,
            list(cfg.stages[name]),
            stage.get("init_from"),
        )
        stage_metrics = train(stage)
        metrics |= {f"{name}/{key}": value for key, value in stage_metrics.items()}
    return metrics | stage_metrics


def chain_configs(cfg: DictConfig, config_dir: str | Path) -> dict[str, DictConfig]:
    """Each stage's config: its own output and export directories, and `init_from` the previous stage's export."""
    output_dir, export_dir = Path(cfg.paths.output_dir), Path(cfg.paths.export_dir)
    stages: dict[str, DictConfig] = {}
    previous: Path | None = None
    for index, (name, overrides) in enumerate(cfg.stages.items()):
        stage = stage_config(cfg, overrides, config_dir)
        stage.stages = None
        stage.paths.output_dir = str(output_dir / f"{index}_{name}")
        # a multirun job exports below the stage's own directory (`export_location`); say so in the stage's config
        stage.paths.export_dir = str(Path(stage.paths.output_dir) / "model" if in_multirun() else export_dir / name)
        if index < len(cfg.stages) - 1:
            stage.export = True  # the next stage starts from this export (even under debug presets' export=false)
        if previous is not None:
            if "init_from" not in stage:
                raise ValueError(f"stage {name!r} takes no init_from: its overrides must pick stage=mid or stage=post")
            stage.init_from = str(previous)
        stages[name] = stage
        previous = export_location(stage)
    return stages
