"""ZeroShotPipeline on tiny random models: outputs, chunking and label groups vs brute force, caches, bad input."""

from __future__ import annotations

import functools
import math
import re
import traceback
from pathlib import Path

import pytest
import torch
from conftest import TINY_BACKBONES, needs_cpp_compiler, tiny_model, tiny_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gliclass
from gliclass import GLiClassProcessor, build_model
from gliclass.pipeline import ZeroShotPipeline
from gliclass.processing import LabelBudgetError, ReservedTokenError, check_text

# words of the tiny vocabulary: one WordPiece token each, so token windows are word windows
SENTENCE = (
    "the movie was good but the food was bad and the service was terrible so the music was great and we "
    "would make time for it on the first day of travel to the hotel with my phone"
)
WORDS = SENTENCE.split(" ")
LABELS = ["positive", "negative", "neutral"]


# tiny tensors: one intra-op thread (conftest.single_thread)
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def uni():
    return tiny_model("bert", max_length=48)


@pytest.fixture
def pipe(uni):
    return ZeroShotPipeline(*uni)


def direct_logits(model, processor, text, labels, prompt=None, examples=None) -> torch.Tensor:
    """The model on one (text, labels) row, no pipeline; asserts the processor did not need to cut anything."""
    batch = processor([text], [labels], prompts=[prompt], examples=[examples])
    full = processor.tokenizer(processor.segments(text, labels, prompt, examples).string)["input_ids"]
    assert len(full) == batch["input_ids"].shape[1] <= processor.budget
    with torch.inference_mode():
        return model(**batch).logits[0, : len(labels)]


def logits_of(pipe, texts, labels, **kwargs) -> list[torch.Tensor]:
    return [torch.tensor(list(row["logits"].values())) for row in pipe.logits(texts, labels, **kwargs)]


# ----------------------------------------------------------------------------- basic outputs
def test_multi_label_output_is_sorted_and_thresholded(pipe):
    scores = pipe.scores("good movie", LABELS)[0]
    assert list(scores) == LABELS
    out = pipe("good movie", LABELS, threshold=0.3)
    assert [p["label"] for p in out] == sorted((k for k in scores if scores[k] >= 0.3), key=lambda k: -scores[k])
    assert all(math.isclose(p["score"], scores[p["label"]]) for p in out)
    assert pipe("good movie", LABELS, threshold=0.0).__len__() == 3


def test_threshold_one_keeps_exactly_the_saturated_scores(uni):
    """threshold=1.0 keeps the labels that score exactly 1.0 (a saturated sigmoid), and only those."""
    model, processor = uni

    class Saturated(torch.nn.Module):
        """Logits +100, 0, -100, ...: scores exactly 1.0, 0.5 and 0.0 in the order of the labels."""

        config = model.config

        def forward(self, input_ids, attention_mask, labels_mask, **_):
            out = model(input_ids=input_ids, attention_mask=attention_mask, labels_mask=labels_mask)
            levels = torch.tensor([100.0, 0.0, -100.0]).repeat(out.logits.shape[1])[: out.logits.shape[1]]
            out.logits = levels.expand_as(out.logits).clone()
            return out

    pipe = ZeroShotPipeline(Saturated(), processor)
    labels = ["neutral", "positive", "negative", "sad"]
    assert pipe.scores("good movie", labels)[0] == {"neutral": 1.0, "positive": 0.5, "negative": 0.0, "sad": 1.0}
    assert pipe("good movie", labels, threshold=1.0) == [
        {"label": "neutral", "score": 1.0},
        {"label": "sad", "score": 1.0},
    ]
    assert [p["label"] for p in pipe("good movie", labels, threshold=0.5)] == ["neutral", "sad", "positive"]
    assert [p["label"] for p in pipe("good movie", labels, threshold=0.0)] == ["neutral", "sad", "positive", "negative"]


def test_single_label_softmax_and_top1(pipe):
    scores = pipe.scores(["good movie", "bad food"], LABELS, multi_label=False)
    for row in scores:
        assert math.isclose(sum(row.values()), 1.0, rel_tol=1e-5)
    out = pipe(["good movie", "bad food"], LABELS, multi_label=False)
    for row, predicted in zip(scores, out, strict=True):
        assert len(predicted) == 1 and predicted[0]["label"] == max(row, key=row.get)


def test_str_input_returns_one_list_and_list_input_a_list_per_text(pipe):
    one = pipe("good movie", LABELS)
    many = pipe(["good movie"], LABELS)
    assert isinstance(one, list) and (not one or isinstance(one[0], dict))
    assert many == [one]
    assert pipe([], LABELS) == []


def test_ties_keep_input_label_order(uni):
    model, processor = uni

    class Constant(torch.nn.Module):
        """Equal logits for every label: the ranking must fall back to input order."""

        config = model.config

        def forward(self, input_ids, attention_mask, labels_mask, **_):
            out = model(input_ids=input_ids, attention_mask=attention_mask, labels_mask=labels_mask)
            out.logits = torch.zeros_like(out.logits)
            return out

    pipe = ZeroShotPipeline(Constant(), processor, threshold=0.5)
    labels = ["neutral", "positive", "negative", "sad"]
    assert [p["label"] for p in pipe("good movie", labels)] == labels
    assert pipe("good movie", labels, multi_label=False)[0]["label"] == "neutral"


