"""save_pretrained / from_pretrained round trips in the official checkpoint layout."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer
from safetensors.torch import load_file
from transformers import AutoModel

from gliclass import GLiClassModel, GLiClassProcessor
from gliclass.processing import LABEL_TOKENIZER_DIR

TEXTS = ["good movie", "the service was terrible and the food was bad"]
LABELS = [["positive", "negative", "very good food"], ["food", "service"]]
PROMPTS = ["what is the sentiment", None]

CASES = {
    "uni-bert": ("bert", dict()),
    "uni-deberta": ("deberta", dict(class_token_pooling="average", prompt_first=True)),
    "uni-modernbert": ("modernbert", dict(scorer_type="weighted-dot")),
    "uni-options": (
        "bert",
        dict(
            use_lstm=True,
            squeeze_layers=True,
            use_segment_embeddings=True,
            pooling_strategy="attn",
            scorer_type="mlp",
            normalize_features=True,
        ),
    ),
    "uni-cross-attn": (
        "deberta",
        dict(pooling_strategy="pass", scorer_type="cross-attn", scorer_num_heads=2, scorer_mlp_hidden_size=16),
    ),
    "uni-hopfield-layer": ("modernbert", dict(scorer_type="hopfield", encoder_layer_id=1)),
    "bi-encoder": ("bert", dict(architecture_type="bi-encoder")),
    "bi-encoder-fused": ("deberta", dict(architecture_type="bi-encoder-fused", pooling_strategy="avg")),
    "encoder-decoder": ("t5", dict(architecture_type="encoder-decoder", pooling_strategy="avg")),
}

# official key prefixes (shared/docs/official-gliclass-facts.md); every key starts with "model."
EXPECTED_PREFIXES = {
    "uni-options": [
        "model.lstm.lstm.",
        "model.layer_wise_attention.squeeze.",
        "model.layer_wise_attention.W1.",
        "model.layer_wise_attention.W2.",
        "model.layer_wise_attention.output_projection.",
        "model.segment_embeddings.weight",
        "model.scorer.mlp.0.",
        "model.scorer.mlp.4.",
    ],
    "uni-cross-attn": ["model.scorer.q_norm.", "model.scorer.kv_norm.", "model.scorer.score_mlp.4."],
    "uni-modernbert": ["model.scorer.proj_text.", "model.scorer.out_mlp.3."],
    "bi-encoder": [
        "model.label_encoder.",
        "model.biencoder_projector.linear_1.",
        "model.biencoder_projector.linear_2.",
    ],
    "bi-encoder-fused": ["model.label_encoder.", "model.biencoder_projector.linear_2."],
    "encoder-decoder": ["model.encoder_decoder_model.encoder.", "model.encoder_decoder_model.decoder."],
}
COMMON_PREFIXES = [
    "model.text_projector.linear_1.",
    "model.text_projector.linear_2.",
    "model.classes_projector.linear_1.",
]


# tiny tensors: one intra-op thread (conftest.single_thread)
pytestmark = pytest.mark.usefixtures("single_thread")


def logits(model, processor):
    with torch.no_grad():
        return model(**processor(TEXTS, LABELS, prompts=PROMPTS)).logits


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip(case, tmp_path):
    backbone, config = CASES[case]
    model, processor = tiny_model(backbone, **config)
    before = logits(model, processor)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    loaded = GLiClassModel.from_pretrained(tmp_path).eval()
    loaded_processor = GLiClassProcessor.from_pretrained(tmp_path)
    assert loaded_processor.budget == processor.budget
    batch = processor(TEXTS, LABELS, prompts=PROMPTS)
    loaded_batch = loaded_processor(TEXTS, LABELS, prompts=PROMPTS)
    assert batch.keys() == loaded_batch.keys()
    assert all(torch.equal(batch[key], loaded_batch[key]) for key in batch)
    # same weights (checked exactly below); kernels may pick another summation order (LSTM), so not bit-equal
    torch.testing.assert_close(logits(loaded, loaded_processor), before, atol=1e-5, rtol=1e-5)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    # the official layout: every key under "model.", no backbone-class prefix
    keys = set(load_file(tmp_path / "model.safetensors"))
    assert keys and all(key.startswith("model.") for key in keys)
    for prefix in COMMON_PREFIXES + EXPECTED_PREFIXES.get(case, []):
        assert any(key.startswith(prefix) for key in keys), prefix
    if config.get("architecture_type") != "encoder-decoder":
        assert "model.logit_scale" in keys
        assert any(key.startswith("model.encoder_model.embeddings.") for key in keys)
        assert not any(key.startswith(("model.encoder_model.bert.", "model.encoder_model.deberta.")) for key in keys)

    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "GLiClass"
    assert saved["architectures"] == ["GLiClassModel"]
    assert saved["encoder_config"]["model_type"] == model.config.encoder_config.model_type
    assert saved["architecture_type"] == model.config.architecture_type
    for field, value in config.items():
        assert saved[field] == value, field
    if model.config.uses_label_encoder:
        assert saved["label_model_config"]["model_type"] == model.config.label_model_config.model_type
    for name in ("tokenizer_config.json", "gliclass_processor.json"):
        assert (tmp_path / name).exists(), name


def test_auto_model_loads_a_gliclass_checkpoint(tmp_path):
    model, processor = tiny_model()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, GLiClassModel)
    torch.testing.assert_close(logits(loaded, processor), logits(model, processor), atol=1e-5, rtol=1e-5)


def test_processor_settings_and_separate_label_tokenizer_round_trip(tmp_path):
    model, processor = tiny_model(architecture_type="bi-encoder")
    label_tokenizer = tiny_tokenizer()  # a tokenizer of its own (no GLiClass tokens), saved in a subfolder
    processor = GLiClassProcessor(
        processor.tokenizer, model.config, max_length=40, label_tokenizer=label_tokenizer, label_max_length=3
    )
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / LABEL_TOKENIZER_DIR / "tokenizer_config.json").exists()
    loaded = GLiClassProcessor.from_pretrained(tmp_path)
    assert (loaded.max_length, loaded.label_max_length, loaded.budget) == (40, 3, 40)
    assert "<<LABEL>>" not in loaded.label_tokenizer.get_vocab()
    batch = loaded(TEXTS, LABELS)
    assert batch["class_input_ids"].shape[-1] == 3  # label_max_length survived
    assert torch.equal(batch["class_input_ids"], processor(TEXTS, LABELS)["class_input_ids"])


def test_resaving_a_loaded_checkpoint_keeps_the_config(tmp_path):
    model, _ = tiny_model("deberta", squeeze_layers=True, scorer_type="mlp")
    model.save_pretrained(tmp_path / "a")
    GLiClassModel.from_pretrained(tmp_path / "a").save_pretrained(tmp_path / "b")
    first = json.loads((tmp_path / "a" / "config.json").read_text())
    second = json.loads((tmp_path / "b" / "config.json").read_text())
    first.pop("transformers_version", None), second.pop("transformers_version", None)
    assert first == second
    assert set(load_file(tmp_path / "a" / "model.safetensors")) == set(load_file(tmp_path / "b" / "model.safetensors"))
