"""Per-call overhead: the `--overhead` speed mode end to end, and the pipeline's per-call work done once.

Timings are never asserted: only that the mode produces every cell, field and file, and that the pipeline's
shortcuts (label sets validated once, label blocks tokenised once, direct model rows) give exactly what the
tokenizer and processor give.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_model, tiny_tokenizer
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

import gliclass.pipeline as pipeline_module
from gliclass.config import SPECIAL_TOKENS
from gliclass.evaluation import overhead, speed, speed_inputs
from gliclass.evaluation.workers import official_python
from gliclass.pipeline import ZeroShotPipeline
from gliclass.planning import SequenceIds
from gliclass.processing import Segments, add_special_tokens, pad_ids

WORDS = ["the", "movie", "was", "good", "and", "the", "plot", "was", "bad", "but", "i", "love", "the", "music"]
LABELS = ["positive", "negative", "neutral"]
TEXTS = ["the movie was good", "the food was terrible and the service was bad", "i love the music"]


# tiny tensors: one intra-op thread (conftest.single_thread)
pytestmark = pytest.mark.usefixtures("single_thread")


# ----------------------------------------------------------------------------- the --overhead mode
@pytest.fixture
def bench_data(tmp_path: Path) -> Path:
    """The files the mode reads: clinc150's label names and IMDB texts (here a few tiny rows)."""
    root = tmp_path / "data"
    for name, split, labels in (
        (speed_inputs.LABEL_SOURCE, "train", ["play music", "book a flight", "weather"]),
        (speed_inputs.TEXT_SOURCE, "test", ["good", "bad"]),
    ):
        (root / name).mkdir(parents=True)
        (root / name / "labels.json").write_text(json.dumps(labels))
        rows = [{"text": " ".join(WORDS * 2), "labels": [labels[0]]} for _ in range(4)]
        (root / name / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.mark.slow
def test_overhead_mode_end_to_end(bench_data: Path, tmp_path: Path):
    """Ours (and the official pipeline, where its venv exists) on the tiny random checkpoint: every cell has the
    per-call, model and pipeline ms of every system, the tables and targets are written."""
    official = official_python() is not None
    systems = ["ours", "official"] if official else ["ours"]
    out = tmp_path / "out"
    argv = ["--overhead", "--data-dir", str(bench_data), "--out", str(out), "--systems", ",".join(systems)]
    result = speed.main([*argv, "--labels", "1,3", "--lengths", "8,12", "--passes", "2", "--calls", "2"])

    assert result["mode"] == "overhead" and result["order"] == systems
    assert result["budget_tokens"] == overhead.OVERHEAD_BACKBONE["max_position_embeddings"]
    assert [(c["text_tokens"], c["labels"]) for c in result["cells"]] == [(8, 1), (8, 3), (12, 1), (12, 3)]
    for cell in result["cells"]:
        assert set(cell["systems"]) == set(systems)
        for name in systems:
            timing = cell["systems"][name]
            assert timing["labels_scored"] == cell["labels"]  # one unsplit row: every label is scored
            for part in ("", "forward_", "pipeline_"):  # the whole call, the model alone, the pipeline alone
                assert len(timing[f"{part}seconds"]) == 2
                assert timing[f"{part}ms" if part else "ms_per_call"] == pytest.approx(
                    1000 * min(timing[f"{part}seconds"])
                )
        if official:  # the same checkpoint gives the same scores in both packages: the calls do the same work
            assert cell["max_score_diff_vs_official"]["ours"] < 1e-5
    markdown = (out / "overhead.md").read_text()
    assert "| text tokens | labels | seq tokens | ours ms/call |" in markdown
    assert "ours model ms | ours pipeline ms" in markdown
    assert json.loads((out / "overhead.json").read_text())["cells"] == result["cells"]
    if official:
        assert set(result["targets"]) == {
            "overhead_ours_vs_official_le_0.5x",
            "overhead_ours_pipeline_ms_vs_official_le_0.5x",
        }
        assert all(isinstance(target["holds"], bool) for target in result["targets"].values())
        assert "ours/official" in markdown
    else:
        assert result["targets"] == {} and "none judged" in markdown


def test_overhead_mode_rejects_other_systems_and_mixed_modes(bench_data: Path):
    with pytest.raises(SystemExit, match="--overhead runs"):
        speed.main(["--overhead", "--data-dir", str(bench_data), "--systems", "ours,cross-encoder"])
    with pytest.raises(SystemExit):
        speed.parse_args(["--overhead", "--quick"])


def test_overhead_defaults_and_explicit_values():
    args = speed.parse_args(["--overhead"])
    assert (args.systems, args.labels, args.lengths, args.name) == (
        "ours,ours-compiled,official",
        "1,8,128",
        "64,512",
        "overhead",
    )
    assert (args.passes, args.calls) == (overhead.OVERHEAD["passes"], overhead.OVERHEAD["calls"])
    args = speed.parse_args(["--overhead", "--passes", "3", "--labels", "2"])
    assert (args.passes, args.labels) == (3, "2")
    plain = speed.parse_args([])
    assert (plain.name, plain.passes, plain.calls, plain.labels) == ("speed", 10, 1, "1,2,4,8,16,32,64,128")


# ----------------------------------------------------------------------------- the pipeline's per-call work
class SpyTokenizer:
    """Delegates to a tokenizer and records every string it is asked to tokenise."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.strings = tokenizer, []

    def __call__(self, strings, *args, **kwargs):
        self.strings += [strings] if isinstance(strings, str) else list(strings)
        return self.tokenizer(strings, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


@pytest.fixture(scope="module")
def uni():
    return tiny_model("bert", max_length=48)


def model_logits(model, processor, text: str, labels: list[str]) -> torch.Tensor:
    """The model on the processor's own inputs (the whole string tokenised), no pipeline."""
    with torch.inference_mode():
        return model(**processor([text], [labels])).logits[0, : len(labels)]


def test_label_block_is_tokenised_once_per_label_set(uni):
    """From the second call with a label set on, only the text is tokenised; ids (and logits) stay exact."""
    model, processor = uni
    pipe = ZeroShotPipeline(model, processor)
    spy = SpyTokenizer(processor.tokenizer)
    pipe.processor.tokenizer = spy
    try:
        for round_ in range(3):
            for text in TEXTS:
                spy.strings.clear()
                got = pipe.logits(text, LABELS)[0]["logits"]
                if round_ == 2:  # learnt on the second call: the label block is never tokenised again
                    assert spy.strings == [text]
                expected = model_logits(model, processor, text, LABELS)
                assert torch.equal(torch.tensor(list(got.values())), expected)
        spy.strings.clear()
        pipe.logits(TEXTS[0], ["positive", "negative"])  # a new label set: the whole string again
        assert any(SPECIAL_TOKENS[0] in string for string in spy.strings)
        pipe.clear_label_cache()  # forgets the learnt label blocks too (e.g. after swapping the tokenizer)
        spy.strings.clear()
        pipe.logits(TEXTS[0], LABELS)
        assert any(SPECIAL_TOKENS[0] in string for string in spy.strings)
    finally:
        processor.tokenizer = spy.tokenizer


def test_label_set_is_validated_once(uni, monkeypatch):
    calls = []
    real = pipeline_module.check_labels
    monkeypatch.setattr(pipeline_module, "check_labels", lambda labels: calls.append(list(labels)) or real(labels))
    pipe = ZeroShotPipeline(*uni)
    first = pipe.scores(TEXTS[0], LABELS)
    assert pipe.scores(TEXTS[1], tuple(LABELS)) and pipe.scores(TEXTS, LABELS)
    assert calls == [LABELS]
    assert pipe.scores(TEXTS[0], LABELS) == first
    for _ in range(2):  # a bad label set is checked (and refused) every time, never remembered
        with pytest.raises(ValueError, match="duplicate labels"):
            pipe.scores(TEXTS[0], ["a", "a"])
    assert len(calls) == 3
    plan = pipe.plan(TEXTS[0], LABELS)[0][0]["labels"]
    plan.append("mutated")  # what a caller gets is its own list, not the remembered label set
    assert pipe.plan(TEXTS[0], LABELS)[0][0]["labels"] == LABELS


def test_single_row_scores_are_the_models_activations(uni):
    """A text of one model row reads its logits straight from the batch (no gather, no aggregation): its scores
    are the activations of the model's logits on the processor's inputs, in every decision mode."""
    model, processor = uni
    for aggregation in (None, "mean", "max", "logit-mean"):
        pipe = ZeroShotPipeline(model, processor, batch_size=1, aggregation=aggregation)
        for multi in (True, False):
            scores = pipe.scores(TEXTS, LABELS, multi_label=multi)
            for text, row in zip(TEXTS, scores, strict=True):
                logits = model_logits(model, processor, text, LABELS)
                probs = torch.sigmoid(logits) if multi else torch.softmax(logits, -1)
                assert list(row.values()) == pytest.approx(probs.tolist(), abs=1e-7, rel=0)
    ranked = pipe(TEXTS[0], LABELS, threshold=0.0)
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    assert {r["label"] for r in ranked} == set(LABELS)


# ----------------------------------------------------------------------------- label-block ids, any tokenizer
CORPUS = [
    "the movie was good and the plot was bad but i love the music",
    "café résumé naïve — emoji 😀 tabs\tand newlines\nhere, punctuation! (brackets) 42 3.14",
    "positive negative neutral sports world business science question joy spam",
] * 4
TRICKY_TEXTS = [
    "the movie was good",
    "  leading and trailing spaces  ",
    "ends with punctuation!",
    "ends with a newline\n",
    "café 😀 résumé",
    "x",
    "   ",  # tokenises to nothing in some tokenizers: never used to learn a split
    "good,",
]
SUFFIXES = [
    "<<LABEL>>positive<<LABEL>>negative<<SEP>>",
    "<<LABEL>> spaced label <<LABEL>>café<<SEP>>classify this review",
    "<<LABEL>>a<<SEP>><<EXAMPLE>>an example \nLabels:\n a<<SEP>>",
    "<<EXAMPLE>>only examples \nLabels:\n b<<SEP>>",
]


def _trained(kind: str) -> PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    if kind == "metaspace-first" or kind == "metaspace-always":
        tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=kind.split("-")[1])
        tokenizer.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=specials)
    else:  # byte-level BPE, GPT/ModernBERT style
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
    tokenizer.train_from_iterator(CORPUS, trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    template = "$A [SEP]" if kind == "bytelevel-eos" else "[CLS] $A [SEP]"  # eos only, like T5
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )


