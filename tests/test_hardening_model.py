"""Model hardening (issue 12, items 3-6 and 9): bi-encoder label pooler, label-slot checks, uni-encoder-only
options, exact text/label spans, and unknown forward arguments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_BACKBONES, tiny_model, tiny_tokenizer
from safetensors.torch import load_file
from transformers import AutoConfig

from gliclass import GLiClassModel, build_model
from gliclass.config import GLiClassConfig

OFFICIAL = Path(__file__).parent / "fixtures" / "official"
TEXTS = ["good movie", "the service was terrible and the food was bad"]
LABELS = [["positive", "negative", "very good food"], ["food", "service"]]
EXAMPLES = [{"text": "great film", "labels": ["positive"]}]


# tiny tensors: one intra-op thread (conftest.single_thread)
pytestmark = pytest.mark.usefixtures("single_thread")


def _config(model_type: str = "bert", **overrides) -> AutoConfig:
    spec = {**TINY_BACKBONES[model_type], **overrides}
    return AutoConfig.for_model(spec.pop("model_type"), **spec)


# ------------------------------------------------------------------ item 3: one pooler per bi-encoder tower
def _narrow_label_backbone_model(arch: str):
    torch.manual_seed(0)
    narrow = {**TINY_BACKBONES["bert"], "hidden_size": 16, "intermediate_size": 32}
    model, processor = build_model(
        TINY_BACKBONES["bert"],
        tokenizer=tiny_tokenizer(),
        label_backbone=narrow,
        architecture_type=arch,
        pooling_strategy="attn",
        initializer_range=0.3,
    )
    return model.eval(), processor


@pytest.mark.parametrize("arch", ["bi-encoder", "bi-encoder-fused"])
def test_attn_pooling_with_a_narrower_label_backbone(arch):
    model, processor = _narrow_label_backbone_model(arch)
    assert model.model.pooler.score.in_features == 32
    assert model.model.label_pooler.score.in_features == 16
    batch = processor(TEXTS, LABELS)
    out = model(**batch)
    assert out.logits.shape == batch["labels_mask"].shape
    assert torch.isfinite(out.logits[out.labels_mask]).all()
    out.logits[out.labels_mask].sum().backward()
    for name in ("model.pooler.score.weight", "model.label_pooler.score.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_bi_encoder_towers_do_not_share_the_attention_vector():
    model, processor = tiny_model(architecture_type="bi-encoder", pooling_strategy="attn")
    assert model.model.pooler is not model.model.label_pooler
    batch = processor(TEXTS, LABELS)
    with torch.no_grad():
        before = model(**batch)
        model.model.label_pooler.score.weight.mul_(-3.0)
        after = model(**batch)
    torch.testing.assert_close(after.text_embeddings, before.text_embeddings)  # the text pooler is untouched
    mask = before.labels_mask
    assert not torch.allclose(after.class_embeddings[mask], before.class_embeddings[mask], atol=1e-4)


def test_bi_encoder_attn_poolers_round_trip(tmp_path):
    model, processor = tiny_model(architecture_type="bi-encoder", pooling_strategy="attn")
    batch = processor(TEXTS, LABELS)
    model.save_pretrained(tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    assert {"model.pooler.score.weight", "model.label_pooler.score.weight"} <= keys
    loaded = GLiClassModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)


@pytest.mark.parametrize("name", ["bi_bert_first_simple", "bi_bert_avg_simple_prompt", "bifused_bert_first_simple"])
def test_official_bi_encoder_checkpoints_load_every_key(name):
    """Parameter-free poolings add no keys: official bi-encoder checkpoints still load completely."""
    _, info = GLiClassModel.from_pretrained(OFFICIAL / name, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info


# ------------------------------------------------------------------ item 4: label slots must match <<LABEL>> tokens
@pytest.mark.parametrize("arch", ["uni-encoder", "encoder-decoder"])
def test_more_label_slots_than_label_tokens_raise(arch):
    model, processor = tiny_model(architecture_type=arch)
    batch = processor(TEXTS, LABELS)
    extra = torch.cat([batch["labels_mask"], torch.ones(len(TEXTS), 1, dtype=torch.bool)], 1)
    with torch.no_grad():
        model(**batch)  # the processor's own mask is accepted
        with pytest.raises(ValueError, match=r"number of <<LABEL>> tokens differs.*row 0 has 3 <<LABEL>> tokens"):
            model(**dict(batch, labels_mask=extra))
        # fewer slots than <<LABEL>> tokens would drop the last labels without a word
        with pytest.raises(ValueError, match=r"row 0 has 3 <<LABEL>> tokens but labels_mask marks 2 slots"):
            model(**dict(batch, labels_mask=batch["labels_mask"][:, :2]))


@pytest.mark.parametrize("arch", ["uni-encoder", "bi-encoder-fused", "encoder-decoder"])
def test_label_slots_out_of_order_raise(arch):
    """Slot k reads the k-th <<LABEL>>: a mask with a hole gives the last label a zero vector, so it must raise."""
    model, processor = tiny_model(architecture_type=arch)
    batch = processor(TEXTS[:1], [LABELS[0][:2]])
    bad = dict(batch, labels_mask=torch.tensor([[True, False, True]]))
    if arch == "bi-encoder-fused":
        bad["class_input_ids"] = torch.cat([batch["class_input_ids"], batch["class_input_ids"][:, :1]], 1)
        bad["class_attention_mask"] = torch.cat(
            [batch["class_attention_mask"], batch["class_attention_mask"][:, :1]], 1
        )
    with torch.no_grad(), pytest.raises(ValueError, match=r"labels_mask must mark the first 2 slots of row 0"):
        model(**bad)


# ------------------------------------------------------------------ item 5: uni-encoder-only options
UNI_ONLY = {
    "squeeze_layers": dict(squeeze_layers=True),
    "encoder_layer_id": dict(encoder_layer_id=1),
    "use_segment_embeddings": dict(use_segment_embeddings=True),
    "extract_text_features": dict(extract_text_features=True),
}


def _arch_kwargs(arch: str) -> dict:
    if arch == "encoder-decoder":
        return dict(encoder_config=_config("t5"))
    return dict(encoder_config=_config(), label_model_config=_config())


@pytest.mark.parametrize("option", list(UNI_ONLY))
@pytest.mark.parametrize("arch", ["bi-encoder", "bi-encoder-fused", "encoder-decoder"])
def test_uni_encoder_options_are_rejected_elsewhere(arch, option):
    with pytest.raises(ValueError, match=rf"{option}=.*architecture_type='{arch}'"):
        GLiClassConfig(architecture_type=arch, **_arch_kwargs(arch), **UNI_ONLY[option])


@pytest.mark.parametrize("arch", ["bi-encoder-fused", "encoder-decoder"])
def test_extract_text_features_is_kept_where_it_cuts_label_spans(arch):
    """With class_token_pooling='average' these architectures end the last label's span at <<SEP>> (official)."""
    config = GLiClassConfig(
        architecture_type=arch, extract_text_features=True, class_token_pooling="average", **_arch_kwargs(arch)
    )
    assert config.extract_text_features


