"""The four GLiClass architectures (paper 2.1.8), as plain nn.Modules.

Attribute names match the official checkpoints (`encoder_model`, `label_encoder`, `text_projector`, ...). Each
architecture returns a `GLiClassOutput`; scoring (projection, normalisation, scorer, logit scale) is shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PretrainedConfig, T5EncoderModel, UMT5EncoderModel
from transformers.utils import ModelOutput

from gliclass.config import GLiClassConfig
from gliclass.modeling.layers import FeaturesProjector, LayerwiseAttention, LstmEncoder
from gliclass.modeling.poolings import build_pooling
from gliclass.modeling.scorers import build_scorer

EPS = 1e-8


@dataclass
class GLiClassOutput(ModelOutput):
    """Logits for every label slot; read them with `labels_mask` (padded slots hold no meaning)."""

    logits: torch.Tensor | None = None
    labels_mask: torch.Tensor | None = None
    text_embeddings: torch.Tensor | None = None
    class_embeddings: torch.Tensor | None = None
    token_embeddings: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None


def build_backbone(config: PretrainedConfig, vocab_size: int | None = None) -> nn.Module:
    """A randomly initialised encoder (T5-family: encoder only), grown to `vocab_size` for the added tokens."""
    if config.model_type in ("t5", "mt5"):
        model = T5EncoderModel(config)
    elif config.model_type == "umt5":
        model = UMT5EncoderModel(config)
    else:
        model = AutoModel.from_config(config)
    if vocab_size is not None and model.get_input_embeddings().num_embeddings < vocab_size:
        model.resize_token_embeddings(vocab_size)
    return model


def class_features(
    config: GLiClassConfig, states: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_slots: int
) -> torch.Tensor:
    """Label vectors [B, C, D] from the `<<LABEL>>` positions (class_token_pooling first / average)."""
    is_class = input_ids == config.class_token_index
    class_rank = is_class.long().cumsum(dim=-1)  # k-th label token and the span after it carry rank k
    slots = torch.arange(1, num_slots + 1, device=input_ids.device).view(1, -1, 1)
    if config.class_token_pooling == "average":
        span = attention_mask.bool()
        # exact spans end every label at the block's <<SEP>>; the official ones only with extract_text_features
        # (else the last label runs to the end of the sequence)
        if config.exact_feature_spans or config.extract_text_features:
            span = span & ((input_ids == config.text_token_index).long().cumsum(dim=-1) == 0)
        select = (class_rank.unsqueeze(1) == slots) & span.unsqueeze(1)
        if not config.embed_class_token:
            select = select & ~is_class.unsqueeze(1)
        select = select.to(states.dtype)
        return torch.einsum("bks,bsd->bkd", select, states) / select.sum(-1, keepdim=True).clamp(min=1)
    select = is_class.unsqueeze(1) & (class_rank.unsqueeze(1) == slots)
    if not config.embed_class_token:  # the token right after each <<LABEL>>
        select = F.pad(select[:, :, :-1], (1, 0), value=False)
    return torch.einsum("bks,bsd->bkd", select.to(states.dtype), states)


class GLiClassBase(nn.Module):
    """Projectors, pooling, scorer and logit scale shared by every architecture."""

    def __init__(self, config: GLiClassConfig) -> None:
        super().__init__()
        self.config = config
        enc_hidden = config.encoder_config.get_text_config().hidden_size
        self.text_projector = FeaturesProjector(
            enc_hidden, config.hidden_size, enc_hidden, config.projector_hidden_act, config.dropout
        )
        self.classes_projector = FeaturesProjector(
            enc_hidden, config.hidden_size, enc_hidden, config.projector_hidden_act, config.dropout
        )
        self.pooler = build_pooling(config.pooling_strategy, enc_hidden)
        self.scorer = build_scorer(config)
        if config.use_lstm:
            self.lstm = LstmEncoder(enc_hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if not self.config.normalize_features:
            return x
        return x / (x.norm(p=2, dim=-1, keepdim=True) + EPS)

    def pool_text(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.config.use_lstm:
            states = self.lstm(states, mask)
        return self.normalize(self.dropout(self.text_projector(self.pooler(states, mask))))

    def score(
        self,
        text: torch.Tensor,
        classes: torch.Tensor,
        text_mask: torch.Tensor,
        always_scale: bool,
        labels_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits = self.scorer(text, classes, text_mask=text_mask, labels_mask=labels_mask)
        if always_scale or self.config.normalize_features:
            logits = logits * self.logit_scale
        return logits


def _refuse_unread(arch: str, why: str, **inputs: torch.Tensor | None) -> None:
    """`GLiClassModel.forward` hands every input to every architecture: one that this architecture does not read
    must be None, never silently ignored (label vectors given to a uni-encoder would change nothing)."""
    given = [name for name, value in inputs.items() if value is not None]
    if given:
        raise ValueError(
            f"{arch} does not read {', '.join(given)} ({why}); leave {'it' if len(given) == 1 else 'them'} unset"
        )


def _first_slots(counts: torch.Tensor, width: int) -> torch.Tensor:
    """[B, width] mask of each row's first `counts[row]` slots."""
    return torch.arange(width, device=counts.device).unsqueeze(0) < counts.unsqueeze(1)


