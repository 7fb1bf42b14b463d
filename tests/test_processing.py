"""GLiClassProcessor: exact input strings, collation, the length budget (text cut, labels never dropped), errors."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_BACKBONES, tiny_model, tiny_tokenizer
from transformers import AutoConfig

from gliclass import GLiClassProcessor, LabelBudgetError, build_model
from gliclass.processing import backbone_position_limit, format_examples

L, S, E = "<<LABEL>>", "<<SEP>>", "<<EXAMPLE>>"
TEXT = "good movie"
LABELS = ["positive", "very good food"]
PROMPT = "what is the sentiment"
EXAMPLES = [{"text": "great film", "labels": ["positive"]}, {"text": "bad food", "true_labels": ["negative", "food"]}]
SHOTS = f"{E}great film \nLabels:\n positive{E}bad food \nLabels:\n negative, food{S}"
WORDS = ["the", "movie", "was", "good", "but", "the", "food", "was", "bad", "and", "the", "service", "was", "terrible"]
LONG_TEXT = " ".join(WORDS * 20)  # 260 words, one token each


# tiny tensors: one intra-op thread (conftest.single_thread)
pytestmark = pytest.mark.usefixtures("single_thread")


def make(arch="uni-encoder", backbone="bert", max_length=None, **config) -> GLiClassProcessor:
    _, processor = tiny_model(backbone, architecture_type=arch, **config)
    if max_length is None:
        return processor
    return GLiClassProcessor(
        processor.tokenizer, processor.config, max_length=max_length, label_tokenizer=processor.label_tokenizer
    )


def tokens(processor, ids) -> list[str]:
    return processor.tokenizer.convert_ids_to_tokens(ids)


def bare_ids(processor, string: str) -> list[int]:
    return processor.tokenizer(string, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------------------ exact strings
@pytest.mark.parametrize(
    "arch,prompt_first,prompt,examples,expected",
    [
        ("uni-encoder", False, None, None, f"{TEXT}{L}positive{L}very good food{S}"),
        ("uni-encoder", False, PROMPT, None, f"{TEXT}{L}positive{L}very good food{S}{PROMPT}"),
        ("uni-encoder", True, PROMPT, None, f"{L}positive{L}very good food{S}{PROMPT}{TEXT}"),
        ("uni-encoder", False, PROMPT, EXAMPLES, f"{TEXT}{L}positive{L}very good food{S}{PROMPT}{SHOTS}"),
        ("uni-encoder", True, None, EXAMPLES, f"{L}positive{L}very good food{S}{TEXT}{SHOTS}"),
        ("bi-encoder-fused", False, None, None, f"{TEXT}{L}{L}{S}"),
        ("bi-encoder-fused", False, PROMPT, EXAMPLES, f"{TEXT}{PROMPT} {L}{L}{S}{SHOTS}"),
        ("bi-encoder-fused", True, PROMPT, None, f"{PROMPT} {L}{L}{S}{TEXT}"),
        ("bi-encoder", False, None, None, TEXT),
        ("bi-encoder", False, PROMPT, None, f"{PROMPT} {TEXT}"),
        ("encoder-decoder", False, PROMPT, None, TEXT),
        ("encoder-decoder", False, None, EXAMPLES, f"{TEXT}{SHOTS}"),
    ],
)
def test_input_string(arch, prompt_first, prompt, examples, expected):
    processor = make(arch, prompt_first=prompt_first)
    assert processor.segments(TEXT, LABELS, prompt, examples).string == expected
    # what fits is tokenised exactly as the official pipeline does: the whole string, with CLS/SEP around it
    enc = processor.encode(TEXT, LABELS, prompt=prompt, examples=examples)
    assert enc["input_ids"] == processor.tokenizer(expected)["input_ids"]
    assert enc["num_labels"] == len(LABELS)


def test_uni_encoder_tokens():
    processor = make()
    enc = processor.encode(TEXT, LABELS, prompt=PROMPT)
    assert tokens(processor, enc["input_ids"]) == [
        "[CLS]", "good", "movie", L, "positive", L, "very", "good", "food", S, "what", "is", "the", "sentiment", "[SEP]"
    ]  # fmt: skip
    assert enc["input_ids"][3] == processor.config.class_token_index
    assert enc["input_ids"][9] == processor.config.text_token_index


def test_few_shot_examples_format():
    assert format_examples(EXAMPLES) == SHOTS
    assert format_examples(None) == "" and format_examples([]) == ""
    processor = make()
    enc = processor.encode(TEXT, LABELS, examples=EXAMPLES)
    assert enc["input_ids"].count(processor.config.example_token_index) == 2
    assert enc["input_ids"].count(processor.config.text_token_index) == 2  # after the labels, after the examples


@pytest.mark.parametrize("arch", ["bi-encoder", "bi-encoder-fused"])
def test_bi_encoder_label_inputs(arch):
    processor = make(arch)
    enc = processor.encode(TEXT, LABELS, prompt=PROMPT)
    assert [tokens(processor, ids) for ids in enc["class_input_ids"]] == [
        ["[CLS]", "positive", "[SEP]"],
        ["[CLS]", "very", "good", "food", "[SEP]"],
    ]


def test_encoder_decoder_label_prompt():
    processor = make("encoder-decoder")
    enc = processor.encode(TEXT, LABELS, prompt=PROMPT)
    assert enc["class_input_ids"] == processor.tokenizer(f"{L}positive{L}very good food{S}{PROMPT}")["input_ids"]
    assert enc["input_ids"] == processor.tokenizer(TEXT)["input_ids"]


# ------------------------------------------------------------------------------------------ collation
def test_collate_pads_text_and_label_slots():
    processor = make()
    batch = processor([TEXT, LONG_TEXT[:60]], [["positive", "negative", "neutral"], ["food"]])
    lengths = [len(processor.encode(TEXT, ["positive", "negative", "neutral"])["input_ids"])]
    lengths.append(len(processor.encode(LONG_TEXT[:60], ["food"])["input_ids"]))
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["input_ids"][batch["attention_mask"] == 0].eq(processor.tokenizer.pad_token_id).all()
    assert batch["labels_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert batch["labels_mask"].dtype == torch.bool


def test_collate_bi_encoder_label_tensors():
    processor = make("bi-encoder")
    batch = processor([TEXT, TEXT], [["positive", "very good food"], ["food"]])
    assert batch["class_input_ids"].shape == (2, 2, 5)
    assert batch["class_attention_mask"].sum(-1).tolist() == [[3, 5], [3, 0]]
    assert batch["class_input_ids"][1, 1].eq(processor.label_tokenizer.pad_token_id).all()
    assert batch["labels_mask"].tolist() == [[True, True], [True, False]]


def test_collate_encoder_decoder_label_prompts():
    processor = make("encoder-decoder")
    batch = processor([TEXT, TEXT], [["positive", "very good food"], ["food"]])
    expected = [len(processor.encode(TEXT, labels)["class_input_ids"]) for labels in (LABELS, ["food"])]
    assert batch["class_attention_mask"].sum(-1).tolist() == expected
    assert batch["class_input_ids"].shape == (2, max(expected))


def test_empty_batch_is_rejected():
    processor = make()
    with pytest.raises(ValueError, match="at least one example"):
        processor([], [])
    with pytest.raises(ValueError, match="at least one example"):
        processor.collate([])


# ------------------------------------------------------------------------------------------ budget
CUT_CASES = [
    ("uni-encoder", False, None, None),
    ("uni-encoder", True, PROMPT, None),
    ("uni-encoder", False, PROMPT, EXAMPLES),
    ("uni-encoder", True, None, EXAMPLES),
    ("bi-encoder-fused", False, PROMPT, EXAMPLES),
    ("bi-encoder-fused", True, None, None),
    ("bi-encoder", False, PROMPT, None),
    ("encoder-decoder", False, PROMPT, EXAMPLES),
]


@pytest.mark.parametrize("arch,prompt_first,prompt,examples", CUT_CASES)
def test_over_budget_cuts_only_the_text(arch, prompt_first, prompt, examples):
    budget = 48
    labels = ["positive", "negative", "very good food", "the service"]
    processor = make(arch, max_length=budget, prompt_first=prompt_first)
    assert processor.budget == budget
    enc = processor.encode(LONG_TEXT, labels, prompt=prompt, examples=examples)
    ids = enc["input_ids"]
    seg = processor.segments(LONG_TEXT, labels, prompt, examples)
    words = LONG_TEXT.split()
    assert len(processor.tokenizer(seg.string)["input_ids"]) > budget  # really over

    def kept(k: int) -> list[int]:  # the string with only the first k words of the text
        return processor.tokenizer(seg.prefix + " ".join(words[:k]) + seg.suffix)["input_ids"]

    # exactly the first k words are kept, everything else whole, and the budget is filled (k + 1 would not fit)
    k = next(k for k in range(len(words)) if kept(k) == ids)
    assert k > 0 and len(ids) <= budget < len(kept(k + 1))
    if arch in ("uni-encoder", "bi-encoder-fused"):
        assert ids.count(processor.config.class_token_index) == len(labels)
    if examples and arch != "bi-encoder":
        assert ids.count(processor.config.example_token_index) == len(examples)
    # label inputs of the other architectures are untouched by the text cut
    if "class_input_ids" in enc:
        assert enc["class_input_ids"] == processor.encode(TEXT, labels, prompt=prompt)["class_input_ids"]


def test_cut_text_is_a_prefix_even_inside_words():
    """Out-of-vocabulary words split into word pieces: the kept text is still a prefix of the original."""
    processor = make(max_length=40)
    text = " ".join(["classification of sentiment"] * 30)
    ids = processor.encode(text, LABELS)["input_ids"]
    assert len(ids) <= 40 and ids.count(processor.config.class_token_index) == len(LABELS)
    first_label = ids.index(processor.config.class_token_index)
    kept = processor.tokenizer.decode(ids[1:first_label])
    full = processor.tokenizer.decode(bare_ids(processor, text))
    assert kept and full.startswith(kept) and len(kept) < len(full)


@pytest.mark.parametrize("arch", ["uni-encoder", "bi-encoder-fused", "encoder-decoder"])
def test_labels_alone_over_budget_raise(arch):
    processor = make(arch, max_length=32)
    labels = [f"the {word} food" for word in WORDS[:3] + ["great", "sad", "happy", "angry", "fear", "joy", "love"]]
    if arch == "bi-encoder-fused":  # one token per label there
        labels = [f"label {i}" for i in range(40)]
    with pytest.raises(LabelBudgetError, match=r"needs? \d+ tokens.*budget is 32") as info:
        processor.encode("good", labels)
    assert isinstance(info.value, ValueError)


def test_label_budget_error_names_the_counts():
    processor = make(max_length=20)
    with pytest.raises(LabelBudgetError) as info:
        processor.encode(TEXT, [f"very good {w}" for w in ("food", "movie", "music", "game", "team")])
    message = str(info.value)
    assert "labels, prompt and examples need 23 tokens but the budget is 20" in message
    assert "max_length=20" in message


def label_room(extra: int, labels=LABELS, prompt=None, min_text_tokens: int = 8, **config) -> GLiClassProcessor:
    """A processor whose budget leaves exactly `extra` tokens beside the labels (and prompt) of `labels`."""
    base = make(**config)
    seg = base.segments(LONG_TEXT, labels, prompt)
    fixed = len(base.tokenizer(seg.prefix + seg.suffix)["input_ids"])
    return GLiClassProcessor(base.tokenizer, base.config, max_length=fixed + extra, min_text_tokens=min_text_tokens)


@pytest.mark.parametrize("prompt_first", [False, True])
def test_labels_exactly_filling_the_budget_raise_instead_of_dropping_the_text(prompt_first):
    processor = label_room(0, prompt=PROMPT, prompt_first=prompt_first)
    with pytest.raises(LabelBudgetError, match=r"leaving 0 for the text, which must keep at least 8 of its \d+"):
        processor.encode(LONG_TEXT, LABELS, prompt=PROMPT)


def test_text_keeps_at_least_min_text_tokens_or_the_labels_raise():
    words = LONG_TEXT.split()  # one token each
    with pytest.raises(LabelBudgetError, match=r"budget is \d+.*leaving 7 for the text.*min_text_tokens=8"):
        label_room(7).encode(LONG_TEXT, LABELS)
    for extra, minimum in [(8, 8), (20, 8), (3, 2), (1, 1)]:
        processor = label_room(extra, min_text_tokens=minimum)
        ids = processor.encode(LONG_TEXT, LABELS)["input_ids"]
        assert len(ids) == processor.budget and ids.count(processor.config.class_token_index) == len(LABELS)
        assert ids[1 : extra + 1] == bare_ids(processor, " ".join(words[:extra]))  # the first `extra` words
    # a text shorter than min_text_tokens must be kept whole: 5 tokens beside room for 4 is an error
    short = " ".join(words[:5])
    with pytest.raises(LabelBudgetError, match=r"keep at least 5 of its 5 tokens"):
        label_room(4).encode(short, LABELS)
    assert len(label_room(5).encode(short, LABELS)["input_ids"]) == label_room(5).budget


def test_boundary_overshoot_beyond_the_room_raises_not_index_error(monkeypatch):
    """A tokenizer whose cut strings merge into more tokens than the room left: once fewer than min_text_tokens
    would remain, the error is a LabelBudgetError (it used to index the text from its end, then IndexError)."""
    processor = label_room(10, min_text_tokens=2)
    seg = processor.segments(LONG_TEXT, LABELS)
    tokenize = processor._tokenize

    def merging(strings, offsets=False):
        enc = tokenize(strings, offsets)
        if not offsets and strings[0] not in (seg.string, seg.prefix + seg.suffix):  # a cut text: 12 extra tokens
            enc["input_ids"] = [ids + [ids[-1]] * 12 for ids in enc["input_ids"]]
        return enc

    monkeypatch.setattr(processor, "_tokenize", merging)
    with pytest.raises(LabelBudgetError, match=r"must keep at least 2 of its"):
        processor.encode(LONG_TEXT, LABELS)


def test_min_text_tokens_is_checked_saved_and_defaults_for_old_files(tmp_path):
    processor = make()
    assert processor.min_text_tokens == 8
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="min_text_tokens must be an int >= 1"):
            GLiClassProcessor(processor.tokenizer, processor.config, min_text_tokens=bad)
    GLiClassProcessor(processor.tokenizer, processor.config, max_length=40, min_text_tokens=3).save_pretrained(tmp_path)
    loaded = GLiClassProcessor.from_pretrained(tmp_path, config=processor.config)
    assert (loaded.max_length, loaded.min_text_tokens) == (40, 3)
    (tmp_path / "gliclass_processor.json").write_text('{"max_length": 40, "label_max_length": 64}')  # an older file
    assert GLiClassProcessor.from_pretrained(tmp_path, config=processor.config).min_text_tokens == 8


def test_budget_is_min_of_max_length_and_backbone_positions():
    assert make("uni-encoder", "bert").budget == 128  # BERT: 128 absolute positions < max_length 1024
    assert make("uni-encoder", "bert", max_length=64).budget == 64
    assert make("uni-encoder", "modernbert").budget == 128
    assert make("uni-encoder", "deberta").budget == 1024  # DeBERTa-v3 (position_biased_input=False): unlimited
    assert make("encoder-decoder").budget == 1024  # T5: relative positions
    spec = dict(TINY_BACKBONES["deberta"], position_biased_input=True)
    assert backbone_position_limit(AutoConfig.for_model(spec.pop("model_type"), **spec)) == 128


def test_minilm_has_512_positions():
    from gliclass import resolve_backbone

    assert backbone_position_limit(AutoConfig.from_pretrained(resolve_backbone("minilm"))) == 512


def test_deberta_v3_reads_beyond_its_position_table():
    model, processor = tiny_model("deberta")
    enc = processor.encode(LONG_TEXT, LABELS)
    assert len(enc["input_ids"]) > model.config.encoder_config.max_position_embeddings  # not cut at 128
    with torch.no_grad():
        out = model(**processor.collate([enc]))
    assert torch.isfinite(out.logits).all() and out.logits.shape == (1, len(LABELS))


def test_128_labels_on_512_positions_fit_or_raise_never_drop():
    """The official pipeline (max_length 1024, truncation=True) cuts labels off a MiniLM-sized (512) backbone."""
    tokenizer = tiny_tokenizer()
    model, processor = build_model(
        {**TINY_BACKBONES["bert"], "max_position_embeddings": 512}, tokenizer=tokenizer, max_length=1024
    )
    model.eval()
    assert processor.budget == 512
    words = [w for w in tokenizer.get_vocab() if w.isalpha() and len(w) > 1 and not w.startswith("##")]
    labels = words[:128]
    assert len(set(labels)) == 128
    text = " ".join(WORDS * 30)  # 390 tokens: with the labels (258) far over 512
    naive = processor.tokenizer(processor.segments(text, labels).string, truncation=True, max_length=512)
    assert naive["input_ids"].count(processor.config.class_token_index) < 128  # the official failure mode

    batch = processor([text], [labels])
    ids = batch["input_ids"][0].tolist()
    assert len(ids) == 512
    assert ids.count(processor.config.class_token_index) == 128
    assert ids[1:10] == bare_ids(processor, text)[:9]  # the text is what got cut
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape == (1, 128) and out.labels_mask.all()
    # every label slot reads a real <<LABEL>> state: no all-zero (missing) label vectors
    states = out.token_embeddings[0, torch.tensor(ids) == processor.config.class_token_index]
    torch.testing.assert_close(out.class_embeddings[0], model.model.classes_projector(states))

    long_labels = [f"{word} very good food" for word in labels]  # 5 tokens each: 640 > 512
    with pytest.raises(LabelBudgetError, match=r"need \d+ tokens but the budget is 512"):
        processor([text], [long_labels])


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "texts,labels,error,message",
    [
        ([TEXT], [[]], ValueError, "the label list is empty"),
        ([""], [LABELS], ValueError, "text 0 is empty"),
        ([TEXT, TEXT], [LABELS, ["food", "sad", "food"]], ValueError, r"duplicate labels: \['food'\]"),
        ([123], [LABELS], TypeError, "text 0 must be a str, got int"),
        ([None], [LABELS], TypeError, "text 0 must be a str, got NoneType"),
        ([TEXT], [None], TypeError, "labels must be a list of str, got NoneType"),
        ([TEXT], ["positive"], TypeError, "labels must be a list of str, got str"),
        ([TEXT], [["positive", 3]], TypeError, "every label must be a str, got int"),
        ([TEXT], [["positive", None]], TypeError, "every label must be a str, got NoneType"),
        ([TEXT], [["positive", "  "]], ValueError, "a label is empty or whitespace"),
        ([TEXT], [["positive", f"x{L}"]], ValueError, "reserved token"),
        ([TEXT, TEXT], [LABELS], ValueError, "got 2 texts but 1 label lists"),
    ],
)
def test_bad_input_gets_a_clear_error(texts, labels, error, message):
    with pytest.raises(error, match=message):
        make()(texts, labels)


def test_bad_prompt_and_examples():
    processor = make()
    with pytest.raises(TypeError, match="prompt 0 must be a str or None, got int"):
        processor([TEXT], [LABELS], prompts=[5])
    with pytest.raises(ValueError, match="few-shot example must be a dict with 'text'"):
        processor([TEXT], [LABELS], examples=[[{"labels": ["positive"]}]])
    with pytest.raises(ValueError, match="got 1 texts, 2 prompts"):
        processor([TEXT], [LABELS], prompts=[None, None])


def test_tokenizer_without_the_special_tokens_is_rejected():
    processor = make()
    with pytest.raises(ValueError, match=r"tokenizer ids of .*<<LABEL>>.* but the config expects"):
        GLiClassProcessor(tiny_tokenizer(), processor.config)


def test_bi_encoder_needs_a_label_tokenizer():
    processor = make("bi-encoder")
    with pytest.raises(ValueError, match="needs a label_tokenizer"):
        GLiClassProcessor(processor.tokenizer, processor.config)


def test_label_template_wraps_the_label_towers_input_and_is_saved(tmp_path):
    model, processor = tiny_model(architecture_type="bi-encoder", pooling_strategy="avg")
    templated = GLiClassProcessor(
        processor.tokenizer, processor.config, label_tokenizer=processor.label_tokenizer, label_template="a {} text"
    )
    assert templated.label_ids(["sports"]) == processor.label_ids(["a sports text"])
    batch = templated(["the match ended"], [["sports", "news"]])
    expected = processor(["the match ended"], [["a sports text", "a news text"]])
    torch.testing.assert_close(batch["class_input_ids"], expected["class_input_ids"])
    torch.testing.assert_close(batch["input_ids"], processor(["the match ended"], [["sports", "news"]])["input_ids"])
    templated.save_pretrained(tmp_path)
    assert GLiClassProcessor.from_pretrained(tmp_path, config=processor.config).label_template == "a {} text"
    processor.save_pretrained(tmp_path / "bare")  # no template: the file has no key for it
    assert "label_template" not in (tmp_path / "bare" / "gliclass_processor.json").read_text()
    for bad in ("no slot", "{} and {}", 3):
        with pytest.raises(ValueError, match="exactly one"):
            GLiClassProcessor(processor.tokenizer, processor.config, label_tokenizer=processor.label_tokenizer,
                              label_template=bad)  # fmt: skip
    uni = make()
    with pytest.raises(ValueError, match="inside the text sequence"):
        GLiClassProcessor(uni.tokenizer, uni.config, label_template="a {} text")
