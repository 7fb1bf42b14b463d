"""The zero-shot training recipe: identity warm start, candidate sampling, dataset-grouped batches, the softmax
term beside focal, weight-space ensembling, and the embed-sim baseline in the run's table."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import SHARED_DATA, TINY_BACKBONES, tiny_model, tiny_tokenizer

from gliclass import GLiClassModel, build_model
from gliclass.data.benchmarks import BenchmarkRow, BenchmarkSplit, to_examples
from gliclass.data.resumable import EpochSampler
from gliclass.evaluation.data import load_eval_set
from gliclass.modeling.architectures import GLiClassOutput
from gliclass.modeling.losses import GLiClassLoss, label_cross_entropy
from gliclass.training.build import build_model_and_processor, freeze_embeddings, freeze_label_tower, tie_towers
from gliclass.training.lora import export_model
from gliclass.training.optim import parameter_groups
from gliclass.training.utils import interpolate_weights, snapshot_weights, zero_shot_summary

TEXTS = ["a great phone with a long battery", "the match ended after extra time"]
LABELS = ["positive", "negative", "sports", "technology"]


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(1) / weights.sum(1)


@pytest.mark.parametrize("act", ["gelu", "relu", "silu"])
def test_identity_bi_encoder_scores_the_backbones_own_cosine(act):
    """Untrained, the bi-encoder with mean pooling is exactly the embedding-similarity baseline of its backbone."""
    model, processor = tiny_model(
        architecture_type="bi-encoder", pooling_strategy="avg", normalize_features=True, projector_hidden_act=act
    )
    batch = processor(TEXTS, [LABELS] * 2)
    with torch.no_grad():
        logits = model(**batch).logits
        inner = model.model
        text = mean_pool(inner.encoder_model(batch["input_ids"], batch["attention_mask"]).last_hidden_state,
                         batch["attention_mask"])  # fmt: skip
        ids, mask = batch["class_input_ids"][0], batch["class_attention_mask"][0]
        labels = mean_pool(inner.label_encoder(ids, mask).last_hidden_state, mask)
    cosine = torch.nn.functional.normalize(text, dim=-1) @ torch.nn.functional.normalize(labels, dim=-1).T
    torch.testing.assert_close(logits, cosine * inner.logit_scale, atol=1e-5, rtol=1e-5)


def test_random_head_init_is_not_the_identity_and_bad_choices_fail():
    torch.manual_seed(0)
    model, _ = build_model(TINY_BACKBONES["bert"], tokenizer=tiny_tokenizer(), head_init="random")
    model.eval()
    x = torch.randn(3, 32)
    assert not torch.allclose(model.model.text_projector(x), x, atol=1e-3)
    model, _ = build_model(TINY_BACKBONES["bert"], tokenizer=tiny_tokenizer())
    model.eval()  # the projectors' dropout
    torch.testing.assert_close(model.model.text_projector(x), x, atol=1e-6, rtol=1e-6)
    assert model.config.hidden_size == 64  # twice the encoder width, so the identity is exact
    with pytest.raises(ValueError, match="head_init"):
        build_model(TINY_BACKBONES["bert"], tokenizer=tiny_tokenizer(), head_init="zeros")
    with pytest.raises(ValueError, match="tanh"):
        build_model(TINY_BACKBONES["bert"], tokenizer=tiny_tokenizer(), projector_hidden_act="tanh")
    with pytest.raises(ValueError, match="hidden_size"):
        build_model(TINY_BACKBONES["bert"], tokenizer=tiny_tokenizer(), hidden_size=40)


def test_identity_head_survives_save_and_load(tmp_path):
    model, processor = tiny_model(architecture_type="bi-encoder", pooling_strategy="avg", normalize_features=True)
    model.save_pretrained(tmp_path)
    batch = processor(TEXTS, [LABELS] * 2)
    loaded = GLiClassModel.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)


def bench(name: str, labels: list[str], rows: int = 200) -> BenchmarkSplit:
    rng = random.Random(name)
    return BenchmarkSplit(
        name, "train", labels, False, [BenchmarkRow(f"t{i}", [rng.choice(labels)], f"{name}:{i}") for i in range(rows)]
    )


def test_candidates_range_over_the_label_set_with_a_cap_and_clean_foreign_negatives():
    own = [f"intent {i}" for i in range(150)] + ["Joy"]
    foreign = ["joy", "sports", "politics", "anger", "spam"]  # "joy" names one of the dataset's own labels
    examples = to_examples(
        bench("intents", own), min_negatives=1, max_negatives=None, seed=3, max_candidates=100,
        foreign_labels=foreign, max_foreign_negatives=4,
    )  # fmt: skip
    sizes = [len(ex.all_labels) for ex in examples]
    assert min(sizes) == 2 and max(sizes) == 100 and len(set(sizes)) > 30  # 1 positive + 1..99 (+ foreign)
    for ex in examples:
        assert set(ex.positives) <= set(ex.all_labels) and len(ex.positives) == 1
        assert len(set(ex.all_labels)) == len(ex.all_labels)
        assert "joy" not in ex.all_labels  # would be a false negative
    used_foreign = [label for ex in examples for label in ex.all_labels if label in foreign]
    assert used_foreign and set(used_foreign) <= {"sports", "politics", "anger", "spam"}
    # without the new options the sampling is unchanged (same seeded draws as before)
    plain = to_examples(bench("intents", own), min_negatives=1, max_negatives=5, seed=3)
    assert all(2 <= len(ex.all_labels) <= 6 for ex in plain)


def test_grouped_sampler_makes_single_dataset_batches_and_is_a_seeded_permutation():
    groups = ["a"] * 37 + ["b"] * 50 + ["c"] * 13
    sampler = EpochSampler(len(groups), seed=1, groups=groups, batch_size=8)
    order = list(sampler)
    assert sorted(order) == list(range(100))
    full = (37 // 8 + 50 // 8 + 13 // 8) * 8
    for start in range(0, full, 8):
        assert len({groups[i] for i in order[start : start + 8]}) == 1
    assert list(EpochSampler(len(groups), seed=1, groups=groups, batch_size=8)) == order
    sampler.set_epoch(1)
    assert list(sampler) != order
    with pytest.raises(ValueError, match="one key per sample"):
        EpochSampler(5, seed=0, groups=["a"] * 4, batch_size=2)


def test_cross_entropy_term_beside_focal():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    output = GLiClassOutput(logits=logits, labels_mask=mask)
    terms = GLiClassLoss(classification_weight=0.5, cross_entropy_coef=1.0)(output, targets)
    focal_only = GLiClassLoss()(output, targets)["focal"]
    torch.testing.assert_close(terms["focal"], 0.5 * focal_only)
    torch.testing.assert_close(terms["cross_entropy"], label_cross_entropy(logits, targets, mask))
    torch.testing.assert_close(terms["loss"], terms["focal"] + terms["cross_entropy"])
    with pytest.raises(ValueError, match="cross_entropy_coef"):
        GLiClassLoss(classification="cross_entropy", cross_entropy_coef=1.0)


def test_weight_ensembling_interpolates_every_float_weight():
    model, _ = tiny_model(architecture_type="bi-encoder", pooling_strategy="avg", normalize_features=True)
    start = snapshot_weights(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    trained = snapshot_weights(model)
    interpolate_weights(model, start, 0.25)
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.25 * trained[key] + 0.75 * start[key])
    interpolate_weights(model, trained, 1.0)  # alpha 1 keeps the current weights
    with pytest.raises(ValueError, match="alpha"):
        interpolate_weights(model, start, 1.5)
    with pytest.raises(ValueError, match="lack"):
        interpolate_weights(model, {}, 0.5)


def test_run_summary_shows_untrained_finetuned_trained_and_embed_sim():
    metrics = {
        "test/sst2/f1_macro": 0.8, "test/f1_macro": 0.8, "zeroshot_untrained/sst2/f1_macro": 0.6,
        "zeroshot_untrained/f1_macro": 0.6, "embed_sim/sst2/f1_macro": 0.6, "embed_sim/f1_macro": 0.6,
        "zeroshot_finetuned/sst2/f1_macro": 0.75, "zeroshot_finetuned/f1_macro": 0.75,
    }  # fmt: skip
    lines = zero_shot_summary(metrics).splitlines()
    assert "embed-sim" in lines[1] and "fine-tuned" in lines[1]
    assert lines[2].split() == ["sst2", "0.6000", "0.7500", "0.8000", "0.6000", "nan"]
    assert lines[-1].split()[0] == "mean"


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"benchmark data not found at {SHARED_DATA}")
def test_small_test_splits_are_taken_whole():
    assert len(load_eval_set("cr", SHARED_DATA, limit=10)) == 10
    assert len(load_eval_set("cr", SHARED_DATA, limit=10, whole_up_to=1000)) == 753  # the whole test split
    assert len(load_eval_set("sst2", SHARED_DATA, limit=10, whole_up_to=1000)) == 10  # 1,821 rows: sampled


def tiny_bi_encoder(**options):
    torch.manual_seed(0)
    backbone = {"spec": TINY_BACKBONES["bert"], "tokenizer": tiny_tokenizer(), "pretrained": False}
    config = {"architecture_type": "bi-encoder", "pooling_strategy": "avg", "normalize_features": True}
    return build_model_and_processor(backbone, config, max_length=64, **options)


def test_tied_towers_train_as_one_module_and_export_as_two(tmp_path):
    """tie_encoders: one tower reads texts and labels; WiSE updates it once; the export is the official layout."""
    model, processor = tiny_bi_encoder(tie_encoders=True)
    inner = model.model
    assert inner.label_encoder is inner.encoder_model
    untied, _ = tiny_bi_encoder()
    tower = sum(p.numel() for p in inner.encoder_model.parameters())
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in model.parameters()) == tower
    start = snapshot_weights(model)
    # the shared tower is copied once: its names under both towers map to one snapshot tensor
    query = "model.{}.encoder.layer.0.attention.self.query.weight"
    assert start[query.format("encoder_model")] is start[query.format("label_encoder")]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    interpolate_weights(model, start, 0.5)  # a shared tensor moved twice would end at +0.75, not +0.5
    key = "model.encoder_model.encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(model.state_dict()[key], start[key] + 0.5)
    model.eval()
    batch = processor(TEXTS, [LABELS] * 2)
    with torch.no_grad():
        before = model(**batch).logits
    export_model(model, tmp_path, processor)
    assert inner.label_encoder is inner.encoder_model  # the export does not untie the model in training
    loaded = GLiClassModel.from_pretrained(tmp_path).eval()
    assert loaded.model.label_encoder is not loaded.model.encoder_model
    for name, value in loaded.model.encoder_model.state_dict().items():
        torch.testing.assert_close(loaded.model.label_encoder.state_dict()[name], value)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, before)


def test_tie_encoders_refuses_what_it_cannot_tie():
    torch.manual_seed(0)
    backbone = {"spec": TINY_BACKBONES["bert"], "tokenizer": tiny_tokenizer(), "pretrained": False}
    with pytest.raises(ValueError, match="bi-encoder"):
        build_model_and_processor(backbone, {"architecture_type": "uni-encoder"}, max_length=64, tie_encoders=True)
    model, _ = tiny_bi_encoder()  # random towers differ: a trained model's label tower must not be thrown away
    with pytest.raises(ValueError, match="different trained weights"):
        tie_towers(model, require_equal=True)
    model.config.label_model_name = "another/backbone"
    with pytest.raises(ValueError, match="another/backbone"):
        tie_towers(model)


def test_frozen_label_tower_stays_put_while_the_text_tower_and_heads_train():
    model, processor = tiny_bi_encoder(freeze_label_encoder=True)
    inner = model.model
    tower = list(inner.label_encoder.parameters())
    assert tower and all(not p.requires_grad for p in tower)
    grouped = {id(p) for g in parameter_groups(model, encoder_lr=1e-3) for p in g["params"]}
    assert all(id(p) not in grouped for p in tower)
    assert id(inner.encoder_model.encoder.layer[0].attention.self.query.weight) in grouped
    frozen = {name: value.detach().clone() for name, value in inner.label_encoder.state_dict().items()}
    moving = {
        "text": inner.encoder_model.encoder.layer[0].attention.self.query.weight,
        "projector": next(inner.biencoder_projector.parameters()),
    }
    before = {name: p.detach().clone() for name, p in moving.items()}
    optimizer = torch.optim.AdamW(parameter_groups(model, encoder_lr=1e-3), lr=1e-2)
    model.train()
    model(**processor(TEXTS, [LABELS] * 2)).logits.sum().backward()
    assert all(p.grad is None for p in tower)  # no backward pass through the frozen tower
    optimizer.step()
    for name, value in inner.label_encoder.state_dict().items():
        torch.testing.assert_close(value, frozen[name])
    assert all(not torch.equal(p, before[name]) for name, p in moving.items())


def test_freeze_label_encoder_refuses_what_it_cannot_freeze():
    with pytest.raises(ValueError, match="choose one"):
        tiny_bi_encoder(tie_encoders=True, freeze_label_encoder=True)
    torch.manual_seed(0)
    backbone = {"spec": TINY_BACKBONES["bert"], "tokenizer": tiny_tokenizer(), "pretrained": False}
    with pytest.raises(ValueError, match="bi-encoder"):
        build_model_and_processor(
            backbone, {"architecture_type": "uni-encoder"}, max_length=64, freeze_label_encoder=True
        )
    model, _ = tiny_bi_encoder(tie_encoders=True)
    with pytest.raises(ValueError, match="tied"):
        freeze_label_tower(model)


def test_frozen_word_embeddings_stay_put_while_the_rest_trains():
    model, processor = tiny_bi_encoder(freeze_word_embeddings=True)
    tables = [
        model.model.encoder_model.embeddings.word_embeddings,
        model.model.label_encoder.embeddings.word_embeddings,
    ]
    assert all(not t.weight.requires_grad for t in tables)
    groups = parameter_groups(model, encoder_lr=1e-3)
    grouped = {id(p) for g in groups for p in g["params"]}
    assert all(id(t.weight) not in grouped for t in tables)
    before = [t.weight.detach().clone() for t in tables]
    layer = model.model.encoder_model.encoder.layer[0].attention.self.query.weight
    layer_before = layer.detach().clone()
    optimizer = torch.optim.AdamW(groups, lr=1e-2)
    batch = processor(TEXTS, [LABELS] * 2)
    model.train()
    model(**batch).logits.sum().backward()
    optimizer.step()
    for table, value in zip(tables, before, strict=True):
        torch.testing.assert_close(table.weight, value)
    assert not torch.equal(layer, layer_before)
    with pytest.raises(ValueError, match="embedding table"):
        freeze_embeddings(model)  # nothing left to freeze: a second call is a mistake, not a no-op
