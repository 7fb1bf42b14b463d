"""The speed harness's FLOP count, fp32 peak, system lists, agreement, targets and the official-bf16 worker.

Timings are never asserted, only how they are turned into figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertModel

from gliclass.evaluation import flops, overhead, speed, speed_harness, speed_inputs
from gliclass.evaluation.systems import GLiClassSystem
from gliclass.evaluation.worker import pipeline_shapes
from gliclass.evaluation.workers import Worker, official_python

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def test_encoder_flops_formula_on_a_tiny_config():
    """L·(8·n·d² + 4·n·d·f + 4·n²·d): d=32, f=64, L=2, n=10."""
    assert flops.encoder_flops(TINY, 10) == 2 * (8 * 10 * 32**2 + 4 * 10 * 32 * 64 + 4 * 10**2 * 32)


@pytest.mark.parametrize("tokens", [1, 7, 40])
def test_encoder_flops_match_torchs_count_of_a_real_encoder(tokens: int):
    """The formula counts what torch's FLOP counter counts for a BERT encoder's matmuls (eager attention, no
    pooler), so the % of peak rests on the model's real shapes."""
    config = BertConfig(**TINY, vocab_size=100, max_position_embeddings=64, attn_implementation="eager")
    model = BertModel(config, add_pooling_layer=False).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(input_ids=torch.randint(0, 100, (1, tokens)), attention_mask=torch.ones(1, tokens, dtype=torch.long))
    assert flops.encoder_flops(TINY, tokens) == counter.get_total_flops()


def test_call_flops_adds_every_row_and_the_label_tower_where_it_runs():
    label_tower = {**TINY, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1}
    config = {"encoder_config": TINY, "label_model_config": label_tower}
    text = flops.encoder_flops(TINY, 50) + flops.encoder_flops(TINY, 20)
    assert flops.call_flops(config, {"rows": [50, 20], "label_rows": []}) == text
    labels = flops.encoder_flops(label_tower, 3) + flops.encoder_flops(label_tower, 5)
    assert flops.call_flops(config, {"rows": [50, 20], "label_rows": [3, 5]}) == text + labels


def test_matmul_peak_is_positive_and_percent_follows_from_it():
    threads = torch.get_num_threads()
    peak = flops.matmul_peak(threads=1, sizes=(64, 128), repeats=1)
    assert peak["gflops"] > 0 and peak["gflops"] == max(peak["by_size"].values())
    assert set(peak["by_size"]) == {"64", "128"} and peak["threads"] == 1
    assert torch.get_num_threads() == threads  # restored
    assert flops.peak_percent(2e9, 5.0, 40.0) == pytest.approx(25.0)  # 10 GFLOP/s of 40
    pct = flops.peak_percent(1e6, 100.0, peak["gflops"])
    assert pct == pytest.approx(100 * 1e8 / (peak["gflops"] * 1e9))
    assert flops.peak_percent(None, 5.0, 40.0) is None and flops.peak_percent(1e9, None, 40.0) is None


def test_default_systems_drop_the_redundant_one():
    bi, uni = speed.default_systems("bi-encoder"), speed.default_systems("uni-encoder")
    assert "ours-bi-cached" not in bi and "ours-nocache" in bi  # the bi-encoder model is itself the cached one
    assert "ours-nocache" not in uni and "ours-bi-cached" in uni  # no label tower to turn off
    for names in (bi, uni):
        assert {"ours", "ours-compiled", "official", "ours-bf16", "official-bf16"} <= set(names)


def test_agreement_stats():
    reference = [[0.9, 0.1, 0.2], [0.3, 0.6, 0.1]]
    rows = [[0.8, 0.15, 0.2], [0.5, 0.4, 0.1]]  # the second text's top-1 flips
    stats = speed.agreement_stats(rows, reference)
    assert stats["top1_agreement"] == 0.5 and stats["max_abs_prob_diff"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="reference rows"):
        speed.agreement_stats(rows[:1], reference)


def cell(length: int, labels: int, speeds: dict[str, float], official_scored: int | None = None) -> dict:
    systems = {name: {"examples_per_s": v, "labels_scored": labels} for name, v in speeds.items()}
    systems["official"]["labels_scored"] = labels if official_scored is None else official_scored
    return {"text_tokens": length, "labels": labels, "systems": systems}


def test_targets_judge_every_exact_system_on_its_own():
    cells = [
        cell(64, 1, {"ours": 13.0, "ours-compiled": 20.0, "ours-nocache": 12.0, "official": 10.0}),
        cell(64, 8, {"ours": 30.0, "ours-compiled": 12.0, "ours-nocache": 11.0, "official": 10.0}),
        # the official pipeline cut labels here: listed as excluded, not judged, not hidden
        cell(512, 8, {"ours": 1.0, "ours-compiled": 1.0, "ours-nocache": 1.0, "official": 10.0}, official_scored=3),
    ]
    batched = {
        "systems": {n: {"examples_per_s": v} for n, v in {"ours": 30, "ours-compiled": 15, "official": 10}.items()}
    }
    order = ["ours", "ours-compiled", "ours-nocache", "official", "ours-bf16"]
    out = speed.targets(cells, batched, order, "bi-encoder")
    judged = {name: out[f"batch1_{name}_vs_official_ge_1.25x"] for name in speed_harness.EXACT}
    assert judged["ours"]["holds"] and judged["ours"]["min_ratio"] == pytest.approx(1.3)
    assert not judged["ours-compiled"]["holds"]
    assert [(c["labels"], c["ratio"]) for c in judged["ours-compiled"]["cells_below"]] == [(8, pytest.approx(1.2))]
    assert not judged["ours-nocache"]["holds"] and len(judged["ours-nocache"]["cells_below"]) == 2
    for target in judged.values():
        assert target["cells_judged"] == 2 and [c["text_tokens"] for c in target["excluded_cells"]] == [512]
    assert out["batched_ours_vs_official_ge_2x"] == {"holds": True, "ratio": 3.0}
    assert out["batched_ours-nocache_vs_official_ge_2x"] == {"holds": False, "ratio": None}  # not measured: missed
    assert not any("ours-bf16" in key for key in out)  # bf16 is compared side by side, not judged as exact
    assert out["bi_cached_keeps_ge_0.8_at_max_labels"]["system"] == "ours"  # a bi-encoder model: ours is cached


