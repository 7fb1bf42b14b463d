"""ONNX against torch eager on one model: batch-1 speed ratios and peak RSS at batch 32 (issue 13, item 5).

    python -m gliclass.onnx.bench --model models/default --out experiments/results/
    python -m gliclass.onnx.bench --model models/default_uni --name onnx_speed_uni --out experiments/results/

Exports `--model` with the current exporter (fused fp32 graphs + dynamic int8) to a temp dir, then runs "ours" (the
torch pipeline, eager fp32, SDPA attention), "ours-onnx" and "ours-onnx-int8", each in its own worker process
(`gliclass.evaluation.workers`, the speed harness's systems). Batch 1: texts of 64 / 256 tokens x 1 / 8 / 64 labels,
at 1 and 2 threads per process (torch and onnxruntime alike); the systems take turns pass by pass, and a cell's speed
is 1 / the median pass (one whole pipeline call). Peak RSS: a fresh worker per system (1 thread) scores
`--batched-texts` mixed-length real texts with 10 labels at batch 32, then reports its peak (VmHWM).
Targets: each ONNX system >= 1.5x eager in every batch-1 cell; its peak RSS at batch 32 <= eager's; int8 >= 1.5x
the fp32 ONNX export in every batch-1 cell (issue 23: the int8 export now keeps some layers in fp32 to agree with it).
Writes <out>/<name>.{md,json} with the run record (date, command, commit).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from gliclass.data.benchmarks import data_root, read_benchmark, read_labels
from gliclass.evaluation.common import DEFAULT_MODEL, run_record
from gliclass.evaluation.report import markdown_table, publish
from gliclass.evaluation.speed_harness import interleaved, rotate
from gliclass.evaluation.speed_inputs import LABEL_SOURCE, TEXT_SOURCE, mixed_texts, text_of_length
from gliclass.evaluation.workers import Worker
from gliclass.onnx.export import export_onnx
from gliclass.processing import GLiClassProcessor

EAGER = "ours"
ONNX_SYSTEMS = ("ours-onnx", "ours-onnx-int8")
FP32, INT8 = ONNX_SYSTEMS
SPEED_TARGET = 1.5
BATCHED_LABELS = 10
BATCHED_SIZE = 32


def export(model_dir: Path, out: Path) -> dict[str, Any]:
    from gliclass.modeling import GLiClassModel

    model, processor = GLiClassModel.from_pretrained(str(model_dir)), GLiClassProcessor.from_pretrained(model_dir)
    return export_onnx(model, processor, out, quantize="int8")


def batch1_cells(
    dirs: dict[str, Path], texts: dict[int, str], pool: list[str], args: argparse.Namespace, budget: int
) -> list[dict[str, Any]]:
    cells = []
    for threads in args.threads:
        workers = {
            name: Worker(name, path, threads=threads, max_length=budget, batch_size=1) for name, path in dirs.items()
        }
        try:
            for k, (length, count) in enumerate((t, c) for t in args.lengths for c in args.labels):
                request = {"texts": [texts[length]], "labels": pool[:count], "batch_size": 1, "multi_label": True}
                systems = interleaved(workers, rotate(list(dirs), k), request, args.passes, args.cell_cap)
                cell = {"threads": threads, "text_tokens": length, "labels": count, "systems": systems}
                eager = systems[EAGER]["examples_per_s"]
                cell["ratios"] = {name: systems[name]["examples_per_s"] / eager for name in ONNX_SYSTEMS}
                cells.append(cell)
                print(_cell_line(cell), flush=True)
        finally:
            for worker in workers.values():
                worker.close()
    return cells


def peak_memory(dirs: dict[str, Path], texts: list[str], labels: list[str], budget: int) -> dict[str, Any]:
    """Each system alone in a fresh process: RSS after loading, then the peak over one batch-32 pass."""
    memory = {}
    request = {"texts": texts, "labels": labels, "batch_size": BATCHED_SIZE, "multi_label": True}
    for name, path in dirs.items():
        with Worker(name, path, threads=1, max_length=budget, batch_size=BATCHED_SIZE) as worker:
            seconds = worker.request(cmd="time", passes=1, warmup=0, **request)["seconds"][0]
            memory[name] = {
                "after_load_mb": worker.info["maxrss_mb"],
                "peak_mb": worker.request(cmd="memory")["maxrss_mb"],
                "examples_per_s": len(texts) / seconds,
            }
    return memory


def int8_vs_fp32(cell: dict[str, Any]) -> float:
    """The int8 export's speed over the fp32 export's in one cell."""
    return cell["systems"][INT8]["examples_per_s"] / cell["systems"][FP32]["examples_per_s"]


def targets(cells: list[dict[str, Any]], memory: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name in ONNX_SYSTEMS:
        worst = min(cells, key=lambda cell: cell["ratios"][name])
        ratio = worst["ratios"][name]
        out[f"batch1_{name}_vs_eager_ge_{SPEED_TARGET}x"] = {
            "holds": ratio >= SPEED_TARGET,
            "min_ratio": round(ratio, 3),
            "worst_cell": {key: worst[key] for key in ("threads", "text_tokens", "labels")},
            "cells_below": sum(cell["ratios"][name] < SPEED_TARGET for cell in cells),
        }
        peak, eager = memory[name]["peak_mb"], memory[EAGER]["peak_mb"]
        out[f"batch{BATCHED_SIZE}_peak_rss_{name}_le_eager"] = {
            "holds": peak <= eager,
            "peak_mb": round(peak),
            "eager_peak_mb": round(eager),
        }
    worst = min(cells, key=int8_vs_fp32)
    out[f"batch1_{INT8}_vs_{FP32}_ge_{SPEED_TARGET}x"] = {
        "holds": int8_vs_fp32(worst) >= SPEED_TARGET,
        "min_ratio": round(int8_vs_fp32(worst), 3),
        "worst_cell": {key: worst[key] for key in ("threads", "text_tokens", "labels")},
        "cells_below": sum(int8_vs_fp32(cell) < SPEED_TARGET for cell in cells),
    }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    record = run_record(args, "gliclass.onnx.bench")  # at the start: the commit the run measures
    root = data_root(args.data_dir)
    model_dir = Path(args.model).resolve()
    processor = GLiClassProcessor.from_pretrained(model_dir, max_length=1 << 30)  # the backbone's positions
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pool = read_labels(LABEL_SOURCE, root)
    source = [row.text for row in read_benchmark(TEXT_SOURCE, "test", root).rows]
    texts = {length: text_of_length(tokenizer, source, length) for length in args.lengths}
    with tempfile.TemporaryDirectory() as tmp:
        meta = export(model_dir, Path(tmp))
        dirs = {EAGER: model_dir, **dict.fromkeys(ONNX_SYSTEMS, Path(tmp))}
        cells = batch1_cells(dirs, texts, pool, args, processor.budget)
        batched = mixed_texts(root, args.batched_texts, args.seed)
        memory = peak_memory(dirs, batched, pool[:BATCHED_LABELS], processor.budget)
    return {
        "run": record,
        "model": str(model_dir),
        "architecture_type": meta["architecture_type"],
        "export": {key: meta[key] for key in ("opset", "exporter", "fusions", "max_abs_logit_diff")},
        "budget_tokens": processor.budget,
        "cells": cells,
        "memory": memory,
        "targets": targets(cells, memory),
    }


def _cell_line(cell: dict[str, Any]) -> str:
    speeds = ", ".join(f"{name} {s['examples_per_s']:.1f}/s" for name, s in cell["systems"].items())
    return f"{cell['threads']} thread(s), {cell['text_tokens']} tokens, {cell['labels']} labels: {speeds}"


def render(result: dict[str, Any]) -> str:
    run = result["run"]
    export_ = result["export"]
    lines = [
        "# ONNX vs torch eager: batch-1 speed and peak RSS at batch 32",
        "",
        f"- date: {run['date']}; commit {run['git_commit']}; torch {run['torch']}; {run['cpu_count']} CPUs",
        f"- command: `{run['command']}`",
        f"- model: `{result['model']}` ({result['architecture_type']})",
        f"- export: opset {export_['opset']}, {export_['exporter']} exporter, fusions {export_['fusions']}, "
        f"max |logit - torch| {export_['max_abs_logit_diff']:.2g}",
        "- each system in its own process; examples/s = 1 / median of the interleaved passes (one pipeline call "
        "each); ratios are against `ours` (torch eager fp32) in the same cell",
        "",
        "## Batch 1 (examples/s)",
        "",
    ]
    headers = [
        "threads",
        "text tokens",
        "labels",
        EAGER,
        *ONNX_SYSTEMS,
        *(f"{name}/eager" for name in ONNX_SYSTEMS),
        f"{INT8}/{FP32}",
    ]
    rows = [
        [
            cell["threads"],
            cell["text_tokens"],
            cell["labels"],
            *(cell["systems"][name]["examples_per_s"] for name in (EAGER, *ONNX_SYSTEMS)),
            *(cell["ratios"][name] for name in ONNX_SYSTEMS),
            int8_vs_fp32(cell),
        ]
        for cell in result["cells"]
    ]
    lines += [markdown_table(headers, rows, digits=3), ""]
    lines += [f"## Batch {BATCHED_SIZE}: peak RSS (one process per system, 1 thread)", ""]
    memory = result["memory"]
    rows = [[name, m["examples_per_s"], m["after_load_mb"], m["peak_mb"]] for name, m in memory.items()]
    lines += [markdown_table(["system", "examples/s", "RSS after load MB", "peak RSS MB"], rows, digits=1), ""]
    lines += ["## Targets", ""]
    for name, target in result["targets"].items():
        detail = ", ".join(f"{key}: {value}" for key, value in target.items() if key != "holds")
        lines.append(f"- {'HOLDS' if target['holds'] else 'MISSED'} `{name}`: {detail}")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="a saved torch model directory")
    parser.add_argument("--out", type=Path, required=True, help="writes <out>/<name>.md and .json")
    parser.add_argument("--name", default="onnx_speed")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: $GLICLASS_DATA_DIR or ../shared/data")
    parser.add_argument("--threads", type=_ints, default=[1, 2])
    parser.add_argument("--lengths", type=_ints, default=[64, 256], help="text tokens of the batch-1 cells")
    parser.add_argument("--labels", type=_ints, default=[1, 8, 64], help="label counts of the batch-1 cells")
    parser.add_argument("--passes", type=int, default=10, help="timed passes per system and cell")
    parser.add_argument("--cell-cap", type=float, default=20.0, help="seconds of passes after which a system stops")
    parser.add_argument("--batched-texts", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    publish(result, args.out, args.name, render)
    return result


if __name__ == "__main__":
    main()