def test_per_text_thresholds_and_ragged_labels_match_single_calls(pipe):
    texts = ["good movie", "the food was bad", "music"]
    labels = [["positive"], ["food", "service", "negative", "positive"], ["music", "sport"]]
    batched = logits_of(pipe, texts, labels)
    for text, labels_i, row in zip(texts, labels, batched, strict=True):
        torch.testing.assert_close(row, logits_of(pipe, text, labels_i)[0], atol=1e-4, rtol=1e-4)
    out = pipe(texts, labels, threshold=[0.0, 1.0, 0.0])
    assert len(out[0]) == 1 and out[1] == [] and len(out[2]) == 2


def test_matches_direct_model_call_with_prompt_and_examples(pipe, uni):
    examples = [{"text": "great film", "labels": ["positive"]}, {"text": "awful food", "labels": ["negative"]}]
    got = logits_of(pipe, "good movie", LABELS, prompt="sentiment", examples=examples)[0]
    torch.testing.assert_close(got, direct_logits(*uni, "good movie", LABELS, "sentiment", examples), atol=1e-5, rtol=0)
    plain = logits_of(pipe, "good movie", LABELS)[0]
    assert not torch.allclose(got, plain)  # the prompt and examples reach the model


def test_per_text_prompts_and_examples(pipe, uni):
    examples = [[{"text": "great film", "labels": ["positive"]}], None]
    got = logits_of(pipe, ["good movie", "bad food"], LABELS, prompt=["sentiment", None], examples=examples)
    torch.testing.assert_close(
        got[0], direct_logits(*uni, "good movie", LABELS, "sentiment", examples[0]), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(got[1], direct_logits(*uni, "bad food", LABELS), atol=1e-4, rtol=0)


def test_hierarchical_labels_flattened_and_returned_nested(pipe):
    labels = {"sentiment": ["positive", "negative"], "topic": {"food": ["price", "quality"], "sport": "team"}}
    flat = ["sentiment.positive", "sentiment.negative", "topic.food.price", "topic.food.quality", "topic.sport.team"]
    scores = pipe.scores("good food", labels)[0]
    assert list(scores) == flat
    nested = pipe("good food", labels, return_hierarchy=True)
    assert nested["sentiment"] == {"positive": scores[flat[0]], "negative": scores[flat[1]]}
    assert nested["topic"]["food"]["quality"] == scores[flat[3]] and nested["topic"]["sport"] == {
        "team": scores[flat[4]]
    }
    per_text = pipe(["good food", "bad"], [labels, {"x": ["y"]}], return_hierarchy=True)
    assert per_text[1] == {"x": {"y": pytest.approx(pipe.scores("bad", ["x.y"])[0]["x.y"])}}


def test_logits_output_shapes(pipe):
    out = pipe.logits(["good movie", "bad"], [LABELS, ["food"]])
    assert list(out[0]["logits"]) == LABELS and list(out[1]["class_embeddings"]) == ["food"]
    assert out[0]["text_embedding"].shape == (32,)
    assert out[0]["class_embeddings"]["neutral"].shape == (32,)


@pytest.mark.parametrize("text", ["   ", "\n\t", "😀🎉 emoji only", "naïve café — ünïcödé ✓", "a" * 3])
def test_whitespace_and_unicode_texts_work(pipe, uni, text):
    """Scored like any text: the sigmoid of the model's logits on the row that holds exactly the text's tokens
    (none for whitespace), alone or padded beside a longer text."""
    model, processor = uni
    scores = pipe.scores(text, LABELS)[0]
    assert list(scores) == LABELS
    assert list(scores.values()) == pytest.approx(torch.sigmoid(direct_logits(model, processor, text, LABELS)).tolist())
    tokens = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert (tokens == []) == (text.strip() == "")
    row = processor([text], [LABELS])["input_ids"][0].tolist()
    assert row[1 : 1 + len(tokens) + 1] == [*tokens, model.config.class_token_index]  # text, then the label block
    assert pipe.scores([" ".join(WORDS[:12]), text], LABELS)[1] == pytest.approx(scores, abs=1e-5)


# ----------------------------------------------------------------------------- long texts
def test_long_text_is_chunked_with_overlap_and_matches_brute_force(uni):
    model, processor = uni
    pipe = ZeroShotPipeline(model, processor, chunk_overlap=8)
    assert all(len(processor.tokenizer.tokenize(word)) == 1 for word in WORDS)
    text = " ".join(WORDS * 3)  # 120 one-token words; 48-token budget
    labels = ["positive", "negative"]
    # room for text = budget - [CLS] <<SEP>> [SEP] - 2 x (<<LABEL>> + one-token label)
    room = processor.budget - 3 - 4
    starts = list(range(0, len(WORDS) * 3 - room + (room - 8), room - 8))
    expected_chunks = [" ".join((WORDS * 3)[s : s + room]) for s in starts]
    assert (room - 8) * (len(starts) - 1) + room >= len(WORDS) * 3  # the windows cover every word
    units = pipe._plan(pipe._requests(text, labels, None, None, None, None)[0])
    assert [u.text for u in units] == expected_chunks
    chunk_logits = torch.stack([direct_logits(model, processor, chunk, labels) for chunk in expected_chunks])
    got = logits_of(pipe, text, labels)[0]
    torch.testing.assert_close(got, chunk_logits.max(0).values, atol=1e-4, rtol=0)
    for multi in (True, False):
        activation = torch.sigmoid if multi else (lambda x: torch.softmax(x, dim=-1))
        probs = activation(chunk_logits)
        expected = {
            "max": probs.max(0).values,
            "mean": probs.mean(0),
            "logit-mean": activation(chunk_logits.mean(0)),
        }
        for how, value in expected.items():
            pipe.aggregation = how
            got = torch.tensor(list(pipe.scores(text, labels, multi_label=multi)[0].values()))
            torch.testing.assert_close(got, value, atol=1e-4, rtol=0)


def test_text_is_never_cut(uni):
    model, processor = uni
    pipe = ZeroShotPipeline(model, processor, chunk_overlap=0)
    text = " ".join(f"{w}{i % 7}" for i, w in enumerate(WORDS * 2))  # words that split into several pieces
    units = pipe._plan(pipe._requests(text, LABELS, None, None, None, None)[0])
    assert len(units) > 1
    assert all(u.length <= processor.budget for u in units)
    assert all(text.startswith(u.text) or f" {u.text}" in text for u in units)  # chunks end at word boundaries
    rebuilt = " ".join(u.text for u in units)
    assert rebuilt == text  # no overlap: the chunks concatenate back to the text


# ----------------------------------------------------------------------------- many labels
def test_label_groups_match_brute_force(uni):
    model, processor = uni
    labels = ["positive", "negative", "neutral", "happy", "sad", "angry", "fear", "joy", "surprise", "disgust"]
    pipe = ZeroShotPipeline(model, processor, max_labels_per_group=4)
    groups = [labels[0:4], labels[4:7], labels[7:10]]  # as even as possible, in input order
    expected = torch.cat([direct_logits(model, processor, "good movie", group) for group in groups])
    got = logits_of(pipe, "good movie", labels)[0]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    # single-label across groups: one softmax over every label's logit
    single = torch.tensor(list(pipe.scores("good movie", labels, multi_label=False)[0].values()))
    torch.testing.assert_close(single, torch.softmax(expected, -1), atol=1e-5, rtol=0)


def test_labels_over_the_budget_are_grouped_and_text_chunked(uni):
    model, processor = uni
    pipe = ZeroShotPipeline(model, processor)
    labels = [f"{a} {b}" for a in ["good", "bad", "new", "old"] for b in ["movie", "food", "phone", "team", "book"]]
    text = " ".join(WORDS * 2)
    requests = pipe._requests(text, labels, None, None, None, None)[0]
    units = pipe._plan(requests)
    assert len({u.group for u in units}) > 1 and len({u.chunk for u in units}) > 1
    assert all(u.length <= processor.budget for u in units)
    covered = sorted(i for u in units if u.chunk == 0 for i in range(u.label_start, u.label_start + len(u.labels)))
    assert covered == list(range(len(labels)))
    logits = logits_of(pipe, text, labels)[0]
    for unit in units:  # every row scored exactly as the model scores it alone; logits are the max over chunks
        row = direct_logits(model, processor, unit.text, unit.labels)
        assert torch.all(logits[unit.label_start : unit.label_start + len(unit.labels)] >= row - 1e-4)


def test_truncate_scores_the_head_once_per_label_group(uni):
    model, processor = uni
    chunked = ZeroShotPipeline(model, processor)
    truncated = ZeroShotPipeline(model, processor, long_text="truncate", min_chunk_tokens=16)
    text = " ".join(WORDS * 3)  # 120 one-token words; 48-token budget
    many = [f"{w} {v}" for w in ("good", "bad", "great", "terrible", "first", "music") for v in ("movie", "food")]
    for labels, groups in ((LABELS, 1), (many, 2)):
        plan = truncated.plan(text, labels)[0]
        assert [row["chunk"] for row in plan] == [0] * groups  # one row per label group, no second chunk
        assert sorted(label for row in plan for label in row["labels"]) == sorted(labels)
        head = plan[0]["text"]
        assert all(row["text"] == head for row in plan) and text.startswith(head)
        assert 16 <= len(head.split()) < 120 and all(row["tokens"] <= processor.budget for row in plan)
        got = truncated.scores(text, labels)[0]
        assert list(got) == labels  # every label scored
        # the same as scoring the head alone, label group by label group
        reference = {}
        for row in plan:
            reference.update(chunked.scores(head, row["labels"])[0])
        assert got == pytest.approx(reference, abs=1e-6)
    assert truncated.plan("good movie", LABELS) == chunked.plan("good movie", LABELS)  # short texts: unchanged


def test_planning_settings_live_on_the_planner_and_stay_settable(uni):
    """`gliclass.planning.RowPlanner` plans the rows; the pipeline's settings of the same names read and set it, so
    changing one on a built pipeline plans as a pipeline built with it (as before planning had its own module)."""
    model, processor = uni
    text = " ".join(WORDS * 3)
    built = ZeroShotPipeline(model, processor, long_text="truncate", max_labels_per_group=2, chunk_overlap=4)
    changed = ZeroShotPipeline(model, processor)
    assert changed.plan(text, LABELS) != built.plan(text, LABELS)
    changed.long_text, changed.max_labels_per_group, changed.chunk_overlap = "truncate", 2, 4
    assert (changed.planner.long_text, changed.planner.max_labels_per_group, changed.long_text) == (
        "truncate",
        2,
        "truncate",
    )
    assert changed.plan(text, LABELS) == built.plan(text, LABELS)
    assert changed.processor is changed.planner.processor is processor
    requests = changed._requests(text, LABELS, None, None, None, None)[0]
    assert changed.planner.rows(requests) == changed.plan(text, LABELS)  # the same rows with no pipeline call


def test_bf16_precision_moves_scores_a_little(uni):
    fp32 = ZeroShotPipeline(*uni)
    bf16 = ZeroShotPipeline(*uni, precision="bf16")
    texts = ["the movie was good", " ".join(WORDS)]
    a = [list(row.values()) for row in fp32.scores(texts, LABELS)]
    b = [list(row.values()) for row in bf16.scores(texts, LABELS)]
    diff = torch.tensor(a) - torch.tensor(b)
    assert 0 < diff.abs().max() < 0.05  # autocast really ran, and stayed close


def test_compile_and_precision_need_a_torch_model(uni):
    class NotTorch:
        def __call__(self, **batch):
            raise AssertionError("never called")

    for kwargs, message in [(dict(compile=True), "compile"), (dict(precision="bf16"), "precision")]:
        with pytest.raises(ValueError, match=message):
            ZeroShotPipeline(NotTorch(), uni[1], **kwargs)


@pytest.mark.slow
@needs_cpp_compiler
def test_compiled_pipeline_equals_eager(uni):
    """torch.compile (dynamic shapes, frozen weights): same scores across lengths, label counts and batch sizes."""
    eager = ZeroShotPipeline(*uni, batch_size=4)
    compiled = ZeroShotPipeline(*uni, batch_size=4, compile=True)
    cases = [(["good movie"], ["positive"]), (["good movie", " ".join(WORDS * 2)], LABELS)]
    cases += [([" ".join(WORDS[:n]) for n in (3, 9, 20)], [*LABELS, "sports"])]
    for texts, labels in cases:
        for mine, theirs in zip(compiled.scores(texts, labels), eager.scores(texts, labels), strict=True):
            assert list(mine.values()) == pytest.approx(list(theirs.values()), abs=1e-5)


def test_compiled_pipeline_equals_eager_fast(uni, monkeypatch):
    """The fast variant of the test above, in `make test`: the same compile path (`compile=True`: dynamic shapes,
    the freezing patch, the pipeline's runner) with dynamo's eager backend instead of inductor's C++ kernels (a
    minute or more to build on a CPU), on one padded batch: exactly the eager scores."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    counts = torch._dynamo.utils.counters
    counts.clear()
    try:
        compiled = ZeroShotPipeline(*uni, batch_size=4, compile=True)
        texts, labels = ["good movie", " ".join(WORDS[:20])], [*LABELS, "sports"]
        assert compiled.scores(texts, labels) == ZeroShotPipeline(*uni, batch_size=4).scores(texts, labels)
        assert counts["stats"]["unique_graphs"] >= 1  # the model really ran through dynamo
    finally:
        torch._dynamo.reset()


def test_thousand_labels_on_a_512_position_backbone():
    torch.manual_seed(0)
    backbone = {**TINY_BACKBONES["bert"], "max_position_embeddings": 512}
    model, processor = build_model(backbone, tokenizer=tiny_tokenizer(), initializer_range=0.3)
    pipe = ZeroShotPipeline(model.eval(), processor, batch_size=16)
    vocab = [w for w in WORDS if len(w) > 2]
    labels = [f"{vocab[i % len(vocab)]} {i}" for i in range(1000)]
    assert len(set(labels)) == 1000 and processor.budget == 512
    scores = pipe.scores(["good movie", " ".join(WORDS * 20)], labels)
    assert all(list(row) == labels for row in scores)
    units = pipe._plan(pipe._requests("good movie", labels, None, None, None, None)[0])
    assert len(units) > 1 and all(u.length <= 512 for u in units)


# ----------------------------------------------------------------------------- other architectures, caches
@pytest.mark.parametrize("arch", ["bi-encoder", "bi-encoder-fused"])
def test_bi_encoder_label_cache_equals_no_cache(arch):
    model, processor = tiny_model("bert", architecture_type=arch, max_length=48)
    calls = []
    encode = model.encode_labels
    model.encode_labels = lambda ids, mask: calls.append(ids.shape[0]) or encode(ids, mask)
    cached = ZeroShotPipeline(model, processor)
    plain = ZeroShotPipeline(model, processor, label_cache=False)
    texts = ["good movie", " ".join(WORDS * 2), "bad"]
    labels = [LABELS, ["food", "service", "positive"], ["music"]]
    for a, b in zip(logits_of(cached, texts, labels), logits_of(plain, texts, labels), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert sum(calls) == 6  # the cached pipeline encoded each distinct label once
    cached.scores(texts, labels)
    assert sum(calls) == 6  # ... and reused them on the next call
    cached.clear_label_cache()
    cached.scores("x", ["music"])
    assert sum(calls) == 7


def test_given_label_vectors_replace_the_encoded_ones():
    """A label given a vector is scored with it and never encoded; other labels are encoded as before; dropping the
    vectors (or not) survives `clear_label_cache` as documented."""
    model, processor = tiny_model("bert", architecture_type="bi-encoder", max_length=48)
    pipe = ZeroShotPipeline(model, processor)
    texts = ["good movie", " ".join(WORDS * 2)]
    plain = pipe.logits(texts, LABELS)
    calls = []
    encode = model.encode_labels
    model.encode_labels = lambda ids, mask: calls.append(ids.shape[0]) or encode(ids, mask)
    # "positive" takes the vector of "negative": its logits become those of "negative", the rest are unchanged
    pipe = ZeroShotPipeline(model, processor)
    pipe.set_label_vectors({"positive": plain[0]["class_embeddings"]["negative"]})
    given = pipe.logits(texts, LABELS)
    assert sum(calls) == 2  # only "negative" and "neutral" were encoded
    for before, after in zip(plain, given, strict=True):
        assert after["logits"]["positive"] == pytest.approx(before["logits"]["negative"], abs=1e-5)
        for label in ("negative", "neutral"):
            assert after["logits"][label] == pytest.approx(before["logits"][label], abs=1e-5)
    pipe.clear_label_cache()
    kept = pipe.logits(texts, LABELS)
    assert kept[0]["logits"]["positive"] == pytest.approx(plain[0]["logits"]["negative"], abs=1e-5)
    pipe.set_label_vectors(None)
    back = pipe.logits(texts, LABELS)
    assert back[0]["logits"]["positive"] == pytest.approx(plain[0]["logits"]["positive"], abs=1e-5)


def test_label_vectors_are_checked():
    model, processor = tiny_model("bert", architecture_type="bi-encoder", max_length=48)
    pipe = ZeroShotPipeline(model, processor)
    width = processor.config.encoder_config.hidden_size
    with pytest.raises(ValueError, match=rf"has shape \(3,\); the model needs \({width},\)"):
        pipe.set_label_vectors({"positive": torch.zeros(3)})
    with pytest.raises(ValueError, match="not finite"):
        pipe.set_label_vectors({"positive": torch.full((width,), float("nan"))})
    with pytest.raises(ValueError, match="non-empty label names"):
        pipe.set_label_vectors({"": torch.zeros(width)})
    with pytest.raises(ValueError, match="label_cache=False"):
        ZeroShotPipeline(model, processor, label_cache=False).set_label_vectors({"positive": torch.zeros(width)})
    uni, uni_processor = tiny_model("bert", max_length=48)
    with pytest.raises(ValueError, match="uni-encoder has no label encoder"):
        ZeroShotPipeline(uni, uni_processor).set_label_vectors({"positive": torch.zeros(width)})


def test_label_prototypes_mix_label_and_example_vectors():
    """Weight 0: the label's own vector; weight 1: the unit mean of its examples' unit text vectors; in between the
    unit mix. Given as label vectors at weight 1, each label's one example scores its own label highest. Vectors
    already given do not leak into the label's own vector."""
    model, processor = tiny_model("bert", architecture_type="bi-encoder", max_length=48, normalize_features=True)
    pipe = ZeroShotPipeline(model, processor)
    examples = {"positive": ["good movie", "very good"], "negative": ["bad"], "neutral": [" ".join(WORDS * 2)]}
    own = pipe.logits(["x"], LABELS)[0]["class_embeddings"]
    texts = {label: [pipe.logits([t], LABELS)[0]["text_embedding"] for t in rows] for label, rows in examples.items()}
    unit = torch.nn.functional.normalize
    for weight in (0.0, 0.3, 1.0):
        vectors = pipe.label_prototypes(examples, weight)
        assert list(vectors) == list(examples)
        for label, rows in texts.items():
            prototype = unit(unit(torch.stack(rows), dim=-1).mean(0), dim=0)
            expected = unit((1 - weight) * own[label] + weight * prototype, dim=0)
            torch.testing.assert_close(vectors[label], expected, atol=1e-5, rtol=1e-5)
    single = {label: rows[:1] for label, rows in examples.items()}
    pipe.set_label_vectors(pipe.label_prototypes(single, 1.0))
    for label, rows in single.items():
        (scores,) = pipe.scores([rows[0]], LABELS)
        assert max(scores, key=scores.get) == label
    again = pipe.label_prototypes(examples, 0.0)  # with vectors given: still the label tower's own vectors
    for label in LABELS:
        torch.testing.assert_close(again[label], own[label], atol=1e-5, rtol=1e-5)


def test_label_prototypes_refuse_what_they_cannot_do():
    model, processor = tiny_model("bert", architecture_type="bi-encoder", max_length=48)
    pipe = ZeroShotPipeline(model, processor)
    with pytest.raises(ValueError, match=r"weight must be a number in \[0, 1\]"):
        pipe.label_prototypes({"positive": ["good"]}, 1.5)
    with pytest.raises(ValueError, match="needs a non-empty list of example texts"):
        pipe.label_prototypes({"positive": []})
    with pytest.raises(ValueError, match="needs a non-empty list of example texts"):
        pipe.label_prototypes({"positive": "good"})
    with pytest.raises(TypeError, match="examples must map each label"):
        pipe.label_prototypes(["positive"])
    with pytest.raises(ValueError, match="empty"):
        pipe.label_prototypes({"positive": [""]})
    with pytest.raises(ValueError, match="label_cache=False"):
        ZeroShotPipeline(model, processor, label_cache=False).label_prototypes({"positive": ["good"]})
    for config in ({"architecture_type": "uni-encoder"}, {"architecture_type": "bi-encoder-fused"}):
        other, other_processor = tiny_model("bert", max_length=48, **config)
        with pytest.raises(ValueError, match="need a bi-encoder with the dot scorer"):
            ZeroShotPipeline(other, other_processor).label_prototypes({"positive": ["good"]})
    mlp, mlp_processor = tiny_model("bert", architecture_type="bi-encoder", scorer_type="mlp", max_length=48)
    with pytest.raises(ValueError, match="with scorer 'mlp'"):
        ZeroShotPipeline(mlp, mlp_processor).label_prototypes({"positive": ["good"]})


def test_encoder_decoder_groups_labels_by_decoder_budget():
    model, processor = tiny_model(architecture_type="encoder-decoder", max_length=16)
    pipe = ZeroShotPipeline(model, processor)
    labels = ["positive", "negative", "neutral", "happy", "sad", "angry", "fear", "joy", "surprise", "disgust"]
    units = pipe._plan(pipe._requests("good movie", labels, None, None, None, None)[0])
    assert len(units) > 1
    for unit in units:
        block = processor.tokenizer(processor.label_block(unit.labels))["input_ids"]
        assert len(block) <= processor.budget
    expected = torch.cat([direct_logits(model, processor, "good movie", u.labels) for u in units])
    torch.testing.assert_close(logits_of(pipe, "good movie", labels)[0], expected, atol=1e-4, rtol=0)


def test_from_pretrained_round_trip(uni, tmp_path):
    model, processor = uni
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = ZeroShotPipeline.from_pretrained(tmp_path, batch_size=2, multi_label=False)
    assert loaded.batch_size == 2 and loaded.multi_label is False
    texts = ["good movie", " ".join(WORDS * 2)]
    for a, b in zip(logits_of(loaded, texts, LABELS), logits_of(ZeroShotPipeline(*uni), texts, LABELS), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ZeroShotPipeline.from_pretrained(tmp_path / "missing")


# ----------------------------------------------------------------------------- bad input
BAD_CALLS = [
    (dict(texts=""), ValueError, "text 0 is empty"),
    (dict(texts=["ok", ""]), ValueError, "text 1 is empty"),
    (dict(texts=None), TypeError, "texts must be"),
    (dict(texts=["ok", None]), TypeError, "text 1 must be a str"),
    (dict(texts=[1]), TypeError, "text 0 must be a str"),
    (dict(texts={"a": 1}), TypeError, "texts must be"),
    (dict(labels=[]), ValueError, "label list is empty"),
    (dict(labels=None), TypeError, "labels must be"),
    (dict(labels="positive"), TypeError, "not a str"),
    (dict(labels=["a", "a"]), ValueError, "duplicate labels: \\['a'\\]"),
    (dict(labels=["a", 3]), TypeError, "every label must be a str"),
    (dict(labels=["a", ""]), ValueError, "empty or whitespace"),
    (dict(labels=["a", "<<LABEL>>"]), ValueError, "reserved token"),
    (dict(labels=["a", ["b"]]), TypeError, "mixes strings and lists"),
    (dict(labels=[["a"], ["b"]]), ValueError, "1 texts but 2 label lists"),
    (dict(labels=[[]]), ValueError, "labels of text 0: the label list is empty"),
    (dict(labels={}), ValueError, "label dict is empty"),
    (dict(labels={"a": []}), ValueError, "under 'a' is empty"),
    (dict(labels={"a": ["x.y"], "a.x": ["y"]}), ValueError, "duplicate"),
    (dict(threshold=1.5), ValueError, "threshold must be in \\[0, 1\\]"),
    (dict(threshold=-0.1), ValueError, "threshold must be in \\[0, 1\\]"),
    (dict(threshold=float("nan")), ValueError, "threshold must be in"),
    (dict(threshold="0.5"), TypeError, "threshold must be a number"),
    (dict(threshold=True), TypeError, "threshold must be a number"),
    (dict(threshold=[0.5, 0.5]), ValueError, "1 texts but 2 values of threshold"),
    (dict(multi_label="yes"), TypeError, "multi_label must be True or False"),
    (dict(prompt=3), TypeError, "prompt 0 must be a str"),
    (dict(examples=[{"labels": ["a"]}]), ValueError, "few-shot example must be a dict with 'text'"),
    (dict(examples="x"), TypeError, "examples must be"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_CALLS)
def test_bad_input_raises_a_named_error(pipe, kwargs, error, message):
    call = {"texts": "good movie", "labels": LABELS, **kwargs}
    with pytest.raises(error, match=message):
        pipe(call.pop("texts"), call.pop("labels"), **call)


def test_bad_constructor_arguments(uni):
    for kwargs, message in [
        (dict(batch_size=0), "batch_size"),
        (dict(threshold=2), "threshold"),
        (dict(aggregation="median"), "aggregation"),
        (dict(chunk_overlap=-1), "chunk_overlap"),
        (dict(max_labels_per_group=0), "max_labels_per_group"),
        (dict(long_text="drop"), "long_text"),
        (dict(precision="fp16"), "precision"),
    ]:
        with pytest.raises(ValueError, match=message):
            ZeroShotPipeline(*uni, **kwargs)


def test_a_label_longer_than_the_budget_is_named(pipe):
    with pytest.raises(ValueError, match="alone needs"):
        pipe("good movie", ["positive", " ".join(WORDS * 2)])


# the pipeline's own rejections of bad arguments (gliclass/pipeline.py, pipeline_inputs.py, processing.py); any
# other ValueError/TypeError (from torch, the tokenizer, an unchecked index) is a bug the fuzz test must report
NAMED_ERRORS = [
    (TypeError, r"^texts must be a str or a list of str, got \w+$"),
    (TypeError, r"^text \d+ must be a str, got \w+$"),
    (ValueError, r"^text \d+ is empty$"),
    (TypeError, r"^labels must be a list of str, a list per text, or a dict; got \w+$"),
    (TypeError, r"^labels must be a list of str, not a str \(.*\); pass \[.*\]$"),
    (TypeError, r"^labels mixes strings and lists: give one list of str, or one list per text$"),
    (ValueError, r"^the label list is empty$"),
    (ValueError, r"^got \d+ texts but \d+ label lists \(one list per text, or one for all\)$"),
    (TypeError, r"^(labels|labels of text \d+): labels must be a list of str, got \w+$"),
    (TypeError, r"^(labels|labels of text \d+): every label must be a str, got \w+: .*$"),
    (TypeError, r"^(labels|labels of text \d+): label dict keys must be str, got \w+: .*$"),
    (ValueError, r"^(labels|labels of text \d+): the label list is empty$"),
    (ValueError, r"^(labels|labels of text \d+): the label dict( under .*)? is empty$"),
    (ValueError, r"^(labels|labels of text \d+): the label list under .* is empty$"),
    (ValueError, r"^(labels|labels of text \d+): a label is empty or whitespace$"),
    (ValueError, r"^(labels|labels of text \d+): duplicate labels: \[.*\]$"),
    (TypeError, r"^threshold must be a number in \[0, 1\], got \w+: .*$"),
    (ValueError, r"^threshold must be in \[0, 1\], got .*$"),
    (ValueError, r"^got \d+ texts but \d+ values of threshold \(give one value, or one per text\)$"),
    (TypeError, r"^multi_label must be True or False, got .*$"),
]
PROJECT_ERRORS = (LabelBudgetError, ReservedTokenError)  # the project's own classes, whatever their message
GLICLASS_DIR = Path(gliclass.__file__).resolve().parent


def assert_named_error(error: Exception) -> None:
    """`error` is one of the pipeline's own rejections: raised in gliclass code, with a message it writes."""
    frames = traceback.extract_tb(error.__traceback__)
    origin = Path(frames[-1].filename).resolve()
    assert origin.is_relative_to(GLICLASS_DIR), f"{type(error).__name__} raised outside gliclass ({origin}): {error}"
    if isinstance(error, PROJECT_ERRORS):
        assert str(error)
        return
    message = str(error)
    known = [pattern for kind, pattern in NAMED_ERRORS if type(error) is kind and re.search(pattern, message, re.S)]
    assert known, f"not one of the pipeline's named errors: {type(error).__name__}: {message}"


def test_named_errors_accept_the_project_messages_only(pipe):
    """The fuzz test's filter: the pipeline's rejections pass it; errors from torch or other messages do not."""
    for call in (dict(texts=None), dict(labels=["a", "a"]), dict(threshold=2.0), dict(labels=["<<SEP>>"])):
        call = {"texts": "good movie", "labels": LABELS, **call}
        with pytest.raises((TypeError, ValueError)) as caught:
            pipe(call.pop("texts"), call.pop("labels"), **call)
        assert_named_error(caught.value)
    with pytest.raises(ValueError) as caught:  # a ValueError from inside torch
        torch.nn.functional.cross_entropy(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(AssertionError, match="outside gliclass"):
        assert_named_error(caught.value)
    with pytest.raises(TypeError) as caught:  # raised in gliclass, but not a message the pipeline writes
        check_text(None, "something else")
    with pytest.raises(AssertionError, match="named errors"):
        assert_named_error(caught.value)


text_strategy = st.one_of(st.text(max_size=80), st.none(), st.integers(), st.just("   "), st.just("😀 good"))
label_strategy = st.one_of(
    st.lists(st.one_of(st.text(max_size=12), st.integers(), st.none()), max_size=6),
    st.text(max_size=5),
    st.none(),
    st.dictionaries(st.text(max_size=4), st.lists(st.text(min_size=1, max_size=6), max_size=3), max_size=2),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    texts=st.one_of(text_strategy, st.lists(text_strategy, max_size=3)),
    labels=label_strategy,
    threshold=st.one_of(st.none(), st.floats(allow_nan=True), st.just(0.5)),
    multi_label=st.one_of(st.none(), st.booleans()),
)
def test_fuzz_only_named_errors(pipe, texts, labels, threshold, multi_label):
    try:
        out = pipe(texts, labels, threshold=threshold, multi_label=multi_label)
    except (ValueError, TypeError) as error:
        assert_named_error(error)
        return
    assert isinstance(out, list)
    rows = [out] if isinstance(texts, str) else out
    for row in rows:
        assert all(0.0 <= p["score"] <= 1.0 for p in row)


def test_rows_are_tokenized_once_while_planning(uni, monkeypatch):
    """The ids measured while planning are the ones encoded: the processor does not tokenise the rows again."""
    model, processor = uni
    pipe = ZeroShotPipeline(model, processor)
    texts = ["good movie", " ".join(WORDS * 3)]  # one that fits, one that is chunked
    expected = pipe.scores(texts, LABELS)
    rows = [row for text in texts for row in pipe.plan(text, LABELS)[0]]
    strings = [processor.segments(row["text"], row["labels"]).string for row in rows]
    ids = processor._tokenize(strings)["input_ids"]
    plain = processor.encode_batch([r["text"] for r in rows], [r["labels"] for r in rows])
    assert processor.encode_batch([r["text"] for r in rows], [r["labels"] for r in rows], token_ids=ids) == plain

    def refuse(*args, **kwargs):
        raise AssertionError("rows were tokenised a second time")

    monkeypatch.setattr(processor, "_tokenize", refuse)
    assert pipe.scores(texts, LABELS) == expected
    with pytest.raises(ValueError, match="token id lists"):
        processor.encode_batch(["good movie"], [LABELS], token_ids=[])


def test_compile_without_a_cpp_compiler_names_the_problem(uni, monkeypatch):
    from torch._inductor import config as inductor_config

    # config.patch restores the setting (monkeypatch's undo leaves inductor without `cpp.cxx` for later compiles)
    with (
        inductor_config.patch({"cpp.cxx": ("no-such-compiler++",)}),
        pytest.raises(RuntimeError, match="needs a C\\+\\+ compiler"),
    ):
        ZeroShotPipeline(*uni, compile=True)


@pytest.mark.parametrize("label_cache", [True, False])
def test_a_label_template_scores_like_formatted_labels(label_cache):
    model, processor = tiny_model(architecture_type="bi-encoder", pooling_strategy="avg")
    templated = GLiClassProcessor(
        processor.tokenizer, processor.config, label_tokenizer=processor.label_tokenizer, label_template="a {} text"
    )
    texts, labels = ["the match ended", "a new phone"], ["sports", "tech"]
    with_template = ZeroShotPipeline(model, templated, label_cache=label_cache).scores(texts, labels)
    formatted = ZeroShotPipeline(model, processor, label_cache=label_cache).scores(
        texts, [f"a {x} text" for x in labels]
    )
    bare = ZeroShotPipeline(model, processor, label_cache=label_cache).scores(texts, labels)
    for got, want, plain in zip(with_template, formatted, bare, strict=True):
        assert list(got) == labels  # results keep the caller's label names
        assert list(got.values()) == pytest.approx(list(want.values()), abs=1e-6)
        assert list(got.values()) != pytest.approx(list(plain.values()), abs=1e-6)
