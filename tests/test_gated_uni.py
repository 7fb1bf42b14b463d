"""Gated segment attention (`segment_attention="gated"`): the uni-encoder that is the bi-encoder at initialisation.

Tiny random backbones: the untrained gated model's logits equal a tied bi-encoder's built from the same weights, the
gate gets a gradient and opens, the layout is the backbone's own, and checkpoints round-trip with the option.
"""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from conftest import TINY_BACKBONES, tiny_model, tiny_tokenizer

from gliclass import build_model
from gliclass.config import GLiClassConfig
from gliclass.modeling import GLiClassModel
from gliclass.modeling.segments import GATE_FLOOR, GatedFusedBiEncoder, GatedUniEncoder, gate_log_values
from gliclass.pipeline import ZeroShotPipeline
from gliclass.processing import GLiClassProcessor
from gliclass.training.build import tie_towers

pytestmark = pytest.mark.usefixtures("single_thread")

# ragged: texts of 2 to ~60 tokens, 1 to 4 labels of 1 to 3 words, so rows pad in length and in label slots
TEXTS = [
    "good movie",
    " ".join(["the service was terrible and the food was bad but the music was great"] * 4),
    "a quiet evening with friends",
]
LABELS = [["positive", "negative", "very good food"], ["food"], ["music", "service", "bad food", "good"]]
GATED = dict(segment_attention="gated", normalize_features=True, logit_scale_init_value=20.0, dropout=0.0)


def gated_and_bi(backbone: str, pooling: str):
    """An untrained gated uni-encoder and a bi-encoder with tied towers holding the same backbone and head weights."""
    gated, gated_proc = tiny_model(backbone, pooling_strategy=pooling, **GATED)
    settings = {k: v for k, v in GATED.items() if k != "segment_attention"}
    bi, bi_proc = tiny_model(backbone, architecture_type="bi-encoder", pooling_strategy=pooling, **settings)
    bi.model.encoder_model.load_state_dict(gated.model.encoder_model.state_dict())
    tie_towers(bi)
    for name in ("text_projector", "classes_projector", "pooler", "label_pooler"):
        getattr(bi.model, name).load_state_dict(getattr(gated.model, name).state_dict())
    return gated, gated_proc, bi, bi_proc


@pytest.mark.parametrize("backbone", ["bert", "deberta", "modernbert"])
@pytest.mark.parametrize("pooling", ["avg", "first", "attn"])
def test_untrained_gated_is_the_bi_encoder(backbone, pooling):
    gated, gated_proc, bi, bi_proc = gated_and_bi(backbone, pooling)
    prompts = [None, "classify the topic", None]
    with torch.no_grad():
        out = gated(**gated_proc(TEXTS, LABELS, prompts=prompts))
        ref = bi(**bi_proc(TEXTS, LABELS, prompts=prompts))
    mask = out.labels_mask
    assert torch.equal(mask, ref.labels_mask)
    assert (out.logits[mask] - ref.logits[mask]).abs().max() <= 1e-5
    torch.testing.assert_close(out.text_embeddings, ref.text_embeddings, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.class_embeddings, ref.class_embeddings, atol=1e-6, rtol=0)


def fused_and_bi(backbone: str, pooling: str):
    """An untrained gated fused bi-encoder and a bi-encoder holding the same two towers and head weights."""
    fused, fused_proc = tiny_model(backbone, architecture_type="bi-encoder-fused", pooling_strategy=pooling, **GATED)
    settings = {k: v for k, v in GATED.items() if k != "segment_attention"}
    bi, bi_proc = tiny_model(backbone, architecture_type="bi-encoder", pooling_strategy=pooling, **settings)
    missing, unexpected = bi.model.load_state_dict(fused.model.state_dict(), strict=False)
    assert not missing and set(unexpected) == {"segment_gates.segment_gate", "slot_gate"}
    return fused, fused_proc, bi, bi_proc


@pytest.mark.parametrize("backbone", ["bert", "deberta"])
@pytest.mark.parametrize("pooling", ["avg", "attn"])
def test_untrained_gated_fused_is_the_bi_encoder(backbone, pooling):
    fused, fused_proc, bi, bi_proc = fused_and_bi(backbone, pooling)
    batch = fused_proc(TEXTS, LABELS)
    tokens = fused_proc.tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    assert tokens[:4] == ["[CLS]", "good", "movie", "[SEP]"]
    assert tokens[4:10] == ["<<LABEL>>", "[SEP]"] * 3
    with torch.no_grad():
        out, ref = fused(**batch), bi(**bi_proc(TEXTS, LABELS))
    mask = out.labels_mask
    assert (out.logits[mask] - ref.logits[mask]).abs().max() <= 1e-5
    with torch.no_grad():  # control: the slot read-out and the open gates change the scores
        fused.model.slot_gate.fill_(1.0)
        fused.model.segment_gates.segment_gate.fill_(0.1)
        moved = fused(**batch)
    assert (moved.logits[mask] - ref.logits[mask]).abs().max() > 1e-3


