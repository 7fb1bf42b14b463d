"""Gated segment attention (`segment_attention="gated"`): uni-encoder and fused bi-encoder that are exactly the
bi-encoder at initialisation, and learn joint attention from there.

Layout (built by `GLiClassProcessor.segments`): every segment is what the backbone reads alone,

    uni-encoder:       [CLS] text [SEP] <<LABEL>> label_1 [SEP] <<LABEL>> label_2 [SEP] ... <<EXAMPLE>> example [SEP]
    bi-encoder-fused:  [CLS] text [SEP] <<LABEL>> [SEP] <<LABEL>> [SEP] ...

The `<<LABEL>>` / `<<EXAMPLE>>` markers stay in the token ids (they start a segment and number the label slots, as
in the official format); `<<SEP>>` is not used. The uni-encoder embeds every marker as the row's first token (the
backbone's own start token, `[CLS]`), so a label segment is `[CLS] label [SEP]`, exactly what a bi-encoder's label
tower reads. The fused bi-encoder embeds each `<<LABEL>>` as its label-tower vector, as the plain fused one does.
Position ids restart at every segment (absolute-position backbones such as BERT; rotary and relative ones see the
same within-segment distances either way).

Attention between two different segments gets, in every layer l, the additive bias

    log(g_l) + log(n_same / n_cross)

where n_same / n_cross count the real keys in the query's own segment / in the other segments. So g_l is the ratio of
the attention mass a token gives the other segments to what it gives its own, at equal scores, whatever the segment
lengths and the number of labels; 0 is closed. The learnt parameter (`segment_gates.segment_gate`, one per layer) is
g / GATE_SCALE, starting at 0: Adam moves a parameter by about its learning rate per step, so the gate opens at
GATE_SCALE x the head's rate. The forward uses max(g, GATE_FLOOR) with the gradient passed straight through: at the
floor a cross-segment key weighs 1e-16 of a same-segment one (below float32 resolution, so the untrained model's text
and label vectors are the bi-encoder's), and the gradient with respect to g is still the exact, finite d(loss)/dg, so
training can open the gate. (A hard -inf / underflow to exactly 0 would give it no gradient at all.)

The uni-encoder pools the text's own segment into the text vector and each label's segment into its label vector
(the bi-encoder's poolings). The fused one adds `slot_gate` (0 at first) times the encoder's state at each label slot
to that label's tower vector. Logits are scaled as the bi-encoder's.

The bias reaches each layer through the backbone's own attention: a forward pre-hook composes it with the mask that
BERT / ModernBERT pass to their self-attention (eager and sdpa), and DeBERTa-v2's relative-position bias gets it added
(its mask is boolean). Other backbones are refused (`SEGMENT_ATTENTION_BACKBONES`), as are gradient checkpointing and
ONNX export. The official gliclass package cannot read these checkpoints (`GLiClassModel.save_pretrained` warns).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gliclass.config import SEGMENT_ATTENTION_BACKBONES, GLiClassConfig
from gliclass.modeling.architectures import FusedBiEncoder, GLiClassOutput, UniEncoder, _label_slots, _refuse_unread
from gliclass.modeling.poolings import build_pooling

GATE_FLOOR = 1e-16
GATE_SCALE = 10.0
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")
_STATE = "_gliclass_segment_gate"  # attribute of a hooked attention module: its `_GateState` during a forward


@dataclass
class _GateState:
    """One layer's view of the current forward: which (query, key) pairs cross segments, the per-query length term
    and the layer's log gate."""

    cross: torch.Tensor  # [B, 1, L, L] bool
    offset: torch.Tensor  # [B, 1, L, 1] log(n_same / n_cross)
    log_gate: torch.Tensor  # 0-d

    def bias(self, dtype: torch.dtype) -> torch.Tensor:
        value = (self.log_gate + self.offset).to(dtype)
        return torch.where(self.cross, value, value.new_zeros(()))


def _compose(mask: torch.Tensor | None, bias: torch.Tensor) -> torch.Tensor:
    """The backbone's own mask (None, boolean keep-mask or additive float mask) with the segment bias added."""
    if mask is None:
        return bias
    if mask.dtype == torch.bool:
        return torch.where(mask, bias, torch.finfo(bias.dtype).min)
    return mask.to(bias.dtype) + bias


