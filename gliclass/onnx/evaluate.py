"""What int8 quantisation costs: macro-F1 of torch, ONNX fp32 and ONNX int8 on a sample of labelled test sets.

    python -m gliclass.onnx.evaluate --datasets sst2 ag_news --rows 300 --json experiments/results/int8.json

Uses `models/default/` (the default `python run.py` export) when it exists, else a fresh `build_model("minilm")`
(pretrained backbone, untrained head: its F1 is near chance, so read the agreement column too). The data folder is
resolved like everywhere else (`--data`, else $GLICLASS_DATA_DIR, else ../shared/data). `--json` writes the report
with its run record (date, command, git commit, versions) and only from a clean git tree, unless `--allow-dirty`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from gliclass.data.benchmarks import data_root
from gliclass.evaluation.common import run_record
from gliclass.onnx.export import export_onnx
from gliclass.pipeline import ZeroShotPipeline

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO_ROOT / "models" / "default"


def macro_f1(gold: list[str], predicted: list[str], labels: list[str]) -> float:
    """Unweighted mean of per-label F1 over the dataset's label list (a label never predicted nor gold scores 0)."""
    scores = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, predicted, strict=True))
        fp = sum(g != label and p == label for g, p in zip(gold, predicted, strict=True))
        fn = sum(g == label and p != label for g, p in zip(gold, predicted, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def load_rows(data_dir: Path, name: str, rows: int, seed: int) -> tuple[list[dict[str, Any]], list[str]]:
    """A seeded sample of the test split (the files are sorted by label, so the head would be one class)."""
    labels = json.loads((data_dir / name / "labels.json").read_text())
    lines = (data_dir / name / "test.jsonl").read_text().splitlines()
    sample = random.Random(seed).sample(lines, min(rows, len(lines)))
    return [json.loads(line) for line in sample], labels


def load_model(model_dir: Path | None, work: Path) -> tuple[Path, str]:
    if model_dir is not None and model_dir.is_dir():
        return model_dir, str(model_dir)
    from gliclass import build_model

    torch.manual_seed(0)
    model, processor = build_model("minilm")
    path = work / "minilm"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path, 'fresh build_model("minilm") (untrained head, seed 0)'


def evaluate(
    data_dir: Path, datasets: list[str], rows: int, seed: int, model_dir: Path | None, batch_size: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path, description = load_model(model_dir, work)
        export_onnx(*_torch_parts(path), work / "onnx", quantize="int8")
        pipes = {
            "torch": ZeroShotPipeline.from_pretrained(path, backend="torch", batch_size=batch_size),
            "onnx-fp32": ZeroShotPipeline.from_pretrained(work / "onnx", backend="onnx", batch_size=batch_size),
            "onnx-int8": ZeroShotPipeline.from_pretrained(work / "onnx", quantized=True, batch_size=batch_size),
        }
        sizes = {name: (work / "onnx" / name).stat().st_size for name in ("model.onnx", "model.int8.onnx")}
        report: dict[str, Any] = {"model": description, "rows": rows, "seed": seed, "bytes": sizes, "datasets": {}}
        for name in datasets:
            records, labels = load_rows(data_dir, name, rows, seed)
            texts, gold = [r["text"] for r in records], [r["labels"][0] for r in records]
            result: dict[str, Any] = {}
            predictions = {}
            for backend, pipe in pipes.items():
                start = time.perf_counter()
                out = pipe(texts, labels, multi_label=False)
                seconds = time.perf_counter() - start
                predictions[backend] = [row[0]["label"] for row in out]
                result[backend] = {"macro_f1": macro_f1(gold, predictions[backend], labels), "seconds": seconds}
            same = sum(a == b for a, b in zip(predictions["onnx-fp32"], predictions["onnx-int8"], strict=True))
            result["int8_agreement_with_fp32"] = same / len(texts)
            report["datasets"][name] = result
    return report


def _torch_parts(path: Path) -> tuple[Any, Any]:
    from gliclass.modeling import GLiClassModel
    from gliclass.processing import GLiClassProcessor

    return GLiClassModel.from_pretrained(str(path)), GLiClassProcessor.from_pretrained(str(path))


def to_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Model: {report['model']}; {report['rows']} test rows per dataset (seed {report['seed']}); "
        f"text graph {report['bytes']['model.onnx'] / 2**20:.1f} MiB fp32, "
        f"{report['bytes']['model.int8.onnx'] / 2**20:.1f} MiB int8.",
        "",
        "| dataset | torch macro-F1 | ONNX fp32 | ONNX int8 | int8 - fp32 | int8 = fp32 predictions | s torch / fp32 / int8 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in report["datasets"].items():
        t, f, q = r["torch"], r["onnx-fp32"], r["onnx-int8"]
        lines.append(
            f"| {name} | {t['macro_f1']:.4f} | {f['macro_f1']:.4f} | {q['macro_f1']:.4f} | "
            f"{q['macro_f1'] - f['macro_f1']:+.4f} | {r['int8_agreement_with_fp32']:.1%} | "
            f"{t['seconds']:.1f} / {f['seconds']:.1f} / {q['seconds']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", type=Path, default=None, help="data folder (default: $GLICLASS_DATA_DIR or ../shared/data)"
    )
    parser.add_argument("--datasets", nargs="+", default=["sst2", "ag_news"])
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model dir (missing: fresh MiniLM)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the report, with its run record, here")
    parser.add_argument("--allow-dirty", action="store_true", help="write --json from an uncommitted tree too")
    args = parser.parse_args(argv)
    data = data_root(args.data)
    record = run_record(args, "gliclass.onnx.evaluate")  # at the start: the commit the run measures
    if args.json and not re.fullmatch(r"[0-9a-f]+", record["git_commit"]) and not args.allow_dirty:
        raise SystemExit(
            f"--json {args.json}: the tree is at {record['git_commit']!r}, not a clean commit, so the result could "
            "not be reproduced; commit first (or pass --allow-dirty for a result that is not to be committed)"
        )
    report = {"run": record, **evaluate(data, args.datasets, args.rows, args.seed, args.model, args.batch_size)}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(to_markdown(report))
    return report


if __name__ == "__main__":
    main()