def test_gated_fused_gates_get_gradients():
    model, proc = tiny_model("bert", architecture_type="bi-encoder-fused", pooling_strategy="avg", **GATED)
    model.train()
    out = model(**proc(TEXTS, LABELS))
    out.logits[out.labels_mask].square().sum().backward()
    gates = model.model.segment_gates.segment_gate
    assert (gates.grad.abs() > 1e-6).all() and torch.isfinite(gates.grad).all(), gates.grad
    assert model.model.slot_gate.grad.abs() > 1e-6
    assert sorted(gate_log_values(model)) == ["gates/layer_0", "gates/layer_1", "gates/slot"]


def test_open_gate_reads_the_other_segments():
    """Control for the test above: with the gate open, a label's logit depends on the other labels."""
    model, proc = tiny_model("bert", pooling_strategy="avg", **GATED)
    with torch.no_grad():
        alone = model(**proc(TEXTS[:1], [LABELS[0][:1]])).logits[0, 0]
        beside = model(**proc(TEXTS[:1], [LABELS[0]])).logits[0, 0]
        assert abs(alone - beside) < 1e-5  # closed: no other label changes it
        model.model.segment_gates.segment_gate.fill_(0.1)  # g = 1
        alone = model(**proc(TEXTS[:1], [LABELS[0][:1]])).logits[0, 0]
        beside = model(**proc(TEXTS[:1], [LABELS[0]])).logits[0, 0]
    assert abs(alone - beside) > 1e-3


@pytest.mark.parametrize("backbone", ["bert", "deberta"])
def test_gate_gets_a_gradient_and_opens(backbone):
    model, proc = tiny_model(backbone, pooling_strategy="avg", **GATED)
    model.train()
    batch = proc(TEXTS, LABELS)
    gate = model.model.segment_gates.segment_gate
    # only the gate learns; the loss rewards text vectors that move toward their labels' mean, which only reading
    # the label segments can do
    for param in model.parameters():
        param.requires_grad_(param is gate)
    optimizer = torch.optim.Adam([gate], lr=0.05)
    for step in range(5):
        out = model(**batch)
        mask = out.labels_mask.unsqueeze(-1).float()
        target = (out.class_embeddings * mask).sum(1) / mask.sum(1)
        loss = -torch.nn.functional.cosine_similarity(out.text_embeddings, target).mean()
        optimizer.zero_grad()
        loss.backward()
        assert gate.grad is not None and torch.isfinite(gate.grad).all()
        if step == 0:
            assert (gate.grad.abs() > 1e-6).all(), gate.grad  # every layer's gate gets a gradient while closed
        optimizer.step()
    values = model.model.segment_gates.values()
    assert values.max() > 0.1, values  # opened (a layer whose gradient says "stay closed" stays at 0)
    logged = gate_log_values(model)
    assert list(logged) == [f"gates/layer_{i}" for i in range(len(values))]
    assert torch.equal(torch.stack(list(logged.values())), values.detach())


def test_layout_is_the_backbone_reading_each_segment_alone():
    _, proc = tiny_model("bert", **GATED)
    tokenizer = proc.tokenizer
    ids = proc.encode("good movie", ["positive", "very good food"])["input_ids"]
    alone = [tokenizer("good movie")["input_ids"]] + [tokenizer(x)["input_ids"] for x in ("positive", "very good food")]
    label = proc.config.class_token_index
    expected = alone[0] + [label, *alone[1][1:]] + [label, *alone[2][1:]]  # <<LABEL>> takes [CLS]'s place
    assert ids == expected
    assert proc.config.text_token_index not in ids  # no <<SEP>> in this layout
    # positions restart at every segment; the markers are read as the start token
    from gliclass.modeling.segments import segment_layout

    batch = proc(["good movie"], [["positive", "very good food"]])
    segments, positions, read = segment_layout(batch["input_ids"], batch["attention_mask"], proc.config)
    assert segments[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    assert positions[0].tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4]
    assert read[0].tolist() == alone[0] + alone[1] + alone[2]


