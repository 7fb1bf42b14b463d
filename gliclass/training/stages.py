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
from gliclass.training.build import (
    apply_throughput_options,
    apply_tower_options,
    build_model_and_processor,
    freeze_lower_layers,
)
from gliclass.training.lora import LoraModule, check_preset_fits_backbone

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
    gradient_checkpointing: bool = False,
    attn_implementation: str | None = None,
    compile: bool = False,
    freeze_layers: int = 0,
) -> tuple[GLiClassModel, GLiClassProcessor]:
    """The previous stage's model and processor, or a fresh one (`build_model_and_processor`, with `head_init`) when
    `init_from` is None. An export directory brings its own architecture config; a `.ckpt` is loaded into the
    configured one. `tie_encoders`, `freeze_word_embeddings`, `freeze_label_encoder`, `freeze_layers` and
    `label_template` apply as in
    `build_model_and_processor`; from an export, a null `label_template` keeps the export's own, and tying needs its
    two towers to hold equal weights (as a tied run exports them). `gradient_checkpointing`, `attn_implementation`
    and `compile` are the throughput switches of `apply_throughput_options`, applied in every case."""
    throughput = (gradient_checkpointing, attn_implementation, compile)
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
            *throughput,
            freeze_layers=freeze_layers,
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
    if freeze_layers:
        freeze_lower_layers(model, freeze_layers)
    apply_throughput_options(model, *throughput)
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
        check_lora_preset(name, stage)
        stages[name] = stage
        previous = export_location(stage)
    return stages


def check_lora_preset(name: str, stage: DictConfig) -> None:
    """A LoRA stage's preset fits the run's backbone (`check_preset_fits_backbone`), checked before any stage runs."""
    if not issubclass(get_class(stage.module._target_), LoraModule):
        return
    lora = stage.get("lora")
    lora = None if lora is None else OmegaConf.to_container(lora, resolve=True)
    check_preset_fits_backbone(lora, OmegaConf.to_container(stage.model.backbone, resolve=True), name)


# names of the config groups that set these GLiClassConfig fields, for error messages
GROUP_OF_FIELD = {"architecture_type": "arch", "pooling_strategy": "pooling", "scorer_type": "scorer"}
# backbone settings that say what the backbone is (the others, such as `pretrained` or `tokenizer`, only say how to
# load a fresh one: an export brings its own weights and tokenizer)
BACKBONE_IDENTITY = ("name", "spec", "label_name", "label_spec")


def init_from_conflicts(cfg: DictConfig, config_dir: str | Path) -> list[str]:
    """What this run sets differently from the export it starts from (`init_from` an export directory), one line per
    field; empty when `init_from` is not an existing export directory.

    An export fixes its architecture (its config.json), so the run's model settings are not used: a field the run
    leaves at the default config's value is fine, but one it sets (on the command line, with a config group such as
    `arch=uni`, or with an experiment preset) to something other than the export's would be silently ignored."""
    init_from = cfg.get("init_from")
    if not init_from or not Path(init_from).is_dir():
        return []
    from gliclass.config import GLiClassConfig

    default = _default_train_config(config_dir)
    export = GLiClassConfig.from_pretrained(init_from)
    conflicts = []
    ours = _plain_node(cfg.model.get("config"))
    defaults = _plain_node(default.model.get("config"))
    for key, value in ours.items():
        if key in defaults and defaults[key] == value:
            continue  # not set by this run
        theirs = getattr(export, key, None)
        if theirs != value:
            group = f" ({GROUP_OF_FIELD[key]}=...)" if key in GROUP_OF_FIELD else ""
            conflicts.append(f"model.config.{key}{group}: {value!r} here, {theirs!r} in the export")
    ours, defaults = _plain_node(cfg.model.get("backbone")), _plain_node(default.model.get("backbone"))
    if any(ours.get(key) != defaults.get(key) for key in BACKBONE_IDENTITY):
        conflicts += _backbone_conflicts(ours, export)
    return conflicts


def check_init_from(cfg: DictConfig, config_dir: str | Path) -> None:
    """Raise, naming the fields, when the run sets model fields that its `init_from` export would silently override."""
    conflicts = init_from_conflicts(cfg, config_dir)
    if conflicts:
        raise ValueError(
            f"init_from={cfg.init_from} is an export directory, whose config.json fixes the architecture, but this "
            "run sets other values: " + "; ".join(conflicts) + ". Drop those overrides to continue the export as it "
            "is, or start from a .ckpt of the configured architecture (or without init_from)"
        )


def _backbone_conflicts(backbone: Mapping[str, Any], export: Any) -> list[str]:
    """The run's backbone against the export's text (and label) backbone: every field of a `spec` must match; a
    `name` must be the export's backbone name, or a backbone of the same shape."""
    from transformers import AutoConfig

    from gliclass.modeling import resolve_backbone

    out = []
    towers = [("spec", "name", export.encoder_config, export.encoder_model_name)]
    if export.label_model_config is not None:
        towers.append(("label_spec", "label_name", export.label_model_config, export.label_model_name))
    for spec_key, name_key, theirs, their_name in towers:
        spec, name = backbone.get(spec_key), backbone.get(name_key)
        if spec is None and name is not None:
            resolved = resolve_backbone(name)
            if resolved == their_name:
                continue
            try:
                spec = AutoConfig.from_pretrained(resolved).to_dict()
            except (OSError, ValueError):  # not loadable here (offline): a different name, a different backbone
                out.append(f"model.backbone.{name_key}: {name!r} here, {their_name!r} in the export")
                continue
            spec = {key: spec.get(key) for key in SHAPE_FIELDS}
        if not spec:
            continue
        differ = {key: value for key, value in spec.items() if getattr(theirs, key, None) != value}
        if differ:
            where = f"model.backbone.{spec_key if backbone.get(spec_key) is not None else name_key}"
            shown = ", ".join(
                f"{key}={value!r} (export: {getattr(theirs, key, None)!r})" for key, value in differ.items()
            )
            out.append(f"{where}: {shown}")
    return out


# what makes two backbones of one family interchangeable for a checkpoint's weights
SHAPE_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def _plain_node(node: Any) -> dict[str, Any]:
    if node is None:
        return {}
    try:
        return dict(OmegaConf.to_container(node, resolve=True))
    except Exception:  # an interpolation that only a Hydra run resolves (hydra:...): compare the unresolved text
        return dict(OmegaConf.to_container(node, resolve=False))


def _default_train_config(config_dir: str | Path) -> DictConfig:
    """The `train` config with no overrides: what a run that sets nothing would use."""
    context = (
        nullcontext()
        if GlobalHydra.instance().is_initialized()
        else initialize_config_dir(str(config_dir), version_base="1.3")
    )
    with context:
        return compose("train")
