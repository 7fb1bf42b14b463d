"""`GLiClassModel`: the Hugging Face wrapper that owns the checkpoint format.

`self.model` holds the architecture, so every state-dict key starts with `model.` exactly as in the official
checkpoints; `save_pretrained` / `from_pretrained` read and write the official layout.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn
from transformers import PreTrainedModel

from gliclass.config import GLiClassConfig
from gliclass.modeling.architectures import ARCHITECTURE_CLASSES, GLiClassOutput
from gliclass.modeling.segments import GATED_CLASSES, GatedFusedBiEncoder, SegmentGates

log = logging.getLogger(__name__)


class GLiClassModel(PreTrainedModel):
    config_class = GLiClassConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _keys_to_ignore_on_load_unexpected = [r"position_ids"]
    # tied to `shared` in T5-family backbones (see tie_weights), so checkpoints store them once
    _keys_to_ignore_on_load_missing = [r"\.(encoder|decoder)\.embed_tokens\.weight$"]

    def __init__(self, config: GLiClassConfig) -> None:
        super().__init__(config)
        if config.segment_attention == "gated":
            self.model = GATED_CLASSES[config.architecture_type](config)
        else:
            self.model = ARCHITECTURE_CLASSES[config.architecture_type](config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Only GLiClass's own layers: backbones keep their own init (or their pretrained weights).
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LSTM):
            for name, param in module.named_parameters():
                if "weight" in name:
                    param.normal_(mean=0.0, std=std)
                else:
                    param.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, SegmentGates):  # closed: the model starts as the bi-encoder
            module.segment_gate.zero_()
        if isinstance(module, GatedFusedBiEncoder):
            module.slot_gate.zero_()

    def tie_weights(self, *args, **kwargs):
        # T5-family backbones share one embedding table; nested in our wrapper, HF's loader does not re-tie it
        # and would leave encoder/decoder.embed_tokens randomly initialised (the official package has this bug).
        result = super().tie_weights(*args, **kwargs)
        shared = getattr(self.backbone, "shared", None)
        if shared is not None:
            for part in ("encoder", "decoder"):
                embed = getattr(getattr(self.backbone, part, None), "embed_tokens", None)
                if embed is not None:
                    embed.weight = shared.weight
        return result

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        if self.config.segment_attention != "none":
            log.warning(
                "%s: config.json records segment_attention=%r, which only this codebase reads. The official gliclass "
                "package cannot read this checkpoint: it would build the plain architecture (no segment gates, "
                "labels read at the wrong positions) and score it wrongly without an error. Load it with "
                "gliclass.GLiClassModel.from_pretrained.",
                save_directory,
                self.config.segment_attention,
            )
        return super().save_pretrained(save_directory, *args, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_input_embeddings(value)

    @property
    def backbone(self) -> nn.Module:
        """The encoder that reads the text (and, for uni-encoders, the labels)."""
        if self.config.architecture_type == "encoder-decoder":
            return self.model.encoder_decoder_model
        return self.model.encoder_model

    def resize_token_embeddings(self, new_num_tokens: int, **kwargs) -> nn.Embedding:
        embeddings = self.backbone.resize_token_embeddings(new_num_tokens, **kwargs)
        self.config.vocab_size = embeddings.num_embeddings
        self.config.encoder_config.get_text_config().vocab_size = embeddings.num_embeddings
        return embeddings

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels_mask: torch.Tensor | None = None,
        class_input_ids: torch.Tensor | None = None,
        class_attention_mask: torch.Tensor | None = None,
        class_embeddings: torch.Tensor | None = None,
    ) -> GLiClassOutput:
        # no **kwargs: a misspelt argument (`label_mask=`) is a TypeError, not silently ignored
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels_mask=labels_mask,
            class_input_ids=class_input_ids,
            class_attention_mask=class_attention_mask,
            class_embeddings=class_embeddings,
        )

    def encode_labels(self, class_input_ids: torch.Tensor, class_attention_mask: torch.Tensor) -> torch.Tensor:
        """Bi-encoders only: label vectors [N, D], reusable across texts (see the pipeline's label cache)."""
        if not self.config.uses_label_encoder:
            raise ValueError(f"encode_labels needs a bi-encoder, not {self.config.architecture_type!r}")
        return self.model.encode_labels(class_input_ids, class_attention_mask)
