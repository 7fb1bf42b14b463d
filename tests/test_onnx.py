"""ONNX export: onnxruntime gives the torch scores (atol 1e-4) through the same pipeline; int8 graphs load and run."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from gliclass.onnx import OnnxModel, export_onnx  # noqa: E402
from gliclass.pipeline import ZeroShotPipeline  # noqa: E402

LONG = " ".join(["the service was terrible and the food was bad but the music was great"] * 6)
TEXTS = ["good movie", LONG, "😀 what a day", "bad"]
LABELS = [
    ["positive", "negative"],
    ["food", "service", "music", "price", "quality"],
    ["happy", "sad", "angry"],
    [f"{a} {b}" for a in ("good", "bad", "new") for b in ("movie", "food", "phone", "team", "book")],
]


# tiny tensors: one intra-op thread (conftest.single_thread)
pytestmark = pytest.mark.usefixtures("single_thread")


def exported(tmp_path_factory, arch: str, quantize: str | None = None):
    model, processor = tiny_model("bert", architecture_type=arch, max_length=48)
    out = tmp_path_factory.mktemp(arch)
    meta = export_onnx(model, processor, out, quantize=quantize)
    return model, processor, out, meta


@pytest.fixture(scope="module")
def uni(tmp_path_factory):
    return exported(tmp_path_factory, "uni-encoder", quantize="int8")


@pytest.fixture(scope="module")
def bi(tmp_path_factory):
    return exported(tmp_path_factory, "bi-encoder")


def assert_same_logits(torch_pipe: ZeroShotPipeline, onnx_pipe: ZeroShotPipeline) -> None:
    """Ragged label lists, a chunked text and grouped labels in one call, on both backends."""
    for a, b in zip(torch_pipe.logits(TEXTS, LABELS), onnx_pipe.logits(TEXTS, LABELS), strict=True):
        assert list(a["logits"]) == list(b["logits"])
        torch.testing.assert_close(
            torch.tensor(list(b["logits"].values())), torch.tensor(list(a["logits"].values())), atol=1e-4, rtol=0
        )
        torch.testing.assert_close(b["text_embedding"], a["text_embedding"], atol=1e-4, rtol=0)
    for a, b in zip(torch_pipe.scores(TEXTS, LABELS), onnx_pipe.scores(TEXTS, LABELS), strict=True):
        assert a == pytest.approx(b, abs=1e-4)


def test_uni_encoder_parity(uni):
    model, processor, out, meta = uni
    assert meta["max_abs_logit_diff"] < 1e-4
    onnx_pipe = ZeroShotPipeline.from_pretrained(out)  # no torch weights in the export: the ONNX backend
    assert isinstance(onnx_pipe.model, OnnxModel)
    assert_same_logits(ZeroShotPipeline(model, processor), onnx_pipe)


@pytest.mark.slow
def test_bi_encoder_parity_with_cached_label_vectors(bi):
    model, processor, out, meta = bi
    assert set(meta["files"]) == {"text", "labels"} and meta["max_abs_logit_diff"] < 1e-4
    onnx_pipe = ZeroShotPipeline.from_pretrained(out)
    assert onnx_pipe.use_label_cache
    assert_same_logits(ZeroShotPipeline(model, processor), onnx_pipe)
    no_cache = ZeroShotPipeline.from_pretrained(out, label_cache=False)  # labels through the label graph per row
    assert_same_logits(ZeroShotPipeline(model, processor), no_cache)


@pytest.mark.slow
def test_bi_encoder_label_prototypes_match_torch(bi):
    """Few-shot prototypes come from the text graph's embeddings and are served from the ONNX label cache."""
    model, processor, out, _ = bi
    shots = {"positive": ["good movie", "a great day"], "negative": ["bad", LONG]}
    torch_pipe, onnx_pipe = ZeroShotPipeline(model, processor), ZeroShotPipeline.from_pretrained(out)
    expected, got = torch_pipe.label_prototypes(shots, 0.7), onnx_pipe.label_prototypes(shots, 0.7)
    assert list(got) == ["positive", "negative"]
    for label in shots:
        torch.testing.assert_close(got[label], expected[label], atol=1e-4, rtol=0)
    torch_pipe.set_label_vectors(expected)
    onnx_pipe.set_label_vectors(got)
    assert_same_logits(torch_pipe, onnx_pipe)
    plain = ZeroShotPipeline.from_pretrained(out).logits(["a great day"], ["positive", "negative"])[0]["logits"]
    moved = onnx_pipe.logits(["a great day"], ["positive", "negative"])[0]["logits"]
    assert moved["positive"] != pytest.approx(plain["positive"], abs=1e-4)  # the given vectors are the ones served


def test_dynamic_axes_accept_any_batch_length_and_label_count(uni):
    model, processor, out, _ = uni
    onnx_model = OnnxModel.from_pretrained(out)
    for batch_size, num_labels, words in [(1, 1, 1), (5, 7, 20), (3, 2, 40)]:
        texts = [" ".join(["good"] * (words + i)) for i in range(batch_size)]
        batch = processor(texts, [[f"label {j}" for j in range(num_labels)]] * batch_size)
        with torch.inference_mode():
            expected = model(**batch).logits
        torch.testing.assert_close(onnx_model(**batch).logits, expected, atol=1e-4, rtol=0)


def test_int8_graphs_load_and_score(uni):
    model, processor, out, meta = uni
    assert set(meta["int8_files"]) == {"text"}
    assert (out / meta["int8_files"]["text"]).stat().st_size < (out / meta["files"]["text"]).stat().st_size
    int8 = ZeroShotPipeline.from_pretrained(out, quantized=True)
    scores = int8.scores(TEXTS, LABELS)
    assert [list(row) for row in scores] == [list(labels) for labels in LABELS]
    assert all(0.0 <= s <= 1.0 for row in scores for s in row.values())
    written = json.loads((out / "gliclass_onnx.json").read_text())
    assert written["int8_files"] == meta["int8_files"]


def test_missing_export_and_bad_quantize_are_named(tmp_path, uni):
    model, processor, out, _ = uni
    with pytest.raises(FileNotFoundError, match="export-onnx"):
        OnnxModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="quantize='int4'"):
        export_onnx(model, processor, tmp_path, quantize="int4")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["bi-encoder-fused", "encoder-decoder"])
def test_other_architectures_parity(tmp_path_factory, arch):
    model, processor, out, meta = exported(tmp_path_factory, arch)
    assert meta["max_abs_logit_diff"] < 1e-4
    assert_same_logits(ZeroShotPipeline(model, processor), ZeroShotPipeline.from_pretrained(out))