def make_tokenizer(kind: str):
    tokenizer = tiny_tokenizer() if kind == "wordpiece" else _trained(kind)
    add_special_tokens(tokenizer)
    return tokenizer


def tokens_of(tokenizer):
    def tokens(strings: list[str], special: bool = True, offsets: bool = False) -> dict:
        return tokenizer(
            strings, add_special_tokens=special, truncation=False, return_offsets_mapping=offsets, verbose=False
        )

    return tokens


@pytest.mark.parametrize("kind", ["wordpiece", "metaspace-first", "metaspace-always", "bytelevel", "bytelevel-eos"])
def test_composed_ids_equal_whole_string_ids(kind: str):
    """text ids + remembered label-block ids == the whole string's ids, for every tokenizer family's boundary
    rules (spaces, punctuation, unicode, the prefix space of SentencePiece-style tokenizers, eos-only templates)."""
    tokenizer = make_tokenizer(kind)
    sequences = SequenceIds(tokenizer, tokens_of(tokenizer))
    for round_ in range(3):
        for suffix in SUFFIXES:
            segments = [Segments("", text, suffix) for text in TRICKY_TEXTS]
            assert sequences(segments) == tokenizer([s.string for s in segments])["input_ids"], (round_, suffix)
    learnt = {suffix for suffix, entry in sequences.cache.items() if isinstance(entry, tuple)}
    assert learnt == set(SUFFIXES)