def test_a_missing_exact_measurement_counts_against_the_target():
    cells = [cell(64, 1, {"ours": 20.0, "official": 10.0}), cell(64, 8, {"official": 10.0})]
    out = speed.targets(cells, {"systems": {}}, ["ours", "official"])
    assert not out["batch1_ours_vs_official_ge_1.25x"]["holds"]
    assert out["batch1_ours_vs_official_ge_1.25x"]["cells_below"][0]["ratio"] is None


def test_overhead_targets_judge_each_exact_system():
    def ov(ours: float, compiled: float, fast: float) -> dict:
        systems = {"ours": ours, "ours-compiled": compiled, "ours-fast": fast, "official": 10.0}
        systems = {n: {"ms_per_call": v, "pipeline_ms": v / 2} for n, v in systems.items()}
        return {"text_tokens": 64, "labels": 1, "systems": systems}

    out = overhead.overhead_targets([ov(6.0, 4.0, 1.0)], ["ours", "ours-compiled", "ours-fast", "official"])
    assert set(out) == {
        "overhead_ours_vs_official_le_0.5x",
        "overhead_ours_pipeline_ms_vs_official_le_0.5x",
        "overhead_ours-compiled_vs_official_le_0.5x",
        "overhead_ours-compiled_pipeline_ms_vs_official_le_0.5x",
    }
    assert not out["overhead_ours_vs_official_le_0.5x"]["holds"]
    assert out["overhead_ours-compiled_vs_official_le_0.5x"]["holds"]
    assert "ours-compiled" in speed.parse_args(["--overhead"]).systems.split(",")


def test_pipeline_shapes_count_the_label_tower_only_without_the_cache():
    model, processor = tiny_model(architecture_type="bi-encoder")
    labels = ["good", "bad", "the music"]
    cached = GLiClassSystem(model, processor, batch_size=1)
    uncached = GLiClassSystem(model, processor, batch_size=1, label_cache=False)
    text = "the movie was good and the plot was bad"
    expected_row = len(processor.tokenizer(text)["input_ids"])
    assert pipeline_shapes(cached, [text], labels) == {"rows": [expected_row], "label_rows": []}
    label_rows = [len(ids) for ids in processor.label_ids(labels)]
    assert pipeline_shapes(uncached, [text], labels) == {"rows": [expected_row], "label_rows": label_rows}


@pytest.mark.slow
@pytest.mark.skipif(official_python() is None, reason="the official package's venv is absent")
def test_official_bf16_runs_in_the_worker(tmp_path: Path):
    """The official pipeline under bf16 autocast, in its own venv: scores near (not equal to) its fp32 ones, the
    same labels scored, shapes of its one row."""
    model_dir = overhead.tiny_checkpoint(tmp_path / "tiny")
    request = {"texts": ["the movie was good and the plot was bad"], "labels": ["good", "bad"], "multi_label": True}
    with (
        Worker("official", model_dir, python=official_python(), max_length=64) as fp32,
        Worker("official-bf16", model_dir, python=official_python(), max_length=64) as bf16,
    ):
        assert bf16.info["backend"] == "official-bf16"
        exact, reduced = (w.request(cmd="scores", **request)["scores"][0] for w in (fp32, bf16))
        assert max(abs(a - b) for a, b in zip(exact, reduced, strict=True)) < 0.05
        timed = bf16.request(cmd="time", passes=1, warmup=1, batch_size=1, **request)
        assert timed["labels_scored"] == 2 and len(timed["seconds"]) == 1
        shapes = bf16.request(cmd="shapes", **request)
        assert shapes["label_rows"] == [] and len(shapes["rows"]) == 1
    config = json.loads((model_dir / "config.json").read_text())
    assert flops.call_flops(config, shapes) > 0


def test_agreement_texts_fit_the_budget(tmp_path: Path):
    """A text over the budget is chunked by ours and cut by the official pipeline (different scores by design), so
    the agreement texts are only those whose sequence fits."""
    _, processor = tiny_model("bert", max_length=64)
    root = tmp_path / "data"
    words = ["the", "movie", "was", "good", "and", "the", "plot", "was", "bad", "but", "i", "love", "the", "music"]
    for i, name in enumerate(speed_inputs.MIXED_SOURCES):
        (root / name).mkdir(parents=True)
        (root / name / "labels.json").write_text(json.dumps(["good", "bad"]))
        text = " ".join(words * (4 if i % 2 else 1))  # every other source holds only long texts
        rows = [{"text": text, "labels": ["good"]} for _ in range(3)]
        (root / name / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = speed_inputs.fitting_texts(root, 6, 0, processor, processor.tokenizer)
    assert texts and all(len(t.split()) == len(words) for t in texts)
    for text in texts:
        string = processor.segments(text, speed_inputs.AGREEMENT_LABELS).string
        assert len(processor.tokenizer(string)["input_ids"]) <= processor.budget