def _attention_pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """BERT / ModernBERT self-attention: add the segment bias to the `attention_mask` it is called with."""
    state = module.__dict__.get(_STATE)
    if state is None:
        return None
    if "attention_mask" not in kwargs:
        raise RuntimeError(
            f"{type(module).__name__} was called without an attention_mask keyword: this transformers version passes "
            "masks differently, so the gated segment attention cannot bias it"
        )
    implementation = getattr(getattr(module, "config", None), "_attn_implementation", "eager")
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"segment_attention='gated' needs attn_implementation in {list(ATTENTION_IMPLEMENTATIONS)} (an additive "
            f"mask per layer), got {implementation!r}"
        )
    dtype = args[0].dtype if args and torch.is_tensor(args[0]) else kwargs["hidden_states"].dtype
    kwargs["attention_mask"] = _compose(kwargs["attention_mask"], state.bias(dtype))
    return args, kwargs


def _deberta_bias(module: nn.Module, query_layer, key_layer, relative_pos, rel_embeddings, scale_factor):
    """DeBERTa-v2's relative-position bias [B*H, L, L] plus the segment bias (its own mask is boolean)."""
    score = type(module).disentangled_attention_bias(
        module, query_layer, key_layer, relative_pos, rel_embeddings, scale_factor
    )
    state = module.__dict__.get(_STATE)
    if state is None:
        return score
    bias = state.bias(query_layer.dtype)
    heads, q_len, k_len = module.num_attention_heads, query_layer.size(-2), key_layer.size(-2)
    if not torch.is_tensor(score):  # no c2p / p2c terms: the bias alone
        return bias.expand(-1, heads, -1, -1).reshape(-1, q_len, k_len)
    return (score.view(-1, heads, q_len, k_len) + bias).view(-1, q_len, k_len)


def install_segment_gates(backbone: nn.Module) -> list[nn.Module]:
    """Hook the backbone's per-layer attention modules so they add the gate bias; returns them, first layer first."""
    config = backbone.config
    model_type = config.model_type
    if model_type == "bert":
        modules = [layer.attention.self for layer in backbone.encoder.layer]
    elif model_type == "modernbert":
        modules = [layer.attn for layer in backbone.layers]
    elif model_type == "deberta-v2":
        if not getattr(config, "relative_attention", False):
            raise ValueError(
                "segment_attention='gated' on DeBERTa-v2 adds its bias to the relative-position bias: the backbone "
                "needs relative_attention=True (as DeBERTa-v3 has)"
            )
        if getattr(config, "conv_kernel_size", 0) > 0:
            raise ValueError(
                "segment_attention='gated' does not support DeBERTa-v2's convolution layer (conv_kernel_size > 0): it "
                "mixes neighbouring tokens across segment boundaries"
            )
        modules = [layer.attention.self for layer in backbone.encoder.layer]
    else:
        raise ValueError(
            f"segment_attention='gated' supports the backbones {list(SEGMENT_ATTENTION_BACKBONES)}; got "
            f"model_type={model_type!r}"
        )
    for module in modules:
        if module.__dict__.get("_gliclass_gated"):
            continue
        if model_type == "deberta-v2":
            # an instance attribute found before the class method; a partial of a module-level function, so the
            # module still deep-copies (the copy's partial points at the copy) and pickles
            module.disentangled_attention_bias = functools.partial(_deberta_bias, module)
        else:
            module.register_forward_pre_hook(_attention_pre_hook, with_kwargs=True)
        module._gliclass_gated = True
    return modules