def _label_slots(labels_mask: torch.Tensor | None, input_ids: torch.Tensor, class_token_index: int) -> torch.Tensor:
    """`labels_mask` checked against the `<<LABEL>>` tokens of `input_ids`, or derived from them when not given."""
    counts = (input_ids == class_token_index).sum(-1)
    if labels_mask is None:
        slots = int(counts.max()) if counts.numel() else 0
        return _first_slots(counts, slots)
    labels_mask = labels_mask.bool()
    # data-dependent check: skipped while torch.export traces (ONNX export), where it cannot be evaluated; under
    # torch.compile an in-graph assertion (same condition, shorter message) keeps the graph whole
    if torch.compiler.is_exporting():
        return labels_mask
    if torch.compiler.is_compiling():
        expected = _first_slots(counts, labels_mask.shape[1])
        ok = (counts <= labels_mask.shape[1]).all() & (labels_mask == expected).all()
        torch._assert_async(ok, "labels_mask must mark exactly the first n slots of a row with n <<LABEL>> tokens")
        return labels_mask
    _check_label_slots(labels_mask, counts)
    return labels_mask


def _check_label_slots(labels_mask: torch.Tensor, counts: torch.Tensor) -> None:
    """Slot k of a row is read from its k-th `<<LABEL>>`, so a row with n of them must mark exactly its first n slots
    (any other slot would silently get a zero vector and a plausible logit)."""
    expected = _first_slots(counts, labels_mask.shape[1])
    if bool((counts <= labels_mask.shape[1]).all()) and torch.equal(labels_mask, expected):
        return
    marked = labels_mask.sum(-1)
    row = int((labels_mask != expected).any(-1).logical_or(counts > labels_mask.shape[1]).nonzero()[0, 0])
    if marked[row] != counts[row]:
        raise ValueError(
            f"the number of <<LABEL>> tokens differs from the number of labels: row {row} has {int(counts[row])} "
            f"<<LABEL>> tokens but labels_mask marks {int(marked[row])} slots"
        )
    raise ValueError(
        f"labels_mask must mark the first {int(counts[row])} slots of row {row} (slot k is read from its k-th "
        f"<<LABEL>>), but it marks slots {labels_mask[row].nonzero().flatten().tolist()}"
    )


