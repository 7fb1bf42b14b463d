"""Build the model and processor from the `backbone` and `model.config` config nodes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gliclass.modeling import GLiClassModel, build_model
from gliclass.processing import GLiClassProcessor


def _plain(node: Mapping[str, Any] | None) -> dict[str, Any]:
    """Hydra hands over DictConfigs; transformers configs need plain dicts and lists."""
    if node is None:
        return {}
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def build_model_and_processor(
    backbone: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    max_length: int = 1024,
    head_init: str = "identity",
) -> tuple[GLiClassModel, GLiClassProcessor]:
    """A fresh GLiClass model (pretrained backbone, new head) and its processor.

    `backbone` is `{name, pretrained, tokenizer, spec, label_spec}`: `name` is a checkpoint name or path ("minilm" is
    the offline MiniLM); `spec` instead gives a backbone config dict for a randomly initialised backbone (tests), read
    with `tokenizer`. `config` holds GLiClassConfig fields (architecture_type, pooling_strategy, scorer_type, ...).
    `head_init` is "identity" (projectors start as the identity map) or "random" (see `build_model`).
    """
    backbone = _plain(backbone)
    spec = backbone.get("spec")
    if (spec is None) == (backbone.get("name") is None):
        raise ValueError(f"a backbone config needs exactly one of 'name' and 'spec', got {backbone}")
    label_backbone = backbone.get("label_spec") if spec is not None else backbone.get("label_name")
    return build_model(
        spec if spec is not None else backbone["name"],
        tokenizer=backbone.get("tokenizer"),
        label_backbone=label_backbone,
        pretrained=backbone.get("pretrained", True),
        max_length=max_length,
        head_init=head_init,
        **_plain(config),
    )
