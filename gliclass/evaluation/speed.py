"""Speed benchmark (paper 2.4): examples/s at batch 1 over labels x text lengths, plus batched throughput.

    python -m gliclass.evaluation.speed --model models/default --out experiments/results/
    python -m gliclass.evaluation.speed --quick --out /tmp/speed      # a few minutes
    python -m gliclass.evaluation.speed --overhead --out experiments/results/   # per-call overhead, ~1-2 minutes

Every system runs in its own process (`worker.py`) with the same torch thread count and the same length budget
(the backbone's positions unless --max-length); the official package runs in its own venv on the same checkpoint.
Within a cell the systems take turns pass by pass (one timed pass each, in an order that rotates every pass), so
no two systems share the CPU and the load of a shared machine falls on all of them alike; a cell's speed is
1 / the median pass time. Reported ratios compare systems measured side by side within one run.

Systems, exact fp32 (the headline table): "ours" (the pipeline as loaded: eager torch fp32; a bi-encoder serves
repeated label sets from its label cache), "ours-compiled" (`compile=True`), "ours-nocache" (a bi-encoder with
`label_cache=False`: its label tower runs on every call, as the official pipeline's does), "official".
Reduced precision, side by side: "ours-bf16" (`precision="bf16"`, eager), "ours-fast" (compiled bf16),
"ours-fast-truncate" (ours-fast with `long_text="truncate"`: one row per label group, like the official cut-off, but
cutting text and keeping every label), "official-bf16" (the official pipeline under CPU bf16 autocast); their top-1
agreement with the official fp32 pipeline and max |prob diff| are measured on `--agreement-texts` mixed real texts.
Others: "ours-onnx" / "ours-onnx-int8" (onnxruntime), "ours-bi-cached" (a separate MiniLM bi-encoder served from
its cache; only by default when --model is a uni-encoder), "cross-encoder" (one forward pass per text-label pair
unless --pair-batch-size). The default system list drops the redundant one: "ours-bi-cached" when --model is itself a
bi-encoder ("ours" is then the cached bi-encoder), "ours-nocache" when it has no label tower.

Every cell also gives each system's % of the fp32 FLOP peak: model FLOPs per call (`call_flops`, from the model's
shapes and the rows each system runs) x calls/s / the peak of square fp32 matmuls (`matmul_peak`, 1024 and 2048,
with the systems' thread count; both in `gliclass.evaluation.flops`), measured in the same run before and after the
cells (the higher is kept).

`--overhead`: per-call overhead on a tiny random model, ours vs the official pipeline (`gliclass.evaluation.overhead`,
which describes it). Writes <out>/overhead.{md,json}.

The systems, their worker processes and the interleaved passes are in `gliclass.evaluation.speed_harness`; the
label and text inputs in `gliclass.evaluation.speed_inputs`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from gliclass.data.benchmarks import data_root, read_benchmark, read_labels
from gliclass.evaluation.common import DEFAULT_MODEL, fresh_minilm, resolve_model, run_record
from gliclass.evaluation.flops import PEAK_SIZES, call_flops, matmul_peak, peak_percent
from gliclass.evaluation.overhead import OVERHEAD, render_overhead, run_overhead
from gliclass.evaluation.report import markdown_table, publish
from gliclass.evaluation.speed_harness import (
    BF16,
    EXACT,
    OURS_VS_OFFICIAL,
    SYSTEMS,
    compact,
    interleaved,
    rotate,
    safe_ratio,
    start_workers,
)
from gliclass.evaluation.speed_inputs import (
    AGREEMENT_LABELS,
    LABEL_SOURCE,
    MIXED_LABELS,
    TEXT_SOURCE,
    fitting_texts,
    mixed_texts,
    text_of_length,
)
from gliclass.evaluation.workers import Worker, WorkerError
from gliclass.processing import GLiClassProcessor

LABEL_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128)
TEXT_LENGTHS = (64, 256, 512)
QUICK = {"labels": "1,8,128", "lengths": "64,256", "passes": 3, "batched_texts": 32, "batched_passes": 1, "cap": 5.0}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="uni-encoder GLiClass dir (default: models/default)")
    parser.add_argument("--bi-model", default=None, help="bi-encoder dir (default: a fresh MiniLM bi-encoder)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--systems", default=None, help=f"comma list of {list(SYSTEMS)} (default: all but the redundant one)"
    )
    parser.add_argument("--labels", default=None, help=f"label counts (default: {LABEL_COUNTS})")
    parser.add_argument("--lengths", default=None, help=f"text tokens, no specials (default: {TEXT_LENGTHS})")
    parser.add_argument("--passes", type=int, default=None, help="timed passes per cell, after a warm-up (10)")
    parser.add_argument(
        "--overhead",
        action="store_true",
        help=f"per-call overhead on a tiny random model, ours vs official (defaults: {OVERHEAD})",
    )
    parser.add_argument("--calls", type=int, default=None, help="back-to-back calls per timed pass (default 1)")
    parser.add_argument("--cell-cap", type=float, default=30.0, help="stop a system's cell after this many seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every system's process")
    parser.add_argument("--batch-size", type=int, default=32, help="batched-throughput batch size")
    parser.add_argument("--batched-texts", type=int, default=128, help="mixed-length real texts for throughput")
    parser.add_argument("--batched-passes", type=int, default=3)
    parser.add_argument(
        "--agreement-texts", type=int, default=256, help="mixed real texts for bf16 agreement (0: skip agreement)"
    )
    parser.add_argument("--pair-batch-size", type=int, default=1, help="cross-encoder pairs per forward")
    parser.add_argument(
        "--max-length", type=int, default=None, help="length budget of every system (default: backbone positions)"
    )
    parser.add_argument("--quick", action="store_true", help=f"fewer cells and passes: {QUICK}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="experiments/results/")
    parser.add_argument("--name", default=None, help="output file stem (default: speed, or overhead)")
    args = parser.parse_args(argv)
    if args.overhead and args.quick:
        parser.error("--overhead and --quick are separate modes; pick one")
    defaults = {
        "labels": ",".join(map(str, LABEL_COUNTS)),
        "lengths": ",".join(map(str, TEXT_LENGTHS)),
        "passes": 10,
        "calls": 1,
        "name": "speed",
    }
    if args.overhead:
        defaults.update(OVERHEAD, name="overhead")
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.passes < 1 or args.calls < 1:
        parser.error(f"--passes and --calls must be >= 1, got {args.passes} and {args.calls}")
    if args.quick:
        args.labels, args.lengths, args.passes = QUICK["labels"], QUICK["lengths"], QUICK["passes"]
        args.batched_texts, args.batched_passes, args.cell_cap = (
            QUICK["batched_texts"],
            QUICK["batched_passes"],
            QUICK["cap"],
        )
    return args


def default_systems(architecture: str) -> list[str]:
    """Every system but the redundant one: a bi-encoder --model is itself the cached bi-encoder ("ours"), so the
    separate "ours-bi-cached" model is dropped; a model without a label tower has nothing for "ours-nocache" to
    turn off."""
    if architecture == "bi-encoder":
        return [name for name in SYSTEMS if name != "ours-bi-cached"]
    if architecture in ("bi-encoder-fused",):
        return list(SYSTEMS)
    return [name for name in SYSTEMS if name != "ours-nocache"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = data_root(args.data_dir)
    model_dir, model_note = resolve_model(args.model)
    model_config = json.loads((model_dir / "config.json").read_text())
    architecture = model_config.get("architecture_type", "uni-encoder")
    names = [s.strip() for s in args.systems.split(",") if s.strip()] if args.systems else default_systems(architecture)
    unknown = [s for s in names if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; choose from {list(SYSTEMS)}")
    bi_dir = (
        (Path(args.bi_model) if args.bi_model else fresh_minilm("bi-encoder")) if "ours-bi-cached" in names else None
    )
    label_counts = [int(x) for x in args.labels.split(",")]
    lengths = [int(x) for x in args.lengths.split(",")]
    # every system gets max_length, else the backbone's positions (not the training length the model dir saved)
    processor = GLiClassProcessor.from_pretrained(model_dir, max_length=args.max_length or 1 << 30)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pool = read_labels(LABEL_SOURCE, root)
    if max(label_counts) > len(pool):
        raise SystemExit(f"at most {len(pool)} labels ({LABEL_SOURCE})")
    source = [row.text for row in read_benchmark(TEXT_SOURCE, "test", root).rows]
    texts = {length: text_of_length(tokenizer, source, length) for length in lengths}
    peaks = [matmul_peak(args.threads)]
    workers = start_workers(names, model_dir, bi_dir, processor.budget, args)
    order = [name for name in names if name in workers]
    configs = {name: model_config for name in order}
    if "ours-bi-cached" in order:
        configs["ours-bi-cached"] = json.loads((bi_dir / "config.json").read_text())
    cells = []
    try:
        for k, (length, count) in enumerate((t, c) for t in lengths for c in label_counts):
            labels = pool[:count]
            sequence = len(tokenizer(processor.segments(texts[length], labels).string)["input_ids"])
            cell: dict[str, Any] = {"text_tokens": length, "labels": count, "sequence_tokens": sequence, "systems": {}}
            request = {"texts": [texts[length]], "labels": labels, "batch_size": 1, "multi_label": True}
            cell["systems"] = interleaved(workers, rotate(order, k), request, args.passes, args.cell_cap)
            _add_shapes(cell, workers, order, request, configs)
            cells.append(cell)
            print(_progress(cell))
        batched = _batched(workers, order, mixed_texts(root, args.batched_texts, args.seed), args)
        agreement = (
            _agreement(workers, order, fitting_texts(root, args.agreement_texts, args.seed + 1, processor, tokenizer))
            if args.agreement_texts > 0
            else {}
        )
        memory = {
            name: {**workers[name].request(cmd="memory"), "after_load_mb": workers[name].info["maxrss_mb"]}
            for name in order
        }
        backends = {name: workers[name].info.get("backend") for name in order}
    finally:
        for worker in workers.values():
            worker.close()
    peaks.append(matmul_peak(args.threads))
    peak = {"gflops": max(p["gflops"] for p in peaks), "runs": peaks, "sizes": list(PEAK_SIZES)}
    for cell in cells:
        for result in cell["systems"].values():
            result["peak_pct"] = peak_percent(result.get("flops"), result.get("examples_per_s"), peak["gflops"])
    return {
        "run": run_record(args, "gliclass.evaluation.speed"),
        "model": str(model_dir),
        "model_note": model_note,
        "architecture": architecture,
        "bi_model": str(bi_dir) if bi_dir else None,
        "order": order,
        "backends": backends,
        "budget_tokens": processor.budget,
        "peak": peak,
        "cells": cells,
        "batched": batched,
        "agreement": agreement,
        "memory": memory,
        "targets": targets(cells, batched, order, architecture),
    }


def _add_shapes(
    cell: dict[str, Any],
    workers: dict[str, Worker],
    order: Sequence[str],
    request: dict[str, Any],
    configs: dict[str, dict[str, Any]],
) -> None:
    """Each system's rows and label-tower tokens on the cell's input, and the FLOPs of one call from them."""
    for name in order:
        result = cell["systems"][name]
        if "error" in result or name == "cross-encoder":  # the cross-encoder's pairs are not GLiClass rows
            continue
        try:
            shapes = workers[name].request(cmd="shapes", texts=request["texts"], labels=request["labels"])
        except WorkerError as err:
            result["shapes_error"] = str(err)
            continue
        result["shapes"] = shapes
        result["flops"] = call_flops(configs[name], shapes)


def _agreement(workers: dict[str, Worker], order: Sequence[str], texts: list[str]) -> dict[str, Any]:
    """Per system, against the official fp32 pipeline's scores (and against ours fp32) on the same texts and labels
    (multi-label probabilities, batch 1, `AGREEMENT_LABELS`): the share of texts with the same top-1 label and the
    max |prob diff| over every (text, label)."""
    if "official" not in order or not texts:
        return {}
    request = {"texts": texts, "labels": AGREEMENT_LABELS, "multi_label": True, "batch_size": 1}
    scores: dict[str, Any] = {}
    for name in order:
        if name in ("cross-encoder", "ours-bi-cached"):  # other models: nothing to agree with
            continue
        try:
            scores[name] = workers[name].request(cmd="scores", **request)["scores"]
        except WorkerError as err:
            scores[name] = str(err)
    if isinstance(scores["official"], str):
        return {"error": f"official: {scores['official']}"}
    references = {"official": scores["official"]}
    if isinstance(scores.get("ours"), list):
        references["ours"] = scores["ours"]
    out: dict[str, Any] = {"texts": len(texts), "labels": len(AGREEMENT_LABELS), "systems": {}}
    for name, rows in scores.items():
        if name == "official":
            continue
        if isinstance(rows, str):
            out["systems"][name] = {"error": rows}
            continue
        out["systems"][name] = {
            f"vs_{ref}": agreement_stats(rows, ref_rows) for ref, ref_rows in references.items() if ref != name
        }
    return out


def agreement_stats(rows: Sequence[Sequence[float]], reference: Sequence[Sequence[float]]) -> dict[str, float]:
    """Top-1 agreement (share of texts whose highest-scoring label is the same) and max |score diff|."""
    if len(rows) != len(reference):
        raise ValueError(f"got {len(rows)} score rows for {len(reference)} reference rows")
    same = sum(
        max(range(len(a)), key=a.__getitem__) == max(range(len(b)), key=b.__getitem__)
        for a, b in zip(rows, reference, strict=True)
    )
    diff = max(abs(x - y) for a, b in zip(rows, reference, strict=True) for x, y in zip(a, b, strict=True))
    return {"top1_agreement": same / len(rows), "max_abs_prob_diff": diff}


def _batched(workers: dict[str, Worker], order: Sequence[str], texts: list[str], args: argparse.Namespace) -> dict:
    """Mixed-length real texts at batch `batch_size`; passes interleave the systems (one pass each, rotating)."""
    seconds: dict[str, list[float]] = {name: [] for name in order}
    scored: dict[str, int] = {}
    for p in range(args.batched_passes):
        for name in rotate(order, p):
            reply = workers[name].request(
                cmd="time",
                texts=texts,
                labels=MIXED_LABELS,
                batch_size=args.batch_size,
                passes=1,
                warmup=1 if p == 0 else 0,
                warmup_texts=args.batch_size,
                multi_label=True,
            )
            seconds[name] += reply["seconds"]
            scored[name] = reply["labels_scored"]
    return {
        "texts": len(texts),
        "labels": len(MIXED_LABELS),
        "batch_size": args.batch_size,
        "passes": args.batched_passes,
        "systems": {
            name: {
                "examples_per_s": len(texts) * len(s) / sum(s),
                "seconds": s,
                "labels_scored_first_text": scored[name],
            }
            for name, s in seconds.items()
        },
    }


def _progress(cell: dict[str, Any]) -> str:
    parts = [
        f"{name}={r['examples_per_s']:.2f}/s" if "examples_per_s" in r else f"{name}=ERROR"
        for name, r in cell["systems"].items()
    ]
    return f"T={cell['text_tokens']:>3} L={cell['labels']:>3} ({cell['sequence_tokens']} tok): " + " ".join(parts)


def _speed(cell: dict[str, Any], name: str) -> float | None:
    return cell["systems"].get(name, {}).get("examples_per_s")


def targets(
    cells: list[dict[str, Any]], batched: dict[str, Any], order: Sequence[str], architecture: str = "uni-encoder"
) -> dict[str, Any]:
    """The speed targets, each with the numbers it was judged on. Batch 1 (>= 1.25x the official) and batched
    (>= 2x) are judged for every exact fp32 system of ours that ran, over every cell where the official pipeline
    scores every label (a cell it silently cuts labels from is listed under `excluded_cells`, never dropped
    unseen); a cell with no measurement for a system counts against it."""
    out: dict[str, Any] = {}
    exact = [name for name in EXACT if name in order]
    for name in exact if "official" in order else []:
        judged, excluded = [], []
        for c in cells:
            scored = c["systems"].get("official", {}).get("labels_scored")
            record = {
                "text_tokens": c["text_tokens"],
                "labels": c["labels"],
                "ratio": safe_ratio(_speed(c, name), _speed(c, "official")),
                "official_labels_scored": scored,
            }
            (judged if scored == c["labels"] else excluded).append(record)
        measured = [r for r in judged if r["ratio"] is not None]
        worst = min(measured, key=lambda r: r["ratio"]) if measured else None
        out[f"batch1_{name}_vs_official_ge_1.25x"] = {
            "holds": bool(judged) and len(measured) == len(judged) and all(r["ratio"] >= 1.25 for r in measured),
            "min_ratio": worst and worst["ratio"],
            "worst_cell": worst,
            "cells_judged": len(judged),
            "cells_below": [r for r in judged if r["ratio"] is None or r["ratio"] < 1.25],
            "excluded_cells": excluded,
        }
        b = batched["systems"]
        ratio = safe_ratio(b.get(name, {}).get("examples_per_s"), b.get("official", {}).get("examples_per_s"))
        out[f"batched_{name}_vs_official_ge_2x"] = {"holds": bool(ratio and ratio >= 2.0), "ratio": ratio}
    probe = next((c for c in cells if c["text_tokens"] == 256 and c["labels"] == 128), None)
    for name in [n for n in OURS_VS_OFFICIAL if n in order] if probe is not None and "cross-encoder" in order else []:
        mine, cross = _speed(probe, name), _speed(probe, "cross-encoder")
        scored = probe["systems"][name].get("labels_scored")
        ratio = mine / cross if mine and cross else None
        out[f"128_labels_256_tokens_{name}_vs_cross_ge_50x"] = {
            "holds": bool(ratio and ratio >= 50 and scored == 128),
            "ratio": ratio,
            "labels_scored": scored,
        }
    # the cached bi-encoder: "ours" itself when the model is a bi-encoder, else the separate "ours-bi-cached"
    cached = "ours-bi-cached" if "ours-bi-cached" in order else "ours" if architecture == "bi-encoder" else None
    if cached is not None and cached in order:
        kept = {}
        for length in sorted({c["text_tokens"] for c in cells}):
            row = {c["labels"]: _speed(c, cached) for c in cells if c["text_tokens"] == length}
            if 1 in row and max(row) > 1 and row[1] and row[max(row)]:
                kept[str(length)] = row[max(row)] / row[1]
        out["bi_cached_keeps_ge_0.8_at_max_labels"] = {
            "holds": bool(kept) and all(v >= 0.8 for v in kept.values()),
            "system": cached,
            "kept_fraction_by_text_tokens": kept,
        }
    return out


def _cell_table(cells: list[dict[str, Any]], systems: list[str], reference: str, peak: bool) -> str:
    """examples/s of `systems` per cell, each / `reference`, and (when `peak`) each system's % of the fp32 peak."""
    others = [name for name in systems if name != reference]
    headers = ["labels", "seq tokens", *systems]
    has_reference = reference in systems
    if has_reference:
        headers += [f"{name}/{reference}" for name in others]
    if peak:
        headers += [f"{name} % peak" for name in systems]
    if has_reference:
        headers += [f"{reference} labels scored"]
    rows = []
    for c in cells:
        row: list[Any] = [c["labels"], c["sequence_tokens"], *(_speed(c, n) for n in systems)]
        if has_reference:
            row += [safe_ratio(_speed(c, name), _speed(c, reference)) for name in others]
        if peak:
            row += [c["systems"].get(name, {}).get("peak_pct") for name in systems]
        if has_reference:
            row += [f"{c['systems'][reference].get('labels_scored')}/{c['labels']}"]
        rows.append(row)
    return markdown_table(headers, rows, 2)


