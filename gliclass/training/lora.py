"""LoRA post-training (paper 2.3.3, Table 1): adapters on a frozen GLiClass model, merged away on export.

The presets (rank, alpha, target modules per backbone) live in `conf/lora/`. Only the adapters train, plus any
`modules_to_save` named on purpose. `LoraModule` is the supervised module on the adapted model (stage=post).
`export_model` folds adapters into the weights (merge_and_unload) and writes a plain checkpoint in the official
layout, loadable without peft, with the loss the weights were trained with in its config.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from gliclass.modeling.losses import GLiClassLoss
from gliclass.modeling.model import GLiClassModel
from gliclass.processing import GLiClassProcessor
from gliclass.training.module import GLiClassModule
from gliclass.training.ppo import PPOModule

log = logging.getLogger(__name__)


def matching_modules(model: nn.Module, target: str) -> list[str]:
    """Module names peft's suffix rule picks for `target` ("dense" -> "...attention.output.dense", ...)."""
    pattern = re.compile(rf"(^|\.){re.escape(target)}$")
    return [name for name, _ in model.named_modules() if pattern.search(name)]


# Head layers that exist under some scorers only (`mlp.{0,2,4}`: scorer=mlp or hopfield). Paper Table 1 names them for
# every model of a family, so a preset may list them for a model without them: dropped with a warning. Every other
# target must exist: a backbone target that matches nothing means the preset is not this backbone's.
OPTIONAL_TARGETS = frozenset({"mlp.0", "mlp.2", "mlp.4"})


PRESETS = Path(__file__).resolve().parents[2] / "conf" / "lora"
NO_PRESET = (
    "the run has no LoRA preset: conf/lora/ holds none named after its backbone, or lora=<name> names none there (a "
    "missing preset is skipped silently when the config is composed). Presets: "
    + (", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml"))) if PRESETS.is_dir() else "see conf/lora/")
)


def missing_targets(model: nn.Module, target_modules: Sequence[str]) -> tuple[list[str], list[str]]:
    """(required targets that match no module of `model`, optional ones (`OPTIONAL_TARGETS`) that match none)."""
    absent = [t for t in target_modules if not matching_modules(model, t)]
    return [t for t in absent if t not in OPTIONAL_TARGETS], [t for t in absent if t in OPTIONAL_TARGETS]


def wrong_preset_message(missing: Sequence[str], model: nn.Module, where: str) -> str:
    """The error for a LoRA preset whose targets `missing` are not modules of `model` (named in `where`)."""
    return (
        f"no LoRA target module {list(missing)} exists in {where}: the LoRA preset does not fit this backbone. "
        f"Pick the preset of the backbone (lora=<backbone group name>, e.g. lora=deberta_v3_base, "
        f"lora=modernbert_base, lora=ettin_32m, lora=minilm; conf/lora/) or set lora.target_modules=[...] to module "
        f"names of {type(model).__name__}"
    )


def apply_lora(
    model: nn.Module,
    r: int,
    alpha: float,
    target_modules: Sequence[str],
    dropout: float = 0.05,
    modules_to_save: Sequence[str] | None = None,
    use_rslora: bool = False,
) -> PeftModel:
    """Wrap `model` with LoRA adapters on `target_modules`; every other weight is frozen.

    Every target must name a module of `model` (peft's suffix rule: "dense" matches "...attention.output.dense"):
    a preset of another backbone family (MiniLM's `query` on DeBERTa, DeBERTa's `query_proj` on ModernBERT) is an
    error, not a run that quietly adapts fewer layers. Only the scorer layers of `OPTIONAL_TARGETS`, absent under a
    scorer without them, are dropped with a warning.
    """
    if isinstance(model, PeftModel):
        raise ValueError("the model already carries adapters; merge them (export_model) before adding new ones")
    required, optional = missing_targets(model, target_modules)
    if required:
        raise ValueError(wrong_preset_message(required, model, f"{type(model).__name__} ({_backbone_type(model)})"))
    present = [t for t in target_modules if t not in optional]
    if not present:
        raise ValueError(f"no LoRA target module {list(target_modules)} exists in {type(model).__name__}")
    if optional:
        log.warning(
            "LoRA targets %s match no module of this model (its scorer has none); adapting %s", optional, present
        )
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=present,
        lora_dropout=dropout,
        bias="none",
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        use_rslora=use_rslora,
    )
    return get_peft_model(model, config)


def _backbone_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    encoder = getattr(config, "encoder_config", None)
    return f"backbone model_type {encoder.model_type!r}" if encoder is not None else "no GLiClass config"


