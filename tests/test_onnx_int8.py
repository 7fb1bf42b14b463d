"""int8 ONNX export (issue 23, item 7): the settings that keep int8 close to fp32 reach onnxruntime's quantiser,
SmoothQuant leaves the fp32 function unchanged, outlier inputs stay fp32, a bi-encoder's label tower stays fp32,
and the export (and the CLI) report the measured top-1 agreement with fp32."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import tiny_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnxruntime as ort  # noqa: E402
import onnxruntime.quantization as ort_quantization  # noqa: E402

from gliclass import cli  # noqa: E402
from gliclass.onnx import export_onnx  # noqa: E402
from gliclass.onnx import quantize as q  # noqa: E402
from gliclass.onnx.runtime import session_options  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def op_types(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}


@pytest.fixture(scope="module")
def uni_fp32(tmp_path_factory):
    """A tiny uni-encoder exported in fp32 (fused graph: Attention, SkipLayerNormalization, BiasGelu)."""
    model, processor = tiny_model("bert", architecture_type="uni-encoder", max_length=48)
    out = tmp_path_factory.mktemp("uni_fp32")
    meta = export_onnx(model, processor, out, check=False)
    return model, processor, out, meta


@pytest.fixture(scope="module")
def bi_int8(tmp_path_factory):
    model, processor = tiny_model("bert", architecture_type="bi-encoder", max_length=48)
    out = tmp_path_factory.mktemp("bi_int8")
    return model, processor, out, export_onnx(model, processor, out, quantize="int8", check=False)


def feeds(model, processor, meta):
    return list(q.calibration_feeds(model, processor, q.probe_rows(), meta["inputs"]))


def test_per_channel_fp32_embeddings_and_exclusions_reach_the_quantiser(uni_fp32, tmp_path, monkeypatch):
    model, processor, out, meta = uni_fp32
    calls = []
    real = ort_quantization.quantize_dynamic

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(ort_quantization, "quantize_dynamic", spy)
    source = tmp_path / "model.onnx"
    source.write_bytes((out / "model.onnx").read_bytes())
    graph = onnx.load(str(source)).graph
    excluded = next(n.name for n in graph.node if n.op_type == "MatMul" and "intermediate" in n.name)
    name, settings = q.quantize_graph(source, feeds(model, processor, meta), nodes_to_exclude=[excluded])
    (kwargs,) = calls
    assert kwargs["per_channel"] is True
    assert kwargs["op_types_to_quantize"] == ["MatMul", "Attention"]  # no Gather / EmbedLayerNormalization
    assert kwargs["extra_options"]["MatMulConstBOnly"] is True
    assert excluded in kwargs["nodes_to_exclude"] and settings["nodes_excluded"] == kwargs["nodes_to_exclude"]
    ops = op_types(tmp_path / name)
    assert "QAttention" in ops and "MatMulInteger" in ops
    assert "QEmbedLayerNormalization" not in ops  # the embedding tables stay fp32
    int8_graph = onnx.load(str(tmp_path / name)).graph
    assert any(n.name == excluded and n.op_type == "MatMul" for n in int8_graph.node), "excluded node was quantised"
    layers = model.config.encoder_config.num_hidden_layers
    assert settings["smoothed"] == 2 * layers  # per layer: the Q/K/V projection and the feed-forward's first layer


def test_smoothing_keeps_the_fp32_function(uni_fp32, tmp_path):
    model, processor, out, meta = uni_fp32
    graph = onnx.load(str(out / "model.onnx"))
    targets = q.smoothing_targets(graph)
    assert {n.op_type for n in targets} == {"Attention", "MatMul"}
    calibration = feeds(model, processor, meta)
    smoothed, _ = q.calibrate(graph, calibration)
    assert smoothed == len(targets)
    assert sum(n.op_type == "Mul" and "_smoothed_" in n.name for n in graph.graph.node) == len(targets)
    path = tmp_path / "smoothed.onnx"
    q.save(graph, path)

    def logits(file):
        session = ort.InferenceSession(str(file), session_options(1), providers=["CPUExecutionProvider"])
        return [session.run(["logits"], feed)[0] for feed in calibration[:8]]

    for a, b in zip(logits(out / "model.onnx"), logits(path), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_projections_with_outlier_inputs_that_smoothing_cannot_reach_stay_fp32(uni_fp32, monkeypatch):
    _, _, out, _ = uni_fp32
    graph = onnx.load(str(out / "model.onnx"))
    weights = {init.name: init for init in graph.graph.initializer}
    widths = {node.input[0]: weights[node.input[1]].dims[0] for node in q.projections(graph)}
    smoothable = {node.input[0] for node in q.smoothing_targets(graph)}
    hot = next(node for node in q.projections(graph) if node.input[0] not in smoothable)

    def crafted(model, names, feeds):
        maxima = {name: np.ones(widths[name]) for name in names}
        maxima[hot.input[0]][0] = 2 * q.OUTLIER_RATIO  # one channel far beyond the rest
        for name in smoothable:  # LayerNorm outputs with outliers too: smoothing handles those
            maxima[name][0] = 4 * q.OUTLIER_RATIO
        return maxima

    monkeypatch.setattr(q, "channel_maxima", crafted)
    smoothed, keep = q.calibrate(graph, [])
    assert keep == [hot.name] and smoothed == len(smoothable)


def test_bi_encoder_label_tower_stays_fp32_and_agreement_is_recorded(bi_int8):
    _, _, out, meta = bi_int8
    assert meta["int8_files"] == {"text": "model.int8.onnx", "labels": "label_encoder.onnx"}
    assert meta["int8"]["label_tower"] == "fp32" and meta["int8"]["per_channel"] is True
    report = meta["int8"]["agreement"]
    assert report["decisions"] == len(q.PROBE_TEXTS) * len(q.PROBE_LABELS) and report["source"] == "probe"
    assert 0.0 <= report["top1_agreement"] <= 1.0 and report["meets_target"] == (report["top1_agreement"] >= 0.95)
    assert json.loads((out / "gliclass_onnx.json").read_text())["int8"]["agreement"] == report


def test_describe_warns_below_the_target():
    report = {"top1_agreement": 0.9, "max_abs_prob_diff": 0.3, "decisions": 192, "target": 0.95, "meets_target": False}
    assert "below the 95% target" in q.describe(report) and "90.0%" in q.describe(report)
    assert "below" not in q.describe({**report, "top1_agreement": 0.99, "meets_target": True})


def test_calibration_files(tmp_path):
    jsonl = tmp_path / "calib.jsonl"
    jsonl.write_text(
        '{"text": "a", "labels": ["x", "y"]}\n\n{"text": "b", "all_labels": ["p", "q", "r"]}\n{"text": "c"}\n'
    )
    rows = q.read_calibration(jsonl)
    assert rows == [
        {"text": "a", "labels": ["x", "y"]},
        {"text": "b", "labels": ["p", "q", "r"]},
        {"text": "c", "labels": None},
    ]
    assert len(q.probe_rows(rows)) == 2 + len(q.PROBE_LABELS)
    text = tmp_path / "calib.txt"
    text.write_text("first text\nsecond text\n")
    assert [r["text"] for r in q.read_calibration(text)] == ["first text", "second text"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": "b", "labels": ["only"]}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: 'labels'"):
        q.read_calibration(bad)
    with pytest.raises(ValueError, match="smooth_alpha"):
        q.quantize_graph(tmp_path / "none.onnx", smooth_alpha=1.5)


@pytest.fixture(scope="module")
def saved_bi(tmp_path_factory):
    model, processor = tiny_model("bert", architecture_type="bi-encoder", max_length=48)
    path = tmp_path_factory.mktemp("saved_bi")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_cli_prints_the_measured_agreement_when_it_quantises(saved_bi, tmp_path, capsys):
    calibration = tmp_path / "calib.txt"
    calibration.write_text("a good movie\nthe food was bad\n")
    code = cli.main(
        ["export-onnx", "--model", str(saved_bi), "--out", str(tmp_path / "onnx"), "--quantize", "int8"]
        + ["--no-check", "--calibration", str(calibration)]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    line = next(line for line in captured.err.splitlines() if "top-1 agreement with the fp32 export" in line)
    report = json.loads(captured.out)["int8"]["agreement"]
    assert f"{report['top1_agreement']:.1%}" in line and f"on {report['decisions']} calibration decisions" in line
    assert report["decisions"] == 2 * len(q.PROBE_LABELS)


def test_cli_refuses_bad_calibration_input(saved_bi, tmp_path, capsys):
    out = str(tmp_path / "onnx")
    assert cli.main(["export-onnx", "--model", str(saved_bi), "--out", out, "--calibration", "x.txt"]) == 2
    assert "add --quantize int8" in capsys.readouterr().err
    missing = str(tmp_path / "missing.jsonl")
    args = ["export-onnx", "--model", str(saved_bi), "--out", out, "--quantize", "int8", "--calibration", missing]
    assert cli.main(args) == 2
    assert "missing.jsonl" in capsys.readouterr().err


def test_torch_model_is_untouched_by_calibration(bi_int8):
    model, processor, _, _ = bi_int8
    assert not any(module.training for module in model.modules())
    batch = processor(["good movie"], [["positive", "negative"]])
    with torch.inference_mode():
        torch.testing.assert_close(model(**batch).logits, model(**batch).logits, atol=0, rtol=0)