class UniEncoder(GLiClassBase):
    """Text and labels in one sequence through one encoder (paper eqs. 9-12)."""

    def __init__(self, config: GLiClassConfig) -> None:
        super().__init__(config)
        self.encoder_model = build_backbone(config.encoder_config, config.vocab_size)
        text_config = config.encoder_config.get_text_config()
        if config.use_segment_embeddings:
            self.segment_embeddings = nn.Embedding(3, text_config.hidden_size)
        if config.squeeze_layers:
            self.layer_wise_attention = LayerwiseAttention(text_config.num_hidden_layers + 1, text_config.hidden_size)

    def segment_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """0 before the first <<SEP>>, 1 from it on, 2 from the first <<EXAMPLE>> on."""
        after_sep = (input_ids == self.config.text_token_index).long().cumsum(-1) > 0
        after_example = (input_ids == self.config.example_token_index).long().cumsum(-1) > 0
        return torch.where(after_example, 2, after_sep.long())

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        kwargs = {
            "attention_mask": attention_mask,
            "output_hidden_states": self.needs_hidden_states,
            "return_dict": True,
        }
        if self.config.use_segment_embeddings:
            embeds = self.encoder_model.get_input_embeddings()(input_ids)
            outputs = self.encoder_model(
                inputs_embeds=embeds + self.segment_embeddings(self.segment_ids(input_ids)), **kwargs
            )
        else:
            outputs = self.encoder_model(input_ids=input_ids, **kwargs)
        return self.select_states(outputs, attention_mask)

    @property
    def needs_hidden_states(self) -> bool:
        """Whether `select_states` reads every layer's states (a chosen layer, or the layer-wise squeeze)."""
        return self.config.squeeze_layers or self.config.encoder_layer_id != -1

    def select_states(self, outputs: Any, attention_mask: torch.Tensor) -> torch.Tensor:
        """The token states the heads read: `encoder_layer_id`'s layer, the layer-wise squeeze, or the last layer."""
        if self.config.encoder_layer_id != -1:
            return outputs.hidden_states[self.config.encoder_layer_id]
        if self.config.squeeze_layers:
            return self.layer_wise_attention(outputs.hidden_states, attention_mask)
        return outputs.last_hidden_state

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels_mask: torch.Tensor | None = None,
        class_input_ids: torch.Tensor | None = None,
        class_attention_mask: torch.Tensor | None = None,
        class_embeddings: torch.Tensor | None = None,
    ) -> GLiClassOutput:
        _refuse_unread(
            "uni-encoder",
            "its labels are read inside the text sequence",
            class_input_ids=class_input_ids,
            class_attention_mask=class_attention_mask,
            class_embeddings=class_embeddings,
        )
        labels_mask = _label_slots(labels_mask, input_ids, self.config.class_token_index)
        states = self.encode(input_ids, attention_mask)
        classes = class_features(self.config, states, input_ids, attention_mask, labels_mask.shape[1])
        text_states, text_mask = states, attention_mask
        if self.config.extract_text_features:
            text_states, text_mask = self.text_span(states, input_ids, attention_mask)
        text = self.pool_text(text_states, text_mask)
        classes = self.normalize(self.classes_projector(classes))
        logits = self.score(text, classes, text_mask, always_scale=False, labels_mask=labels_mask)
        return GLiClassOutput(logits, labels_mask, text, classes, states, attention_mask)

    def text_span(
        self, states: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The token states and mask that extract_text_features pools into the text vector.

        Official spans (`exact_feature_spans=False`): every row shifted to start at its first <<SEP>>, which with
        `prompt_first=False` (`text<<LABEL>>...<<SEP>>[prompt][examples]`) holds no text at all. Exact spans: the
        text's own segment, `[CLS] text` before the first <<LABEL>>, or with `prompt_first` the shifted row up to
        its few-shot examples (`<<SEP>>[prompt] text`).
        """
        exact = self.config.exact_feature_spans
        if exact and not self.config.prompt_first:
            before_labels = (input_ids == self.config.class_token_index).long().cumsum(dim=-1) == 0
            return states, attention_mask * before_labels
        length = input_ids.shape[1]
        start = (input_ids == self.config.text_token_index).int().argmax(dim=-1)
        offsets = torch.arange(length, device=input_ids.device).unsqueeze(0)
        valid = offsets < (length - start).unsqueeze(1)
        source = (start.unsqueeze(1) + offsets).clamp(max=length - 1)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(1)
        if exact:
            valid = valid & ((input_ids[rows, source] == self.config.example_token_index).long().cumsum(dim=-1) == 0)
        return states[rows, source] * valid.unsqueeze(-1).to(states.dtype), attention_mask[rows, source] * valid


class BiEncoder(GLiClassBase):
    """A text encoder and a separate label encoder (paper eqs. 13-15); label vectors can be cached."""

    def __init__(self, config: GLiClassConfig) -> None:
        super().__init__(config)
        # the fused variant looks up <<LABEL>> ids before replacing them, so the table must cover them
        vocab = config.vocab_size if config.architecture_type == "bi-encoder-fused" else None
        self.encoder_model = build_backbone(config.encoder_config, vocab)
        self.label_encoder = build_backbone(config.label_model_config)
        self.biencoder_projector = FeaturesProjector(
            config.label_model_config.hidden_size,
            config.hidden_size,
            config.encoder_config.hidden_size,
            config.projector_hidden_act,
            dropout=None,
        )
        # the label tower's own pooler, at its own width (only "attn" has weights: `model.label_pooler.score`)
        self.label_pooler = build_pooling(config.pooling_strategy, config.label_model_config.hidden_size)

    def encode_labels(self, class_input_ids: torch.Tensor, class_attention_mask: torch.Tensor) -> torch.Tensor:
        """[N, Lc] tokenised labels -> [N, D] label vectors (independent of text: cacheable)."""
        states = self.label_encoder(input_ids=class_input_ids, attention_mask=class_attention_mask).last_hidden_state
        pooled = self.label_pooler(states, class_attention_mask)
        return self.normalize(self.classes_projector(self.biencoder_projector(pooled)))

    def gather_labels(
        self,
        labels_mask: torch.Tensor,
        class_input_ids: torch.Tensor | None,
        class_attention_mask: torch.Tensor | None,
        class_embeddings: torch.Tensor | None,
    ) -> torch.Tensor:
        """Label vectors [B, C, D]: only real label slots are encoded; padded slots stay zero."""
        if class_embeddings is not None:
            return class_embeddings
        if class_input_ids is None or class_attention_mask is None:
            raise ValueError(f"{self.config.architecture_type} needs class_input_ids and class_attention_mask")
        rows, cols = labels_mask.nonzero(as_tuple=True)
        ids, mask = class_input_ids[rows, cols], class_attention_mask[rows, cols]
        if ids.shape[0] > 1 and not (torch.compiler.is_compiling() or torch.compiler.is_exporting()):
            # batches repeat a dataset's labels across texts: encode each distinct label once (the gradient still
            # reaches it from every slot); traced graphs (compile, ONNX) keep the plain path, whose shapes are static
            unique, inverse = torch.unique(torch.cat([ids, mask.to(ids.dtype)], dim=1), dim=0, return_inverse=True)
            width = ids.shape[1]
            flat = self.encode_labels(unique[:, :width], unique[:, width:].to(mask.dtype))[inverse]
        else:
            flat = self.encode_labels(ids, mask)
        out = flat.new_zeros(*labels_mask.shape, flat.shape[-1])
        out[rows, cols] = flat
        return out

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels_mask: torch.Tensor | None = None,
        class_input_ids: torch.Tensor | None = None,
        class_attention_mask: torch.Tensor | None = None,
        class_embeddings: torch.Tensor | None = None,
    ) -> GLiClassOutput:
        labels_mask = self._labels_mask(labels_mask, class_input_ids, class_embeddings)
        classes = self.gather_labels(labels_mask, class_input_ids, class_attention_mask, class_embeddings)
        states = self.encoder_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        text = self.pool_text(states, attention_mask)
        logits = self.score(text, classes, attention_mask, always_scale=True, labels_mask=labels_mask)
        return GLiClassOutput(logits, labels_mask, text, classes, states, attention_mask)

    @staticmethod
    def _labels_mask(
        labels_mask: torch.Tensor | None, class_input_ids: torch.Tensor | None, class_embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        if labels_mask is not None:
            return labels_mask.bool()
        reference = class_embeddings if class_embeddings is not None else class_input_ids
        if reference is None:
            raise ValueError("a bi-encoder needs labels: pass class_input_ids or class_embeddings")
        return torch.ones(reference.shape[:2], dtype=torch.bool, device=reference.device)


class FusedBiEncoder(BiEncoder):
    """Label-encoder vectors replace the `<<LABEL>>` input embeddings of the text encoder (paper eqs. 16-20)."""

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels_mask: torch.Tensor | None = None,
        class_input_ids: torch.Tensor | None = None,
        class_attention_mask: torch.Tensor | None = None,
        class_embeddings: torch.Tensor | None = None,
    ) -> GLiClassOutput:
        labels_mask = self._labels_mask(labels_mask, class_input_ids, class_embeddings)
        labels_mask = _label_slots(labels_mask, input_ids, self.config.class_token_index)
        raw = self.gather_labels(labels_mask, class_input_ids, class_attention_mask, class_embeddings)
        is_class = input_ids == self.config.class_token_index
        embeds = self.encoder_model.get_input_embeddings()(input_ids)
        # k-th <<LABEL>> of a row <- k-th real label of that row (both enumerate row-major)
        embeds = embeds.masked_scatter(is_class.unsqueeze(-1), raw[labels_mask].to(embeds.dtype))
        states = self.encoder_model(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        classes = class_features(self.config, states, input_ids, attention_mask, labels_mask.shape[1])
        text = self.pool_text(states, attention_mask)
        logits = self.score(text, classes, attention_mask, always_scale=True, labels_mask=labels_mask)
        return GLiClassOutput(logits, labels_mask, text, classes, states, attention_mask)


class EncoderDecoder(GLiClassBase):
    """Text into the encoder, the label prompt into the decoder with cross-attention (paper eqs. 21-24)."""

    def __init__(self, config: GLiClassConfig) -> None:
        super().__init__(config)
        self.encoder_decoder_model = AutoModel.from_config(config.encoder_config)
        if self.encoder_decoder_model.get_input_embeddings().num_embeddings < config.vocab_size:
            self.encoder_decoder_model.resize_token_embeddings(config.vocab_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels_mask: torch.Tensor | None = None,
        class_input_ids: torch.Tensor | None = None,
        class_attention_mask: torch.Tensor | None = None,
        class_embeddings: torch.Tensor | None = None,
    ) -> GLiClassOutput:
        _refuse_unread(
            "encoder-decoder", "its decoder reads the label prompt (class_input_ids)", class_embeddings=class_embeddings
        )
        if class_input_ids is None or class_attention_mask is None:
            raise ValueError("encoder-decoder needs class_input_ids and class_attention_mask (the label prompt)")
        labels_mask = _label_slots(labels_mask, class_input_ids, self.config.class_token_index)
        dtype = self.logit_scale.dtype
        # a 4D mask makes the decoder bidirectional over the label prompt (no causal mask)
        decoder_mask = (1.0 - class_attention_mask.to(dtype))[:, None, None, :] * torch.finfo(dtype).min
        decoder_mask = decoder_mask.expand(-1, 1, class_input_ids.shape[1], -1)
        outputs = self.encoder_decoder_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=class_input_ids,
            decoder_attention_mask=decoder_mask,
            return_dict=True,
        )
        states = outputs.encoder_last_hidden_state
        classes = class_features(
            self.config, outputs.last_hidden_state, class_input_ids, class_attention_mask, labels_mask.shape[1]
        )
        text = self.pool_text(states, attention_mask)
        classes = self.normalize(self.classes_projector(classes))
        logits = self.score(text, classes, attention_mask, always_scale=False, labels_mask=labels_mask)
        return GLiClassOutput(logits, labels_mask, text, classes, states, attention_mask)


ARCHITECTURE_CLASSES: dict[str, type[GLiClassBase]] = {
    "uni-encoder": UniEncoder,
    "bi-encoder": BiEncoder,
    "bi-encoder-fused": FusedBiEncoder,
    "encoder-decoder": EncoderDecoder,
}