def test_few_shot_examples_are_their_own_segments():
    model, proc = tiny_model("bert", pooling_strategy="avg", **GATED)
    examples = [{"text": "great film", "labels": ["positive"]}, {"text": "awful food", "labels": ["negative"]}]
    ids = proc.encode("good movie", ["positive", "negative"], examples=examples)["input_ids"]
    assert ids.count(proc.config.example_token_index) == 2
    assert ids.count(proc.config.class_token_index) == 2
    with torch.no_grad():  # closed gate: the examples do not move the scores
        plain = model(**proc(["good movie"], [["positive", "negative"]])).logits
        shots = model(**proc(["good movie"], [["positive", "negative"]], examples=[examples])).logits
    torch.testing.assert_close(plain, shots, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["uni-encoder", "bi-encoder-fused"])
def test_pipeline_label_groups_keep_the_closed_gate_exact(arch):
    """Labels split into groups (too many for one row) score as they do together: the gate is closed."""
    model, proc = tiny_model("bert", architecture_type=arch, pooling_strategy="avg", **GATED)
    labels = ["positive", "negative", "very good food", "music", "service", "bad food"]
    pipe = ZeroShotPipeline(model, proc)
    whole = pipe.logits([TEXTS[0]], labels)[0]["logits"]
    assert len(pipe.plan([TEXTS[0]], labels)[0]) == 1
    grouped_pipe = ZeroShotPipeline(model, proc, max_labels_per_group=2)
    grouped = grouped_pipe.logits([TEXTS[0]], labels)[0]["logits"]
    assert len(grouped_pipe.plan([TEXTS[0]], labels)[0]) == 3
    assert max(abs(whole[x] - grouped[x]) for x in labels) <= 1e-5
    short = copy.copy(proc)
    short.budget = 24  # the long text must be cut into chunks beside label groups that fit the budget
    chunked_pipe = ZeroShotPipeline(model, short)
    rows = chunked_pipe.plan([TEXTS[1]], labels)[0]
    assert len(rows) > 2 and all(row["tokens"] <= 24 for row in rows)
    batch = short(TEXTS[1:2], [labels[:2]])  # the processor cuts the text to fit beside its labels
    assert batch["input_ids"].shape[1] == 24
    scores = chunked_pipe.scores([TEXTS[1]], labels)[0]
    assert sorted(scores) == sorted(labels)


def test_checkpoint_records_the_option(tmp_path, caplog):
    model, proc = tiny_model("deberta", pooling_strategy="attn", **GATED)
    with torch.no_grad():
        model.model.segment_gates.segment_gate.fill_(0.03)
    with caplog.at_level(logging.WARNING, logger="gliclass.modeling.model"):
        model.save_pretrained(tmp_path)
    assert "official gliclass package cannot read" in caplog.text
    proc.save_pretrained(tmp_path)
    config = GLiClassConfig.from_pretrained(tmp_path)
    assert config.segment_attention == "gated"
    loaded = GLiClassModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.model, GatedUniEncoder)
    loaded_proc = GLiClassProcessor.from_pretrained(tmp_path)
    batch = loaded_proc(TEXTS, LABELS)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)


def test_deepcopy_keeps_a_working_gate():
    model, proc = tiny_model("deberta", pooling_strategy="avg", **GATED)
    batch = proc(TEXTS, LABELS)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.model.segment_gates.segment_gate.fill_(0.1)
        changed = clone(**batch).logits
        model_logits = model(**batch).logits
        model.model.segment_gates.segment_gate.fill_(0.1)
        torch.testing.assert_close(model(**batch).logits, changed)
    assert not torch.allclose(changed, model_logits)  # the clone's hooks read the clone's gate, not the original's


def test_plain_uni_encoder_is_unchanged():
    model, _ = tiny_model("bert")
    assert model.config.segment_attention == "none"
    assert not isinstance(model.model, GatedUniEncoder)
    assert not any("gate" in name for name, _ in model.named_parameters())
    assert gate_log_values(model) == {}


@pytest.mark.parametrize(
    "options,match",
    [
        (dict(segment_attention="open"), "segment_attention='open' is not supported"),
        (dict(architecture_type="bi-encoder", label_model_name=None), "needs architecture_type 'uni-encoder' or"),
        (dict(use_segment_embeddings=True), "use_segment_embeddings"),
        (dict(prompt_first=True), "prompt_first"),
        (dict(embed_class_token=False), "embed_class_token"),
        (dict(pooling_strategy="pass", scorer_type="cross-attn"), "pooling_strategy='pass'"),
    ],
)
def test_bad_options_are_refused(options, match):
    options = {"segment_attention": "gated", **options}
    if options.get("architecture_type") == "bi-encoder":
        options.pop("label_model_name")
        options["label_model_config"] = dict(TINY_BACKBONES["bert"])
    with pytest.raises(ValueError, match=match):
        GLiClassConfig(encoder_config=dict(TINY_BACKBONES["bert"]), **options)


