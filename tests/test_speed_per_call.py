"""Per-call work the pipeline skips: token ids straight from the Rust tokenizer, and a compiled model in one graph.

Both are speed-ups only: the ids and logits must stay exactly what the slow path gives.
"""

from __future__ import annotations

import pytest
import torch
from conftest import needs_cpp_compiler, tiny_model

from gliclass.pipeline import ZeroShotPipeline
from gliclass.planning import FastIds

pytestmark = pytest.mark.usefixtures("single_thread")

STRINGS = [
    "the movie was good",
    "the movie was good<<LABEL>>plot<<LABEL>>music<<SEP>>",
    "<<LABEL>>bad<<SEP>> i love the music",
    "  spaces   and UPPER case  ",
    "x",
]


@pytest.fixture(scope="module")
def uni():
    return tiny_model("bert", max_length=48)


def test_fast_ids_equal_the_tokenizers_own_call(uni):
    _, processor = uni
    tokenizer = processor.tokenizer
    fast = FastIds.of(tokenizer)
    assert fast is not None  # the stock fast tokenizer takes the direct path
    for special in (True, False):
        expected = tokenizer(STRINGS, add_special_tokens=special, truncation=False, verbose=False)["input_ids"]
        assert fast(STRINGS, special) == expected


def test_fast_ids_undo_a_truncation_left_on_the_backend(uni):
    """A truncating call on the same tokenizer (label ids are cut at label_max_length) leaves truncation set on the
    Rust backend; the wrapper's untruncated call resets it, and so must the direct path."""
    _, processor = uni
    tokenizer = processor.tokenizer
    long = " ".join(["the movie was good"] * 10)
    tokenizer([long], truncation=True, max_length=5, padding="max_length")
    assert tokenizer.backend_tokenizer.truncation is not None
    ids = FastIds.of(tokenizer)([long], True)[0]
    assert len(ids) > 5
    assert ids == tokenizer([long], add_special_tokens=True, truncation=False)["input_ids"][0]


def test_pipeline_tokenises_without_the_wrapper_and_gives_the_same_logits(uni, monkeypatch):
    model, processor = uni
    texts = ["the movie was good", "i love the music and the plot was bad"]
    labels = ["good", "bad", "music"]
    reference = ZeroShotPipeline(model, processor)
    reference.planner._fast_ids = None  # the tokenizer's own call throughout
    expected = [reference.logits(texts, labels)[i]["logits"] for i in range(2)]
    pipe = ZeroShotPipeline(model, processor)
    pipe.logits(texts, labels)  # first calls may measure offsets (which need the wrapper)

    def no_wrapper(*args, **kwargs):
        raise AssertionError("the tokenizer wrapper was called for ids alone")

    monkeypatch.setattr(type(processor.tokenizer), "__call__", no_wrapper)
    got = [pipe.logits(texts, labels)[i]["logits"] for i in range(2)]
    assert got == expected


def test_wrapped_or_custom_tokenizers_keep_their_own_call(uni):
    _, processor = uni

    class Wrapper:
        def __init__(self, tokenizer):
            self.tokenizer = tokenizer

        def __getattr__(self, name):
            return getattr(self.tokenizer, name)

    assert FastIds.of(Wrapper(processor.tokenizer)) is None

    class Custom(type(processor.tokenizer)):
        def __call__(self, *args, **kwargs):
            return super().__call__(*args, **kwargs)

    custom = processor.tokenizer.__class__.__new__(Custom)
    custom.__dict__.update(processor.tokenizer.__dict__)
    assert FastIds.of(custom) is None


@pytest.mark.slow
@needs_cpp_compiler
def test_compiled_model_is_one_graph_and_still_rejects_a_bad_labels_mask(uni):
    """The labels_mask slot check is an in-graph assertion under torch.compile, not a graph break (it split the
    compiled forward into 3 graphs), and a mask that marks the wrong slots still raises."""
    model, processor = uni
    batch = processor(["the movie was good"], [["good", "bad"]])
    torch._dynamo.reset()
    with torch.inference_mode():
        explained = torch._dynamo.explain(model)(**batch)
        assert explained.graph_count == 1 and explained.graph_break_count == 0
        compiled = torch.compile(model, dynamic=True, fullgraph=True)
        assert torch.allclose(compiled(**batch).logits, model(**batch).logits, atol=1e-5)
        bad = {**batch, "labels_mask": torch.tensor([[False, True]])}
        with pytest.raises(RuntimeError, match="labels_mask must mark exactly the first n slots"):
            compiled(**bad)
    torch._dynamo.reset()


@needs_cpp_compiler
def test_compiled_runner_turns_freezing_on_for_the_call_only(uni, monkeypatch):
    """Inductor freezing is on while the compiled model runs (it is read when a graph is lowered) and off again
    after, also when the call raises."""
    from torch._inductor import config as inductor_config

    from gliclass.pipeline import _Compiled

    model, processor = uni
    seen = []

    def fake_compile(module, dynamic):
        def run(**batch):
            seen.append(inductor_config.freezing)
            if "boom" in batch:
                raise RuntimeError("boom")
            return module(**batch)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    runner = _Compiled(model, torch.device("cpu"))
    batch = processor(["the movie was good"], [["good", "bad"]])
    with inductor_config.patch(freezing=False):  # whatever an earlier test left, off around this one
        with torch.inference_mode():
            assert torch.equal(runner(**batch).logits, model(**batch).logits)
        with pytest.raises(RuntimeError, match="boom"):
            runner(boom=True)
        assert seen == [True, True] and not inductor_config.freezing