def test_encoder_layer_id_with_squeeze_layers_is_rejected():
    with pytest.raises(ValueError, match=r"encoder_layer_id=1 and squeeze_layers=True"):
        GLiClassConfig(encoder_config=_config(), encoder_layer_id=1, squeeze_layers=True)


def test_every_official_fixture_config_still_validates():
    for path in sorted(p for p in OFFICIAL.iterdir() if (p / "config.json").exists()):
        GLiClassConfig.from_pretrained(path)


# ------------------------------------------------------------------ item 6: exact text and label spans
def _first(ids: torch.Tensor, token: int) -> int:
    return int((ids == token).nonzero()[0, 0])


def test_exact_spans_are_the_default_for_new_models_only():
    assert GLiClassConfig(encoder_config=_config()).exact_feature_spans is False  # official configs lack the field
    model, _ = tiny_model()
    assert model.config.exact_feature_spans is True
    official = GLiClassModel.from_pretrained(OFFICIAL / "uni_bert_avg_simple_extract_text")
    assert official.config.extract_text_features and official.config.exact_feature_spans is False


def test_exact_spans_survive_save_and_load(tmp_path):
    model, _ = tiny_model(extract_text_features=True)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["exact_feature_spans"] is True
    assert GLiClassModel.from_pretrained(tmp_path).config.exact_feature_spans is True