def test_unsupported_backbone_is_refused():
    with pytest.raises(ValueError, match="supports the backbones"):
        build_model(TINY_BACKBONES["t5"], tokenizer=tiny_tokenizer(), segment_attention="gated")
    no_relative = {**TINY_BACKBONES["deberta"], "relative_attention": False, "position_biased_input": True}
    with pytest.raises(ValueError, match="relative_attention=True"):
        build_model(no_relative, tokenizer=tiny_tokenizer(), segment_attention="gated")


def test_floor_is_the_closed_state():
    model, _ = tiny_model("bert", **GATED)
    gates = model.model.segment_gates
    assert torch.equal(gates.values(), torch.zeros(2))
    assert torch.allclose(gates.log_values().exp(), torch.full((2,), GATE_FLOOR))


def test_training_logs_the_gates_and_moves_them():
    from test_train_module import ListDataModule, examples, make_module, trainer

    model, processor = tiny_model("bert", pooling_strategy="avg", **GATED)
    module = make_module(model)
    run = trainer(log_every_n_steps=1)
    run.fit(module, datamodule=ListDataModule(processor, examples(8)))
    logged = {key: value for key, value in run.callback_metrics.items() if key.startswith("gates/")}
    assert sorted(logged) == ["gates/layer_0", "gates/layer_1"]
    gate = model.model.segment_gates.segment_gate.detach()
    assert (gate != 0).all(), gate  # the optimiser moved every layer's gate (closed ones go below 0)
    expected = model.model.segment_gates.values()
    assert torch.equal(torch.stack([logged["gates/layer_0"], logged["gates/layer_1"]]), expected)


def test_lora_keeps_the_gate_and_merges():
    from gliclass.training.lora import apply_lora, merge_lora

    model, proc = tiny_model("bert", pooling_strategy="avg", **GATED)
    batch = proc(TEXTS, LABELS)
    with torch.no_grad():
        model.model.segment_gates.segment_gate.fill_(0.05)
        before = model(**batch).logits
    wrapped = apply_lora(model, r=2, alpha=4.0, target_modules=["query", "value"])
    assert sorted(gate_log_values(wrapped)) == ["gates/layer_0", "gates/layer_1"]
    with torch.no_grad():
        torch.testing.assert_close(wrapped(**batch).logits, before)  # LoRA starts as a no-op; the gate still applies
        merged = merge_lora(wrapped)
        torch.testing.assert_close(merged(**batch).logits, before)


def test_onnx_export_is_refused(tmp_path):
    from gliclass.onnx import export_onnx

    model, proc = tiny_model("bert", **GATED)
    with pytest.raises(ValueError, match="cannot be exported to ONNX"):
        export_onnx(model, proc, tmp_path, check=False)


@pytest.mark.parametrize("choice,arch", [("uni_gated", "uni-encoder"), ("fused_gated", "bi-encoder-fused")])
def test_hydra_arch_choice_builds_a_gated_model(choice, arch):
    from pathlib import Path

    from omegaconf import OmegaConf

    from gliclass.training.build import build_model_and_processor

    conf = Path(__file__).resolve().parents[1] / "conf"
    fields = OmegaConf.load(conf / "arch" / f"{choice}.yaml")
    backbone = OmegaConf.load(conf / "backbone" / "tiny_bert.yaml")
    model, _ = build_model_and_processor(backbone, {**fields, "pooling_strategy": "avg"}, max_length=64)
    assert model.config.architecture_type == arch and model.config.segment_attention == "gated"
    assert gate_log_values(model)


def test_gates_missing_from_a_checkpoint_start_closed(tmp_path):
    """A plain checkpoint loaded with segment_attention="gated" gets closed gates, not uninitialised memory."""
    model, proc = tiny_model("bert", architecture_type="bi-encoder-fused", pooling_strategy="avg")
    model.save_pretrained(tmp_path)
    gated = GLiClassModel.from_pretrained(tmp_path, segment_attention="gated")
    assert isinstance(gated.model, GatedFusedBiEncoder)
    assert torch.equal(gated.model.segment_gates.segment_gate, torch.zeros(2))
    assert gated.model.slot_gate.item() == 0.0