def render(result: dict[str, Any]) -> str:
    run_info, order = result["run"], result["order"]
    architecture = result.get("architecture", "uni-encoder")
    peak = result.get("peak") or {}
    exact = [n for n in (*EXACT, "official") if n in order]
    reduced = [n for n in (*BF16, "official-bf16") if n in order]
    rest = [n for n in order if n not in exact and n not in reduced]
    lines = [
        "# Speed: examples/s at batch 1 (paper 2.4 protocol) and batched throughput",
        "",
        f"- date: {run_info['date']}; commit {run_info['git_commit']}; torch {run_info['torch']}",
        f"- command: `{run_info['command']}`",
        f"- machine: {run_info['cpu_count']} CPU cores shared with other jobs; "
        f"{run_info['args']['threads']} torch thread(s) in every system's process",
        f"- model: `{result['model']}` ({architecture})"
        + (f" — {result['model_note']}" if result["model_note"] else ""),
    ]
    if architecture == "bi-encoder":
        lines.append(
            "- the model is a bi-encoder: `ours` serves a repeated label set from its label cache (exact: a label's "
            "vector does not depend on the text), `ours-nocache` runs the label tower on every call as the official "
            "pipeline does, so the two bracket our speed; labels are not in the text sequence, so the official "
            "pipeline scores every label and cuts a text over the budget instead (ours chunks it: more rows)"
        )
    if result.get("bi_model"):
        lines.append(f"- bi-encoder: `{result['bi_model']}` (labels encoded once, then served from the label cache)")
    lines += [
        f"- length budget {result['budget_tokens']} tokens (MiniLM positions); labels: first L of clinc150's 150 "
        "intent names; texts: an IMDB review cut to T wordpieces",
        f"- passes per cell: {run_info['args']['passes']} per system after 1 warm-up, systems taking turns pass by "
        f"pass; examples/s = 1 / median pass (a system sits out once its passes exceed {run_info['args']['cell_cap']}"
        " s; `passes` in the JSON says how many ran)",
        f"- cross-encoder: {run_info['args']['pair_batch_size']} text-label pair(s) per forward pass",
    ]
    if peak:
        sizes = ", ".join(f"{n}: {v:.1f}" for n, v in peak["runs"][0]["by_size"].items())
        lines += [
            f"- fp32 peak: {peak['gflops']:.1f} GFLOP/s, the best square fp32 matmul ({'/'.join(map(str, peak['sizes']))}"
            f", {peak['runs'][0]['threads']} thread(s)) measured before and after the cells in this run (before: {sizes})",
            "- % peak = FLOPs per call x calls/s / peak. FLOPs per call = the sum over every encoder row the system "
            "runs of L·(8·n·d² + 4·n·d·f + 4·n²·d) (n real tokens of the row, d hidden size, f feed-forward size, L "
            "layers: Q/K/V/output projections, feed-forward, attention scores and weighted sum; a multiply-add is 2 "
            "FLOPs), plus the same for every label the label tower encodes per call (none when served from the "
            "cache). Embeddings, norms, softmax, GELU and the GLiClass head (~1%) are not counted; padding is not "
            "counted. The rows are the system's own: ours reports its planned rows (a chunked text is several), the "
            "official its one truncated row",
        ]
    lines.append("")
    lengths = sorted({c["text_tokens"] for c in result["cells"]})
    for length in lengths:
        cells = [c for c in result["cells"] if c["text_tokens"] == length]
        lines += [
            f"## Exact fp32, text length {length} tokens (examples/s, batch 1)",
            "",
            _cell_table(cells, exact, "official", peak=bool(peak)),
            "",
        ]
    if reduced:
        lines += [
            "## Reduced precision (bf16) side by side",
            "",
            "Ours under bf16 autocast (`ours-bf16` eager, `ours-fast` compiled, `ours-fast-truncate` compiled and "
            "cutting long text) against the official pipeline under the same CPU bf16 autocast (`official-bf16`). "
            "Not exact: see the agreement table below.",
            "",
        ]
        for length in lengths:
            cells = [c for c in result["cells"] if c["text_tokens"] == length]
            reference = "official-bf16" if "official-bf16" in reduced else reduced[-1]
            lines += [f"### Text length {length} tokens", "", _cell_table(cells, reduced, reference, False), ""]
    agreement = result.get("agreement") or {}
    if agreement.get("systems"):
        refs = ("vs_official", "vs_ours")
        rows = []
        for n, a in agreement["systems"].items():
            row: list[Any] = [n]
            for ref in refs:
                stats = a.get(ref) or {}
                row += [stats.get("top1_agreement"), stats.get("max_abs_prob_diff", a.get("error"))]
            rows.append(row)
        lines += [
            f"## Agreement ({agreement['texts']} mixed real texts, {agreement['labels']} labels, batch 1, "
            "multi-label probabilities)",
            "",
            "Against the official fp32 pipeline and against ours fp32. The labels are one wordpiece each, the texts "
            "go one at a time and every text fits the length budget (no chunking, no cut), so the official mean "
            "pooling's padding bug is a no-op and both fp32 pipelines agree to float rounding. With labels of "
            "different token lengths they do not (the official averages padding into shorter labels), so the "
            "batch-1 cells above compare speed, not scores.",
            "",
            markdown_table(
                [
                    "system",
                    "top-1 agreement vs official",
                    "max abs prob diff vs official",
                    "top-1 agreement vs ours",
                    "max abs prob diff vs ours",
                ],
                rows,
                4,
            ),
            "",
        ]
    if rest:
        for length in lengths:
            cells = [c for c in result["cells"] if c["text_tokens"] == length]
            lines += [f"## Other systems, text length {length} tokens (examples/s, batch 1)", ""]
            lines += [_cell_table(cells, rest, "", False), ""]
    b = result["batched"]
    lines += [
        f"## Batched throughput: {b['texts']} mixed-length real texts, {b['labels']} labels, batch {b['batch_size']}",
        "",
        markdown_table(
            ["system", "examples/s", "peak RSS MB", "RSS after load MB"],
            [
                [
                    n,
                    b["systems"][n]["examples_per_s"],
                    result["memory"][n]["maxrss_mb"],
                    result["memory"][n]["after_load_mb"],
                ]
                for n in order
            ],
            2,
        ),
        "",
        "## Targets",
        "",
    ]
    for name, target in result["targets"].items():
        detail = {k: v for k, v in target.items() if k != "holds"}
        lines.append(f"- {'HOLDS' if target['holds'] else 'MISSED'} `{name}`: {compact(detail)}")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> Path:
    """Throughput vs label count, log-log, one panel per text length, one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({c["text_tokens"] for c in result["cells"]})
    fig, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 4.6), sharey=True, squeeze=False)
    for ax, length in zip(axes[0], lengths, strict=True):
        cells = sorted((c for c in result["cells"] if c["text_tokens"] == length), key=lambda c: c["labels"])
        for name in result["order"]:
            points = [(c["labels"], _speed(c, name)) for c in cells if _speed(c, name)]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"text {length} tokens, batch 1")
        ax.set_xlabel("number of labels")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("examples / s")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=min(len(names), 5), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.86))  # the legend sits above the panels, never over a line
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.overhead:
        result = run_overhead(args)
        publish(result, args.out, args.name, render_overhead)
        return result
    result = run(args)
    plot(result, Path(args.out) / f"{args.name}.png")
    publish(result, args.out, args.name, render)
    return result


if __name__ == "__main__":
    main()
