"""Build the model and processor from the `backbone` and `model.config` config nodes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from transformers import PreTrainedModel

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
    tie_encoders: bool = False,
    freeze_word_embeddings: bool = False,
    label_template: str | None = None,
    freeze_label_encoder: bool = False,
    gradient_checkpointing: bool = False,
    attn_implementation: str | None = None,
    compile: bool = False,
    freeze_layers: int = 0,
) -> tuple[GLiClassModel, GLiClassProcessor]:
    """A fresh GLiClass model (pretrained backbone, new head) and its processor.

    `backbone` is `{name, pretrained, tokenizer, spec, label_spec, config_path}`: `name` is a checkpoint name or path
    ("minilm" is the offline MiniLM); `spec` instead gives a backbone config dict for a randomly initialised backbone
    (tests), read with `tokenizer`. `config_path` (with `pretrained: false`): a local directory with `name`'s config
    and tokenizer files, so a randomly initialised hub architecture is built without the hub (see `build_model`). `config` holds GLiClassConfig fields (architecture_type, pooling_strategy, scorer_type, ...).
    `head_init` is "identity" (projectors start as the identity map) or "random" (see `build_model`).
    `tie_encoders`: a bi-encoder's text and label towers become one module (see `tie_towers`).
    `freeze_word_embeddings`: the backbones' token embedding tables are not trained (see `freeze_embeddings`).
    `freeze_label_encoder`: a bi-encoder's label tower (its backbone) is not trained (see `freeze_label_tower`).
    `freeze_layers`: every backbone's embeddings and lowest `freeze_layers` layers are not trained
    (see `freeze_lower_layers`).
    `label_template`: the label tower reads each label inside this sentence (`GLiClassProcessor`), in training and
    in every use of the export.
    `gradient_checkpointing`, `attn_implementation`, `compile`: GPU throughput switches (`apply_throughput_options`).
    """
    backbone = _plain(backbone)
    spec = backbone.get("spec")
    if (spec is None) == (backbone.get("name") is None):
        raise ValueError(f"a backbone config needs exactly one of 'name' and 'spec', got {backbone}")
    label_backbone = backbone.get("label_spec") if spec is not None else backbone.get("label_name")
    model, processor = build_model(
        spec if spec is not None else backbone["name"],
        tokenizer=backbone.get("tokenizer"),
        label_backbone=label_backbone,
        pretrained=backbone.get("pretrained", True),
        max_length=max_length,
        **({"config_path": backbone["config_path"]} if backbone.get("config_path") is not None else {}),
        head_init=head_init,
        label_template=label_template,
        **_plain(config),
    )
    apply_tower_options(model, tie_encoders, freeze_word_embeddings, freeze_label_encoder=freeze_label_encoder)
    if freeze_layers:
        freeze_lower_layers(model, freeze_layers)
    apply_throughput_options(model, gradient_checkpointing, attn_implementation, compile)
    return model, processor


ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def apply_throughput_options(
    model: GLiClassModel,
    gradient_checkpointing: bool = False,
    attn_implementation: str | None = None,
    compile: bool = False,
) -> None:
    """The run's `model.gradient_checkpointing`, `model.attn_implementation` and `model.compile` switches.

    - gradient checkpointing: every backbone recomputes its layers' activations in backward instead of keeping them
      (non-reentrant, so frozen inputs under LoRA need no workaround); same loss and gradients, less memory.
    - attn_implementation: the attention kernel of every backbone (eager, sdpa, flash_attention_2, ...); None keeps
      transformers' default. A backbone that cannot use the kernel is an error (DeBERTa-v2/v3 has eager only).
    - compile: `torch.compile` of the whole model, in place (`nn.Module.compile`): parameter names, checkpoints and
      exports are unchanged. Kernels are compiled at the first batch of each shape family (dynamic padding changes
      the sequence length, so a few recompilations happen before shapes are marked dynamic).
    """
    towers = [
        getattr(model.model, name)
        for name in ("encoder_model", "label_encoder", "encoder_decoder_model")
        if isinstance(getattr(model.model, name, None), PreTrainedModel)
    ]
    if attn_implementation is not None:
        if attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation={attn_implementation!r}: choose one of {list(ATTN_IMPLEMENTATIONS)}")
        for tower in {id(t): t for t in towers}.values():
            tower.set_attn_implementation(attn_implementation)
            if tower.config._attn_implementation != attn_implementation:
                raise ValueError(
                    f"attn_implementation={attn_implementation!r}: the {type(tower).__name__} backbone cannot use it "
                    f"(it runs {tower.config._attn_implementation!r}); set model.attn_implementation=null"
                )
    if gradient_checkpointing:
        if not any(tower.supports_gradient_checkpointing for tower in towers):
            raise ValueError(f"gradient_checkpointing: no backbone of {type(model).__name__} supports it")
        options = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the older name is deprecated
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    if compile:
        model.compile()


def apply_tower_options(
    model: GLiClassModel,
    tie_encoders: bool,
    freeze_word_embeddings: bool,
    trained: bool = False,
    freeze_label_encoder: bool = False,
) -> None:
    """`tie_towers`, `freeze_embeddings` and/or `freeze_label_tower`, as the run's `model.*` options ask; `trained`
    (a previous stage's weights) ties only towers that hold equal weights."""
    if tie_encoders and freeze_label_encoder:
        raise ValueError(
            "tie_encoders and freeze_label_encoder together would freeze the text tower too (it is the label tower); "
            "choose one"
        )
    if tie_encoders:
        tie_towers(model, require_equal=trained)
    if freeze_word_embeddings:
        freeze_embeddings(model)
    if freeze_label_encoder:
        freeze_label_tower(model)


def freeze_label_tower(model: GLiClassModel) -> int:
    """Stop training a bi-encoder's label backbone; returns how many of its tensors were frozen.

    The label tower then keeps the backbone's embedding of every label name, those the training mix never uses
    included, and the text tower and the projection heads learn to meet it. Training also runs no backward pass
    through it. The export is unchanged (two towers, official layout).
    """
    _require_bi_encoder(model, "freeze_label_encoder")
    arch = model.model
    if arch.label_encoder is arch.encoder_model:
        raise ValueError("freeze_label_encoder: the label tower is the text tower (tied), so freezing it stops both")
    weights = [p for p in arch.label_encoder.parameters() if p.requires_grad]
    for param in weights:
        param.requires_grad_(False)
    return len(weights)


def tie_towers(model: GLiClassModel, require_equal: bool = False) -> None:
    """Make a bi-encoder's label tower the text tower itself (a siamese bi-encoder, as sentence embedders are trained).

    Both towers start from the same backbone; training them apart lets the label tower specialise to the training
    mix's label names, while one shared tower keeps text and labels in one space. The checkpoint format is unchanged:
    `export_model` writes the shared weights under both names, so official code loads two identical towers. The
    label tower's own weights are dropped: for a pretrained backbone they equal the text tower's. `require_equal`
    (a trained model: a previous stage's export or checkpoint) refuses towers whose weights differ, which tying would
    silently throw away.
    """
    arch, config = model.model, model.config
    _require_bi_encoder(model, "tie_encoders")
    if config.label_model_name not in (None, config.encoder_model_name):
        raise ValueError(
            f"tie_encoders shares one tower, but the label tower was built from {config.label_model_name!r} and the "
            f"text tower from {config.encoder_model_name!r}: drop the separate label backbone or the tie"
        )
    text, label = arch.encoder_model.state_dict(), arch.label_encoder.state_dict()
    if {k: v.shape for k, v in text.items()} != {k: v.shape for k, v in label.items()}:
        raise ValueError("tie_encoders needs the text and label towers to have the same architecture and shapes")
    if require_equal and any(not torch.equal(text[k], label[k]) for k in text):
        raise ValueError(
            "tie_encoders: the text and label towers hold different trained weights, and tying would discard the label "
            "tower's; start from a model trained with tied towers, or leave them untied"
        )
    arch.label_encoder = arch.encoder_model


def _require_bi_encoder(model: GLiClassModel, option: str) -> None:
    if model.config.architecture_type != "bi-encoder":
        raise ValueError(f"{option} needs architecture_type='bi-encoder', got {model.config.architecture_type!r}")


def backbone_layers(tower: nn.Module) -> nn.ModuleList:
    """A backbone's transformer layers, first layer first: its first ModuleList of `num_hidden_layers` modules (BERT's
    and DeBERTa's `encoder.layer`, ModernBERT's `layers`, an encoder-decoder's encoder blocks)."""
    count = getattr(getattr(tower, "config", None), "num_hidden_layers", None)
    for module in tower.modules():
        if isinstance(module, nn.ModuleList) and count is not None and len(module) == count:
            return module
    raise ValueError(f"freeze_layers: cannot find the layers of the {type(tower).__name__} backbone")


def freeze_lower_layers(model: GLiClassModel, layers: int) -> int:
    """Stop training every backbone's embeddings (token, position, type, their norm) and its lowest `layers` layers;
    returns how many tensors were frozen. The upper layers and the head still learn: the lower layers keep the
    backbone's general features for datasets unlike the training mix. Tied towers are one backbone."""
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
        raise ValueError(f"freeze_layers={layers!r}: the number of lowest layers to freeze, an int >= 0")
    towers = {
        id(tower): tower
        for tower in (
            getattr(model.model, name, None) for name in ("encoder_model", "label_encoder", "encoder_decoder_model")
        )
        if isinstance(tower, PreTrainedModel)
    }
    if layers and not towers:
        raise ValueError("freeze_layers: the model has no pretrained backbone")
    frozen = 0
    for tower in towers.values():
        stack = backbone_layers(tower)
        if layers > len(stack):
            raise ValueError(
                f"freeze_layers={layers}: the {type(tower).__name__} backbone has only {len(stack)} layers"
            )
        embeddings = getattr(tower, "embeddings", None) or tower.get_input_embeddings()
        for module in [embeddings, *stack[:layers]] if layers else []:
            for param in module.parameters():
                if param.requires_grad:
                    param.requires_grad_(False)
                    frozen += 1
    return frozen


def freeze_embeddings(model: GLiClassModel) -> int:
    """Stop training every backbone's token embedding table; returns how many tables were frozen.

    Fine-tuning moves only the rows of words the training mix uses, so label words never seen in training drift apart
    from those that were; frozen rows keep every word where the backbone put it.
    """
    tables = {id(m): m for m in model.modules() if hasattr(m, "get_input_embeddings") and m is not model}
    frozen = 0
    for module in tables.values():
        embeddings = module.get_input_embeddings()
        if isinstance(embeddings, nn.Embedding) and embeddings.weight.requires_grad:
            embeddings.weight.requires_grad_(False)
            frozen += 1
    if not frozen:
        raise ValueError("freeze_word_embeddings: the model has no backbone token embedding table to freeze")
    return frozen
