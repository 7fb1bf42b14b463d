"""`GLiClassConfig`: the checkpoint config, field-compatible with the official `gliclass` package.

Official `config.json` files load unchanged: every field keeps the official name and default. Our additions are
the attention-weighted pooling (`pooling_strategy="attn"`, named by the paper) and `exact_feature_spans`, whose
default keeps the official behaviour (official files do not have it; `build_model` turns it on for new models).
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PretrainedConfig

ARCHITECTURES = ("uni-encoder", "bi-encoder", "bi-encoder-fused", "encoder-decoder")
POOLINGS = ("first", "last", "avg", "max", "sum", "rms", "abs_max", "abs_avg", "attn", "pass")
SCORERS = ("simple", "weighted-dot", "mlp", "hopfield", "cross-attn")
CLASS_TOKEN_POOLINGS = ("first", "average")
SEGMENT_ATTENTIONS = ("none", "gated")
# backbones whose attention the gated segment attention knows how to bias (gliclass/modeling/segments.py)
SEGMENT_ATTENTION_BACKBONES = ("bert", "deberta-v2", "modernbert")

LABEL_TOKEN = "<<LABEL>>"
SEP_TOKEN = "<<SEP>>"
EXAMPLE_TOKEN = "<<EXAMPLE>>"
SPECIAL_TOKENS = (LABEL_TOKEN, SEP_TOKEN, EXAMPLE_TOKEN)


def _as_config(value: Any, name_or_path: str | None) -> PretrainedConfig | None:
    """Turn a nested config dict (as stored in config.json) back into its backbone config class."""
    if value is None or isinstance(value, PretrainedConfig):
        return value
    if not isinstance(value, dict):
        raise TypeError(f"a backbone config must be a dict or PretrainedConfig, got {type(value).__name__}")
    value = dict(value)
    model_type = value.pop("model_type", None)
    if model_type is None:
        if name_or_path is None:
            raise ValueError("backbone config dict has no 'model_type' and no model name to resolve it from")
        return AutoConfig.from_pretrained(name_or_path)
    return AutoConfig.for_model(model_type, **value)


def _config_name(config: PretrainedConfig) -> str:
    return config._name_or_path or f"{config.model_type}-from-config"


class GLiClassConfig(PretrainedConfig):
    """Configuration of a GLiClass model (all architectures).

    The backbone config is nested as `encoder_config` (and `label_model_config` for bi-encoders). Special-token
    indices of -1 resolve to vocab_size, +1, +2, as in the official package.

    `exact_feature_spans` (ours): label and text vectors read exactly their own tokens. With
    `class_token_pooling="average"` every label's span ends at the label block's `<<SEP>>`, and
    `extract_text_features` pools the text's own segment (`[CLS] text`, or with `prompt_first`
    `<<SEP>>[prompt] text` without the few-shot examples). False (the default, and what official checkpoints
    mean) keeps the official spans: the last label runs to the end of the sequence unless extract_text_features is
    set, and extract_text_features pools everything from the first `<<SEP>>`, which without `prompt_first` holds
    no text at all.

    `segment_attention` (ours): "none" (the default; what official checkpoints mean) or "gated": the uni-encoder or
    fused bi-encoder reads the text and every label in its own `[CLS] ... [SEP]` segment, with learnt per-layer gates
    on the attention between segments that start closed, so a new model starts as the bi-encoder (see
    `gliclass.modeling.segments`). The official package cannot read such a checkpoint.
    """

    model_type = "GLiClass"
    is_composition = True

    def __init__(
        self,
        encoder_config: PretrainedConfig | dict | None = None,
        encoder_model: str | None = None,
        label_model_config: PretrainedConfig | dict | None = None,
        label_model_name: str | None = None,
        class_token_index: int = -1,
        text_token_index: int = -1,
        example_token_index: int = -1,
        ignore_index: int = -100,
        hidden_size: int | None = None,
        projector_hidden_act: str = "gelu",
        vocab_size: int | None = None,
        problem_type: str = "single_label_classification",
        max_num_classes: int = 25,
        use_lstm: bool = False,
        initializer_range: float = 0.03,
        scorer_type: str = "simple",
        scorer_num_heads: int = 16,
        scorer_mlp_hidden_size: int = 1024,
        scorer_attn_dropout: float = 0.1,
        pooling_strategy: str = "first",
        class_token_pooling: str = "first",
        focal_loss_alpha: float = 0.5,
        focal_loss_gamma: float = 2,
        focal_loss_reduction: str | None = None,
        logit_scale_init_value: float = 2.6592,
        normalize_features: bool = False,
        extract_text_features: bool = False,
        max_labels_alloc: str | int = "dynamic",
        contrastive_loss_coef: float = 0,
        architecture_type: str = "uni-encoder",
        prompt_first: bool = False,
        squeeze_layers: bool = False,
        layer_wise: bool = False,
        encoder_layer_id: int = -1,
        embed_class_token: bool = True,
        dropout: float = 0.1,
        use_segment_embeddings: bool = False,
        exact_feature_spans: bool = False,
        segment_attention: str = "none",
        **kwargs: Any,
    ) -> None:
        encoder_model = encoder_model or kwargs.pop("encoder_model_name", None)
        encoder_config = _as_config(encoder_config, encoder_model)
        if encoder_config is None:
            if encoder_model is None:
                # HF instantiates configs with no arguments (e.g. for diffs); default like the official package.
                encoder_config = AutoConfig.for_model("deberta-v2")
            else:
                encoder_config = AutoConfig.from_pretrained(encoder_model)
        self.encoder_config = encoder_config
        # the official loader needs both names as strings (it builds paths from them), even for random backbones
        self.encoder_model_name = encoder_model or _config_name(encoder_config)
        self.label_model_config = _as_config(label_model_config, label_model_name)
        if self.label_model_config is None and label_model_name is not None:
            self.label_model_config = AutoConfig.from_pretrained(label_model_name)
        self.label_model_name = label_model_name
        if label_model_name is None and self.label_model_config is not None:
            self.label_model_name = _config_name(self.label_model_config)

        text_config = encoder_config.get_text_config()
        self.hidden_size = hidden_size if hidden_size is not None else text_config.hidden_size
        self.vocab_size = vocab_size if vocab_size is not None else text_config.vocab_size
        self.class_token_index = class_token_index if class_token_index != -1 else self.vocab_size
        self.text_token_index = text_token_index if text_token_index != -1 else self.vocab_size + 1
        self.example_token_index = example_token_index if example_token_index != -1 else self.vocab_size + 2

        self.ignore_index = ignore_index
        self.projector_hidden_act = projector_hidden_act
        self.max_num_classes = max_num_classes
        self.use_lstm = use_lstm
        self.initializer_range = initializer_range
        self.scorer_type = scorer_type
        self.scorer_num_heads = scorer_num_heads
        self.scorer_mlp_hidden_size = scorer_mlp_hidden_size
        self.scorer_attn_dropout = scorer_attn_dropout
        self.pooling_strategy = pooling_strategy
        self.class_token_pooling = class_token_pooling
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.focal_loss_reduction = focal_loss_reduction
        self.logit_scale_init_value = logit_scale_init_value
        self.normalize_features = normalize_features
        self.extract_text_features = extract_text_features
        self.max_labels_alloc = max_labels_alloc
        self.contrastive_loss_coef = contrastive_loss_coef
        self.architecture_type = architecture_type
        self.prompt_first = prompt_first
        self.squeeze_layers = squeeze_layers
        self.layer_wise = layer_wise
        self.encoder_layer_id = encoder_layer_id
        self.embed_class_token = embed_class_token
        self.dropout = dropout
        self.use_segment_embeddings = use_segment_embeddings
        self.exact_feature_spans = exact_feature_spans
        self.segment_attention = segment_attention
        self.pad_token_id = text_config.pad_token_id
        super().__init__(problem_type=problem_type, **kwargs)
        self.validate()

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        """As `PretrainedConfig.from_dict`, then `validate` again: keyword overrides (`from_pretrained(path,
        squeeze_layers=True)`, also through `GLiClassModel.from_pretrained`) are set after `__init__` validated the
        saved fields, and would otherwise skip every check."""
        result = super().from_dict(config_dict, **kwargs)
        config = result[0] if isinstance(result, tuple) else result
        config.validate()
        return result

    def validate(self) -> None:
        """Fail early, naming the field, instead of building a model that crashes or silently misbehaves."""
        choices = {
            "architecture_type": ARCHITECTURES,
            "pooling_strategy": POOLINGS,
            "scorer_type": SCORERS,
            "class_token_pooling": CLASS_TOKEN_POOLINGS,
        }
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field}={getattr(self, field)!r} is not supported; choose one of {list(allowed)}")
        if self.scorer_type == "cross-attn" and self.pooling_strategy != "pass":
            raise ValueError("scorer_type='cross-attn' attends over text tokens: it needs pooling_strategy='pass'")
        if self.pooling_strategy == "pass" and self.scorer_type != "cross-attn":
            raise ValueError("pooling_strategy='pass' keeps all text tokens: only scorer_type='cross-attn' uses them")
        if self.architecture_type in ("bi-encoder", "bi-encoder-fused") and self.pooling_strategy == "pass":
            raise ValueError(
                f"pooling_strategy='pass' (scorer_type='cross-attn') is not supported with architecture_type="
                f"{self.architecture_type!r}: its label encoder needs a pooling that gives one vector per label"
            )
        if self.architecture_type in ("bi-encoder", "bi-encoder-fused") and self.label_model_config is None:
            raise ValueError(
                f"architecture_type={self.architecture_type!r} needs label_model_config or label_model_name"
            )
        if self.architecture_type == "encoder-decoder" and not getattr(
            self.encoder_config, "is_encoder_decoder", False
        ):
            raise ValueError(
                f"architecture_type='encoder-decoder' needs an encoder-decoder backbone (T5, BART); "
                f"got model_type={self.encoder_config.model_type!r}"
            )
        if self.layer_wise:
            raise ValueError("layer_wise=True (a loss on every encoder layer) is not supported; use squeeze_layers")
        self._validate_uni_encoder_options()
        self._validate_segment_attention()
        num_states = getattr(self.encoder_config.get_text_config(), "num_hidden_layers", None)
        if (
            self.encoder_layer_id != -1
            and num_states is not None
            and not -num_states - 1 <= self.encoder_layer_id <= num_states
        ):
            raise ValueError(
                f"encoder_layer_id={self.encoder_layer_id} is out of range: the backbone returns "
                f"{num_states + 1} hidden states (embeddings + {num_states} layers)"
            )

    def _validate_uni_encoder_options(self) -> None:
        """Options that only the uni-encoder reads: the other architectures would silently ignore them."""
        if self.architecture_type != "uni-encoder":
            # extract_text_features also ends the average label spans at <<SEP>>, which fused and encoder-decoder read
            cuts_label_spans = self.architecture_type != "bi-encoder" and self.class_token_pooling == "average"
            unread = {
                "squeeze_layers": self.squeeze_layers,
                "encoder_layer_id": self.encoder_layer_id != -1,
                "use_segment_embeddings": self.use_segment_embeddings,
                "extract_text_features": self.extract_text_features and not cuts_label_spans,
            }
            for field, is_set in unread.items():
                if is_set:
                    arch = f"architecture_type={self.architecture_type!r}"
                    if field == "extract_text_features":
                        arch += f" with class_token_pooling={self.class_token_pooling!r}"
                    raise ValueError(
                        f"{field}={getattr(self, field)!r} is read only by the uni-encoder: {arch} would silently "
                        "ignore it"
                    )
        if self.encoder_layer_id != -1 and self.squeeze_layers:
            raise ValueError(
                f"encoder_layer_id={self.encoder_layer_id} and squeeze_layers=True both choose the token states "
                "(encoder_layer_id would silently win); set only one of them"
            )

    def _validate_segment_attention(self) -> None:
        """`segment_attention="gated"` (ours, see `gliclass.modeling.segments`): the text and every label are laid out
        as the backbone reads each alone, and attention between them is gated (closed at initialisation)."""
        if self.segment_attention not in SEGMENT_ATTENTIONS:
            raise ValueError(
                f"segment_attention={self.segment_attention!r} is not supported; choose one of {list(SEGMENT_ATTENTIONS)}"
            )
        if self.segment_attention == "none":
            return
        if self.architecture_type not in ("uni-encoder", "bi-encoder-fused"):
            raise ValueError(
                f"segment_attention={self.segment_attention!r} needs architecture_type 'uni-encoder' or "
                f"'bi-encoder-fused', got {self.architecture_type!r}"
            )
        conflicts = {
            "use_segment_embeddings": (self.use_segment_embeddings, "the segment layout already marks the segments"),
            "prompt_first": (self.prompt_first, "the prompt is read in the text's own segment, as a bi-encoder does"),
            "embed_class_token": (
                not self.embed_class_token,
                "each label's segment starts with the backbone's own start token, which its pooling reads",
            ),
        }
        for field, (is_set, why) in conflicts.items():
            if is_set:
                raise ValueError(
                    f"{field}={getattr(self, field)!r} is not supported with segment_attention="
                    f"{self.segment_attention!r}: {why}"
                )
        if self.pooling_strategy == "pass":
            raise ValueError(
                f"pooling_strategy='pass' is not supported with segment_attention={self.segment_attention!r}: every "
                "label segment is pooled into one vector, as in a bi-encoder"
            )
        model_type = self.encoder_config.get_text_config().model_type
        if model_type not in SEGMENT_ATTENTION_BACKBONES:
            raise ValueError(
                f"segment_attention={self.segment_attention!r} supports the backbones "
                f"{list(SEGMENT_ATTENTION_BACKBONES)}; got model_type={model_type!r}"
            )

    @property
    def uses_label_encoder(self) -> bool:
        return self.architecture_type in ("bi-encoder", "bi-encoder-fused")