def test_prefixed_or_unmarked_strings_are_always_tokenised_whole():
    """prompt_first puts the label block before the text (the text may merge with a prompt): never composed; nor
    is a suffix that does not start with a GLiClass marker."""
    tokenizer = make_tokenizer("metaspace-first")
    spy = SpyTokenizer(tokenizer)
    sequences = SequenceIds(tokenizer, tokens_of(spy))
    segments = [Segments("<<LABEL>>a<<SEP>>prompt ", "text", ""), Segments("", "text", " plain suffix<<SEP>>")]
    for _ in range(3):
        spy.strings.clear()
        assert sequences(segments) == tokenizer([s.string for s in segments])["input_ids"]
        assert spy.strings == [s.string for s in segments]
    assert not sequences.cache


def test_markers_that_strip_their_neighbours_are_not_composed():
    """A marker added with lstrip=True swallows the text's trailing spaces: it is never split at."""
    tokenizer = _trained("metaspace-first")
    tokenizer.add_tokens([AddedToken(token, lstrip=True, normalized=False) for token in SPECIAL_TOKENS])
    sequences = SequenceIds(tokenizer, tokens_of(tokenizer))
    assert sequences.markers == ()
    segments = [Segments("", text, SUFFIXES[0]) for text in TRICKY_TEXTS]
    for _ in range(3):
        assert sequences(segments) == tokenizer([s.string for s in segments])["input_ids"]
    assert not sequences.cache


def test_pad_ids_pads_ragged_rows():
    batch = pad_ids([[5, 6, 7], [8], []], pad=0)
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]


@pytest.mark.parametrize("arch", ["uni-encoder", "bi-encoder", "bi-encoder-fused"])
def test_direct_rows_batch_like_the_processor(arch: str):
    """Rows that fit are padded by the pipeline itself: the same tensors, dtypes included, as collate(encode_batch)."""
    model, processor = tiny_model("bert", max_length=64, architecture_type=arch)
    pipe = ZeroShotPipeline(model, processor, batch_size=4)
    texts = ["the movie was good", "bad", "i love the music and the food"]
    labels = [["positive", "negative"], ["a b", "c", "d", "e"], ["x"]]
    requests = pipe._requests(texts, labels, None, None, None, None)[0]
    units = pipe._plan(requests)
    got = pipe._batch(units, requests)
    with_ids = not pipe.use_label_cache
    items = processor.encode_batch([u.text for u in units], [u.labels for u in units], label_ids=with_ids)
    expected = processor.collate(items, label_ids=with_ids)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