@pytest.mark.parametrize("arch", ["uni-encoder", "bi-encoder-fused"])
def test_gates_have_their_own_learning_rate(arch):
    """optim.gate_lr: the gates form their own group (no weight decay), and one Adam step moves them by its rate."""
    from gliclass.training.optim import parameter_groups

    model, _ = tiny_model("bert", architecture_type=arch, pooling_strategy="avg", **GATED)
    gates = {n for n, _ in model.named_parameters() if n.endswith(("segment_gate", "slot_gate"))}
    assert gates and (arch != "bi-encoder-fused" or any(n.endswith("slot_gate") for n in gates))
    groups = {g["name"]: g for g in parameter_groups(model, encoder_lr=1e-5, gate_lr=3e-3)}
    assert groups["gates"]["lr"] == 3e-3 and groups["gates"]["weight_decay"] == 0.0
    named = dict(model.named_parameters())
    assert {id(p) for p in groups["gates"]["params"]} == {id(named[n]) for n in gates}
    others = [p for name, g in groups.items() if name != "gates" for p in g["params"]]
    assert not {id(p) for p in others} & {id(named[n]) for n in gates}
    # null: the gates take the optimiser's (head) rate, still without decay
    default = {g["name"]: g for g in parameter_groups(model, encoder_lr=1e-5)}
    assert "lr" not in default["gates"] and default["gates"]["weight_decay"] == 0.0
    optimizer = torch.optim.AdamW(list(groups.values()), lr=1e-4)
    gate = model.model.segment_gates.segment_gate
    gate.grad = torch.full_like(gate, -1.0)
    optimizer.step()
    torch.testing.assert_close(gate.detach(), torch.full_like(gate, 3e-3), rtol=1e-3, atol=0)
    with pytest.raises(ValueError, match="gate_lr"):
        parameter_groups(model, encoder_lr=1e-5, gate_lr=0.0)


def test_plain_models_have_no_gate_group():
    from gliclass.training.optim import parameter_groups

    model, _ = tiny_model("bert", architecture_type="bi-encoder", pooling_strategy="avg")
    assert "gates" not in {g["name"] for g in parameter_groups(model, encoder_lr=1e-5, gate_lr=1e-3)}


@pytest.mark.parametrize("arch", ["uni-encoder", "bi-encoder-fused"])
def test_label_groups_count_each_segments_own_end_token(arch):
    """The planner prices a label as its gated segment costs ([SEP] + marker + words; fused: [SEP] + marker), so a
    row of many labels splits into groups that fit: counted as in the plain layout, 150 labels at budget 512 came out
    in groups too long for any text (LabelBudgetError in a clinc150 evaluation)."""
    model, proc = tiny_model("bert", architecture_type=arch, pooling_strategy="avg", **GATED)
    labels = [f"topic{i}" for i in range(60)]
    short = copy.copy(proc)
    short.budget = 64
    pipe = ZeroShotPipeline(model, short)
    for text in TEXTS[:2]:  # a short text leaves the labels most of the budget; a long one is cut into chunks
        rows = pipe.plan([text], labels)[0]
        assert len(rows) > 1 and all(row["tokens"] <= 64 for row in rows), [row["tokens"] for row in rows]
        assert sorted(pipe.scores([text], labels)[0]) == sorted(labels)
    whole = ZeroShotPipeline(model, proc).logits([TEXTS[0]], labels[:8])[0]["logits"]
    grouped = ZeroShotPipeline(model, short).logits([TEXTS[0]], labels[:8])[0]["logits"]
    assert max(abs(whole[x] - grouped[x]) for x in labels[:8]) <= 1e-5  # the closed gate: grouping changes nothing


@pytest.mark.parametrize(
    "overrides,arch,gated",
    [
        (["arch=uni"], "uni-encoder", True),
        (["arch=fused"], "bi-encoder-fused", True),
        (["arch=uni_plain"], "uni-encoder", False),
        (["arch=fused_plain"], "bi-encoder-fused", False),
        (["experiment=paper_base"], "uni-encoder", False),  # the paper recipes export what the official package reads
    ],
)
def test_new_uni_and_fused_models_are_gated_and_the_official_layouts_stay_named(overrides, arch, gated):
    from conftest import hydra_conf_dir
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    with hydra_conf_dir():
        cfg = compose("train", overrides=overrides)
    assert not GlobalHydra.instance().is_initialized()
    assert cfg.model.config.architecture_type == arch
    assert (cfg.model.config.get("segment_attention") == "gated") is gated