def segment_layout(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, config: GLiClassConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(segment ids [B, L] with -1 on padding, position ids restarting at every segment, the ids the backbone reads:
    every `<<LABEL>>` / `<<EXAMPLE>>` replaced by the row's first token, the backbone's start token)."""
    starts = (input_ids == config.class_token_index) | (input_ids == config.example_token_index)
    real = attention_mask.bool()
    segments = torch.where(real, starts.long().cumsum(-1), -1)
    index = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    first = torch.where(starts, index, 0).cummax(dim=-1).values
    positions = torch.where(real, index - first, 0)
    ids = torch.where(starts, input_ids[:, :1], input_ids)
    return segments, positions, ids


def cross_segment_terms(segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross [B, 1, L, L]: query and key in different segments; offset [B, 1, L, 1]: log(n_same / n_cross) of
    each query, counting real keys only, 0 where a row has no other segment)."""
    real = segments >= 0
    cross = segments[:, None, :, None] != segments[:, None, None, :]
    counts = torch.zeros(segments.shape, device=segments.device, dtype=torch.float32)  # segment ids are < L
    counts.scatter_add_(1, segments.clamp(min=0), real.float())
    same = counts.gather(1, segments.clamp(min=0)).clamp(min=1)
    other = real.sum(-1, keepdim=True).float() - same
    offset = torch.where(other > 0, same.log() - other.clamp(min=1).log(), 0.0)
    return cross, offset[:, None, :, None]


class SegmentGates(nn.Module):
    """The per-layer gates of one backbone and the forward that applies them (shared by the gated architectures)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.segment_gate = nn.Parameter(torch.zeros(len(install_segment_gates(backbone))))

    def values(self) -> torch.Tensor:
        """g per layer (0: closed): the cross- to same-segment attention mass ratio at equal scores."""
        return (GATE_SCALE * self.segment_gate).clamp(min=0)

    def named_values(self) -> dict[str, torch.Tensor]:
        """`{"layer_<i>": g_i}`: the gates by layer, as logged (`gate_log_values`)."""
        return {f"layer_{i}": value for i, value in enumerate(self.values())}

    def log_values(self) -> torch.Tensor:
        # floored forward value, gradient 1 (straight through); `gate - gate.detach()` is exactly 0 in the forward,
        # where `gate + (floored - gate).detach()` would round the floor away for any |gate| >> 1e-16
        gate = GATE_SCALE * self.segment_gate.float()
        return (gate.detach().clamp(min=GATE_FLOOR) + (gate - gate.detach())).log()

    def forward(self, backbone: nn.Module, segments: torch.Tensor, **inputs: torch.Tensor | bool) -> Any:
        """`backbone(**inputs)` with every layer's attention between different `segments` biased by its gate."""
        if torch.jit.is_tracing() or torch.compiler.is_exporting():
            # the label spans are gathered at a data-dependent width, which a traced graph would freeze
            raise ValueError("segment_attention='gated' models cannot be exported to ONNX (or traced); use torch")
        checkpointing = (
            "is_activation_checkpointing" if hasattr(type(backbone), "is_activation_checkpointing") else None
        )
        if getattr(backbone, checkpointing or "is_gradient_checkpointing", False):
            raise ValueError(
                "segment_attention='gated' does not support gradient checkpointing (the recomputed layers would "
                "miss the gate)"
            )
        modules = install_segment_gates(backbone)  # idempotent: finds the hooked modules (also under LoRA)
        log_gates = self.log_values()
        if len(modules) != log_gates.numel():
            raise RuntimeError(f"{len(modules)} attention layers but {log_gates.numel()} segment gates")
        cross, offset = cross_segment_terms(segments)
        try:
            for module, log_gate in zip(modules, log_gates, strict=True):
                setattr(module, _STATE, _GateState(cross, offset, log_gate))
            return backbone(**inputs)
        finally:
            for module in modules:
                module.__dict__.pop(_STATE, None)


def text_segment_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, config: GLiClassConfig) -> torch.Tensor:
    """The text's own segment: real tokens before the first `<<LABEL>>` / `<<EXAMPLE>>`."""
    starts = (input_ids == config.class_token_index) | (input_ids == config.example_token_index)
    return attention_mask * starts.long().cumsum(-1).eq(0)


class GatedUniEncoder(UniEncoder):
    """A uni-encoder over the segment layout, with gated cross-segment attention (see the module docstring).

    The text vector pools the text's own segment (`pooling_strategy`, as the bi-encoder's text tower); each label
    vector pools its own segment with `label_pooler` (the same pooling, its own weights for "attn", as the bi-encoder's
    label tower), so `class_token_pooling` is not read (nor `extract_text_features`: the text segment is always the
    one pooled). Logits are scaled like the bi-encoder's.
    """

    def __init__(self, config: GLiClassConfig) -> None:
        super().__init__(config)
        self.label_pooler = build_pooling(config.pooling_strategy, config.encoder_config.get_text_config().hidden_size)
        self.segment_gates = SegmentGates(self.encoder_model)

    def gate_values(self) -> dict[str, torch.Tensor]:
        return self.segment_gates.named_values()

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        segments, positions, ids = segment_layout(input_ids, attention_mask, self.config)
        outputs = self.segment_gates(
            self.encoder_model,
            segments,
            input_ids=ids,
            attention_mask=attention_mask,
            position_ids=positions,
            output_hidden_states=self.needs_hidden_states,
            return_dict=True,
        )
        return self.select_states(outputs, attention_mask)

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
        text_mask = text_segment_mask(input_ids, attention_mask, self.config)
        text = self.pool_text(states, text_mask)
        pooled = self.pool_labels(states, input_ids, attention_mask, labels_mask)
        classes = self.normalize(self.classes_projector(pooled))
        classes = torch.where(labels_mask.unsqueeze(-1), classes, classes.new_zeros(()))  # padded slots: zero
        logits = self.score(text, classes, text_mask, always_scale=True, labels_mask=labels_mask)
        return GLiClassOutput(logits, labels_mask, text, classes, states, attention_mask)

    def pool_labels(
        self, states: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels_mask: torch.Tensor
    ) -> torch.Tensor:
        """[B, C, D]: each label's segment (from its `<<LABEL>>` to its `[SEP]`) gathered and pooled."""
        batch, length = input_ids.shape
        num_slots = labels_mask.shape[1]
        is_label = input_ids == self.config.class_token_index
        is_start = is_label | (input_ids == self.config.example_token_index)
        index = torch.arange(length, device=input_ids.device)
        # a segment ends before the next start or at the row's last real token
        next_start = torch.where(is_start, index, length).flip(-1).cummin(-1).values.flip(-1)  # first start >= i
        next_start = torch.cat([next_start[:, 1:], next_start.new_full((batch, 1), length)], dim=1)  # first > i
        row_end = attention_mask.sum(-1, keepdim=True).expand(-1, length)
        end = torch.minimum(next_start, row_end)
        rank = (is_label.long().cumsum(-1) * is_label).clamp(max=num_slots)  # k at the k-th <<LABEL>>, else 0
        slot_start = torch.zeros(batch, num_slots + 1, dtype=torch.long, device=input_ids.device)
        slot_end = torch.zeros_like(slot_start)
        slot_start.scatter_(1, rank, index.expand(batch, -1) * is_label)
        slot_end.scatter_(1, rank, end * is_label)
        slot_start, slot_end = slot_start[:, 1:], slot_end[:, 1:]  # slot 0 collected the non-label tokens
        lengths = (slot_end - slot_start) * labels_mask
        width = max(int(lengths.max()) if lengths.numel() else 1, 1)
        offsets = torch.arange(width, device=input_ids.device)
        gather = (slot_start.unsqueeze(-1) + offsets).clamp(max=length - 1)  # [B, C, W]
        span = offsets < lengths.unsqueeze(-1)
        rows = torch.arange(batch, device=input_ids.device).view(-1, 1, 1)
        pooled = self.label_pooler(states[rows, gather].flatten(0, 1), span.flatten(0, 1))  # [B * C, D]
        return pooled.view(batch, num_slots, -1)