def check_preset_fits_backbone(lora: Mapping[str, Any] | None, backbone: Mapping[str, Any], stage: str) -> None:
    """Before a chain of stages starts: the LoRA preset of stage `stage` fits `backbone` (the `model.backbone` node).

    The backbone is built from its config on the meta device (no weights, no memory), and every preset target that
    is not a GLiClass head layer (`linear_1`/`linear_2` of the projectors, the scorer's `mlp.*`) must name one of its
    modules. So a wrong preset fails the chain at its start, not after the stages before the post stage have run.
    """
    if lora is None:
        raise ValueError(f"stage {stage!r} trains LoRA adapters, but " + NO_PRESET)
    head = {"linear_1", "linear_2", *OPTIONAL_TARGETS}
    targets = [t for t in lora.get("target_modules", []) if t not in head]
    if not targets:
        return
    encoder = _meta_backbone(backbone)
    required, _ = missing_targets(encoder, targets)
    if required:
        name = backbone.get("name") or backbone.get("spec", {}).get("model_type")
        raise ValueError(f"stage {stage!r}: " + wrong_preset_message(required, encoder, f"the backbone {name!r}"))


def _meta_backbone(backbone: Mapping[str, Any]) -> nn.Module:
    """The backbone's modules, built from its config on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModel

    from gliclass.modeling import resolve_backbone

    spec = backbone.get("spec")
    if spec is not None:
        # a vocabulary that holds every family's default special-token ids (only module names are read here)
        spec = {"vocab_size": 50368, **spec}
        config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    else:
        config = AutoConfig.from_pretrained(backbone.get("config_path") or resolve_backbone(backbone["name"]))
    with torch.device("meta"):
        return AutoModel.from_config(config)


def merge_lora(model: nn.Module) -> nn.Module:
    """A merged copy (adapters folded into the base weights); the adapter model itself is left untouched."""
    if not isinstance(model, PeftModel):
        return model
    return copy.deepcopy(model).merge_and_unload()


def trained_loss(module: GLiClassModule) -> GLiClassLoss | None:
    """The objective `module` trained its weights with: its `loss`, or None under PPO, whose `loss` only scores
    validation and test batches (its export then keeps the loss fields of the model it started from)."""
    return None if isinstance(module, PPOModule) else module.loss


def loss_config_fields(loss: GLiClassLoss) -> dict[str, Any]:
    """Config fields that record `loss`: the official ones (the focal alpha and gamma, and the label-level
    contrastive coefficient, which the official forward and our few-shot fine-tuning read) and, under
    `training_loss`, every `GLiClassLoss` setting (classification kind, weights, smoothing, token-level term)."""
    names = [name for name in inspect.signature(GLiClassLoss.__init__).parameters if name != "self"]
    return {
        "focal_loss_alpha": loss.focal_alpha,
        "focal_loss_gamma": loss.focal_gamma,
        "contrastive_loss_coef": loss.label_contrastive_coef,
        "training_loss": {name: getattr(loss, name) for name in names},
    }


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    processor: GLiClassProcessor | None = None,
    loss: GLiClassLoss | None = None,
) -> Path:
    """Write the model, adapters merged if it has any, (and its tokenizer files) as a plain GLiClass checkpoint.

    `loss`: the objective the weights were trained with (`trained_loss(module)`); its settings replace the loss
    fields of the written config.json (`loss_config_fields`), not those of `model`'s own config. None keeps them.
    """
    merged = merge_lora(model)
    if not isinstance(merged, GLiClassModel):
        raise TypeError(f"expected a GLiClassModel after merging, got {type(merged).__name__}")
    arch = merged.model
    shared = getattr(arch, "label_encoder", None)
    tied = shared is not None and shared is getattr(arch, "encoder_model", None)
    path = Path(path)
    if tied:
        # tied towers (tie_encoders): the checkpoint format has two, so a copy of the shared tower is written as the
        # label tower (the model's own tying is restored afterwards; only the tower is copied, not the model)
        arch.label_encoder = copy.deepcopy(shared)
    try:
        merged.save_pretrained(path)
    finally:
        if tied:
            arch.label_encoder = shared
    if loss is not None:
        config = copy.deepcopy(merged.config)
        for field, value in loss_config_fields(loss).items():
            setattr(config, field, value)
        config.save_pretrained(path)  # replaces the config.json just written
    if processor is not None:
        processor.save_pretrained(path)
    return path


class LoraModule(GLiClassModule):
    """Supervised post-training of LoRA adapters (stage=post): `lora(model)` wraps the model, the rest is
    `GLiClassModule` (its parameter groups leave the frozen base weights out of the optimiser)."""

    def __init__(self, model: nn.Module, lora: Callable[[nn.Module], PeftModel] | None, **supervised: Any) -> None:
        if lora is None:
            raise ValueError("LoraModule (stage=post) trains LoRA adapters, but " + NO_PRESET)
        super().__init__(model=lora(model), **supervised)
        self.save_hyperparameters(ignore=[*self.NOT_HYPERPARAMETERS, "lora"], logger=False)
        settings = self.model.peft_config["default"]
        self.hparams["lora"] = {  # plain values, so checkpoints load with weights_only=True
            "r": settings.r,
            "alpha": settings.lora_alpha,
            "target_modules": sorted(settings.target_modules),
        }