def _uni(exact: bool, **options):
    return tiny_model(pooling_strategy="avg", exact_feature_spans=exact, **options)


def test_extracted_text_is_the_text_when_labels_follow_it():
    """prompt_first=False: `[CLS] text <<LABEL>>...`: the text vector averages [CLS] and the text only."""
    model, processor = _uni(True, extract_text_features=True)
    batch = processor(TEXTS[:1], LABELS[:1], prompts=["what is it about"], examples=[EXAMPLES])
    with torch.no_grad():
        out = model(**batch)
    end = _first(batch["input_ids"][0], model.config.class_token_index)
    expected = model.model.text_projector(out.token_embeddings[0, :end].mean(0))
    torch.testing.assert_close(out.text_embeddings[0], expected)


def test_extracted_text_stops_before_the_examples_when_labels_come_first():
    """prompt_first=True: `<<LABEL>>...<<SEP>>[prompt] text <<EXAMPLE>>...`: from <<SEP>> up to the examples."""
    model, processor = _uni(True, extract_text_features=True, prompt_first=True)
    batch = processor(TEXTS[:1], LABELS[:1], examples=[EXAMPLES])
    with torch.no_grad():
        out = model(**batch)
    ids = batch["input_ids"][0]
    start, end = _first(ids, model.config.text_token_index), _first(ids, model.config.example_token_index)
    expected = model.model.text_projector(out.token_embeddings[0, start:end].mean(0))
    torch.testing.assert_close(out.text_embeddings[0], expected)


def test_official_spans_pool_from_the_first_sep():
    """exact_feature_spans=False keeps the official extraction: the states from <<SEP>> on, moved to position 0."""
    model, processor = _uni(False, extract_text_features=True)
    batch = processor(TEXTS[:1], LABELS[:1])
    with torch.no_grad():
        out = model(**batch)
    start = _first(batch["input_ids"][0], model.config.text_token_index)
    expected = model.model.text_projector(out.token_embeddings[0, start:].mean(0))
    torch.testing.assert_close(out.text_embeddings[0], expected)


@pytest.mark.parametrize("exact", [True, False])
def test_last_label_span_ends_at_sep_with_exact_spans(exact):
    """class_token_pooling='average': exact spans end the last label at <<SEP>>; official ones run to the end."""
    model, processor = _uni(exact, class_token_pooling="average")
    batch = processor(TEXTS[:1], LABELS[:1], prompts=["what is it about"])
    with torch.no_grad():
        out = model(**batch)
    ids = batch["input_ids"][0]
    last = int((ids == model.config.class_token_index).nonzero()[-1, 0])
    end = _first(ids, model.config.text_token_index) if exact else len(ids)
    expected = model.model.classes_projector(out.token_embeddings[0, last:end].mean(0))
    torch.testing.assert_close(out.class_embeddings[0, len(LABELS[0]) - 1], expected)


# ------------------------------------------------------------------ item 9: unknown forward arguments
def test_unknown_forward_arguments_raise():
    model, processor = tiny_model()
    batch = processor(TEXTS, LABELS)
    with pytest.raises(TypeError, match="label_mask"):
        model(batch["input_ids"], batch["attention_mask"], label_mask=batch["labels_mask"])
    with torch.no_grad():
        assert model(**batch).logits.shape == batch["labels_mask"].shape  # every key the processor makes is accepted
