"""ONNX speed levers (issue 13 item 5): fused kernels in the export, session options, batch slicing, the bench's
targets."""

from __future__ import annotations

import onnx
import pytest
import torch
from conftest import tiny_model

pytest.importorskip("onnxruntime")

from gliclass.onnx import OnnxModel, export_onnx, runtime  # noqa: E402
from gliclass.onnx.bench import render, targets  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")

TEXTS = ["good movie", "the service was terrible " * 8, "what a day", "bad"]
LABELS = [["positive", "negative", "neutral"]] * len(TEXTS)


def op_types(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}


@pytest.fixture(scope="module")
def uni(tmp_path_factory):
    model, processor = tiny_model("bert", architecture_type="uni-encoder", max_length=64)
    out = tmp_path_factory.mktemp("uni")
    return model, processor, out, export_onnx(model, processor, out, quantize="int8")


def test_export_fuses_attention_layernorm_and_gelu(uni):
    model, _, out, meta = uni
    layers = model.config.encoder_config.num_hidden_layers
    assert meta["fusions"]["text"]["Attention"] == layers
    assert meta["fusions"]["text"]["SkipLayerNormalization"] == 2 * layers
    assert {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization", "BiasGelu"} <= op_types(
        out / "model.onnx"
    )
    # int8 quantises the fused attention too, not only the plain MatMuls
    assert "QAttention" in op_types(out / meta["int8_files"]["text"])
    assert meta["max_abs_logit_diff"] < 1e-4


def test_export_leaves_the_model_in_eval_mode_with_its_logits(uni):
    """The TorchScript exporter restores its wrapper's training flag onto the model: a fresh wrapper (training)
    would switch the backbone's dropout on after export."""
    model, processor, _, _ = uni
    assert not any(module.training for module in model.modules())
    batch = processor(TEXTS, LABELS)
    with torch.inference_mode():
        torch.testing.assert_close(model(**batch).logits, model(**batch).logits, atol=0, rtol=0)


def test_unoptimized_export_is_plain_onnx(tmp_path):
    model, processor = tiny_model("bert", architecture_type="uni-encoder", max_length=64)
    meta = export_onnx(model, processor, tmp_path, optimize=False)
    graph = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False).graph
    assert meta["fusions"] == {} and {node.domain for node in graph.node} <= {"", "ai.onnx"}
    assert meta["max_abs_logit_diff"] < 1e-4


def test_sessions_follow_torch_threads_without_arena(uni):
    _, _, out, _ = uni
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        options = OnnxModel.from_pretrained(out).text_session.get_session_options()
    finally:
        torch.set_num_threads(previous)
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert not options.enable_cpu_mem_arena and not options.enable_mem_pattern
    explicit = OnnxModel.from_pretrained(out, threads=1).text_session.get_session_options()
    assert explicit.intra_op_num_threads == 1


def test_big_batch_runs_in_slices_with_the_same_logits(uni, monkeypatch):
    model, processor, out, _ = uni
    onnx_model = OnnxModel.from_pretrained(out)
    batch = processor(TEXTS, LABELS)
    whole = onnx_model(**batch)
    length = batch["input_ids"].shape[1]
    heads = model.config.encoder_config.num_attention_heads
    monkeypatch.setattr(runtime, "ATTENTION_BYTES", 2 * heads * length * length * 4)  # two rows per run
    assert onnx_model.rows_per_run(len(TEXTS), length) == 2
    runs = []
    session_run = onnx_model.text_session.run
    onnx_model.text_session = type("Counting", (), {"run": lambda self, *a: runs.append(a) or session_run(*a)})()
    sliced = onnx_model(**batch)
    assert [feed["input_ids"].shape[0] for _, feed in runs] == [2, 2]
    for name in ("logits", "text_embeddings", "class_embeddings"):
        torch.testing.assert_close(getattr(sliced, name), getattr(whole, name), atol=1e-6, rtol=0)
    with torch.inference_mode():
        torch.testing.assert_close(sliced.logits, model(**batch).logits, atol=1e-4, rtol=0)


def test_bad_exporter_is_named(uni, tmp_path):
    model, processor, _, _ = uni
    with pytest.raises(ValueError, match="exporter='jit'"):
        export_onnx(model, processor, tmp_path, exporter="jit")


def cell(threads: int, tokens: int, ratios: dict[str, float]) -> dict:
    systems = {"ours": {"examples_per_s": 10.0}}
    systems.update({name: {"examples_per_s": 10.0 * ratio} for name, ratio in ratios.items()})
    return {"threads": threads, "text_tokens": tokens, "labels": 8, "systems": systems, "ratios": ratios}


def test_bench_targets_judge_the_worst_cell_and_peak_rss():
    cells = [
        cell(1, 64, {"ours-onnx": 1.6, "ours-onnx-int8": 2.5}),
        cell(2, 256, {"ours-onnx": 1.2, "ours-onnx-int8": 1.7}),
    ]
    memory = {
        "ours": {"peak_mb": 1000.0, "after_load_mb": 400.0, "examples_per_s": 8.0},
        "ours-onnx": {"peak_mb": 1100.0, "after_load_mb": 600.0, "examples_per_s": 6.0},
        "ours-onnx-int8": {"peak_mb": 900.0, "after_load_mb": 500.0, "examples_per_s": 9.0},
    }
    result = targets(cells, memory)
    fp32 = result["batch1_ours-onnx_vs_eager_ge_1.5x"]
    assert not fp32["holds"] and fp32["min_ratio"] == 1.2 and fp32["cells_below"] == 1
    assert fp32["worst_cell"] == {"threads": 2, "text_tokens": 256, "labels": 8}
    assert result["batch1_ours-onnx-int8_vs_eager_ge_1.5x"]["holds"]
    assert not result["batch32_peak_rss_ours-onnx_le_eager"]["holds"]
    assert result["batch32_peak_rss_ours-onnx-int8_le_eager"]["holds"]
    run = {"date": "d", "git_commit": "abc", "torch": "t", "cpu_count": 2, "command": "python -m gliclass.onnx.bench"}
    export = {"opset": 17, "exporter": "torchscript", "fusions": {}, "max_abs_logit_diff": 1e-6}
    text = render(
        {
            "run": run,
            "model": "m",
            "architecture_type": "bi-encoder",
            "export": export,
            "cells": cells,
            "memory": memory,
            "targets": result,
        }
    )
    assert "- MISSED `batch1_ours-onnx_vs_eager_ge_1.5x`" in text and "- HOLDS `batch1_ours-onnx-int8" in text
    assert "| 2 | 256 | 8 | 10.000 | 12.000 | 17.000 | 1.200 | 1.700 |" in text