class GatedFusedBiEncoder(FusedBiEncoder):
    """The fused bi-encoder over the segment layout `[CLS] text [SEP] <<LABEL>> [SEP] <<LABEL>> [SEP] ...`, each
    `<<LABEL>>` embedded as its label-tower vector (as in the fused bi-encoder), attention between segments gated.

    A label's vector is its label-tower vector plus `slot_gate` times the encoder's state at its slot; `slot_gate`
    starts at 0 and the attention gates start closed, so the untrained model is the bi-encoder (text vector: the
    text's own segment), and training learns what reading the labels inside the text sequence adds.
    """

    def __init__(self, config: GLiClassConfig) -> None:
        super().__init__(config)
        self.segment_gates = SegmentGates(self.encoder_model)
        self.slot_gate = nn.Parameter(torch.zeros(()))

    def gate_values(self) -> dict[str, torch.Tensor]:
        return {**self.segment_gates.named_values(), "slot": self.slot_gate}

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
        segments, positions, ids = segment_layout(input_ids, attention_mask, self.config)
        is_class = input_ids == self.config.class_token_index
        embeds = self.encoder_model.get_input_embeddings()(ids)
        # k-th <<LABEL>> of a row <- k-th real label of that row (both enumerate row-major)
        embeds = embeds.masked_scatter(is_class.unsqueeze(-1), raw[labels_mask].to(embeds.dtype))
        states = self.segment_gates(
            self.encoder_model, segments, inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions
        ).last_hidden_state
        text_mask = text_segment_mask(input_ids, attention_mask, self.config)
        text = self.pool_text(states, text_mask)
        slots = torch.zeros_like(raw)
        slots[labels_mask] = states[is_class].to(slots.dtype)
        classes = self.normalize(raw + self.slot_gate * slots)
        logits = self.score(text, classes, text_mask, always_scale=True, labels_mask=labels_mask)
        return GLiClassOutput(logits, labels_mask, text, classes, states, attention_mask)


def gate_log_values(model: nn.Module) -> dict[str, torch.Tensor]:
    """`{"gates/layer_<i>": g_i, ...}` for a model with gated segment attention (TensorBoard), else empty."""
    arch = getattr(model, "model", None)
    if not isinstance(arch, GATED_ARCHITECTURES):  # wrapped (LoRA) or not gated: look inside
        arch = next((module for module in model.modules() if isinstance(module, GATED_ARCHITECTURES)), None)
    if arch is None:
        return {}
    return {f"gates/{name}": value.detach() for name, value in arch.gate_values().items()}


GATED_ARCHITECTURES = (GatedUniEncoder, GatedFusedBiEncoder)
GATED_CLASSES = {"uni-encoder": GatedUniEncoder, "bi-encoder-fused": GatedFusedBiEncoder}
