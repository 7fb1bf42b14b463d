"""The speed benchmarks' systems and how they are timed, shared by `gliclass.evaluation.speed`,
`gliclass.evaluation.overhead` and `gliclass.onnx.bench`.

The system names (`SYSTEMS`, grouped as `EXACT`, `BF16`, `OFFICIALS`); `start_workers`: one worker process per
system (`gliclass.evaluation.workers`), the official ones in the official package's venv, the ONNX ones on the
model's export (`onnx_export`, cached per `onnx_cache_key`); `interleaved`: the systems take turns pass by pass, in
an order that rotates every pass (`rotate`), so no two systems share the CPU and the load of a shared machine falls
on all of them alike. `safe_ratio` and `compact` format the ratios and targets of the reports.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gliclass.evaluation.common import CACHE_DIR
from gliclass.evaluation.workers import Worker, WorkerError, official_python
from gliclass.processing import GLiClassProcessor

SYSTEMS = (
    "ours",
    "ours-compiled",
    "ours-nocache",
    "official",
    "ours-bf16",
    "ours-fast",
    "ours-fast-truncate",
    "official-bf16",
    "ours-onnx",
    "ours-onnx-int8",
    "ours-bi-cached",
    "cross-encoder",
)
EXACT = ("ours", "ours-compiled", "ours-nocache")  # fp32, scores equal to the official: the targets judge each
BF16 = ("ours-bf16", "ours-fast", "ours-fast-truncate")  # compared with official-bf16 (and the fp32 official)
OFFICIALS = ("official", "official-bf16")
OURS_VS_OFFICIAL = (*EXACT, *BF16)


def rotate(items: Sequence[str], k: int) -> list[str]:
    k %= max(len(items), 1)
    return list(items[k:]) + list(items[:k])


def onnx_cache_key(model_dir: Path) -> str:
    """What a cached ONNX export depends on: the model's files (weights, config, processor settings, the label
    tokenizer's folder), the exporter's code and the torch / onnx / onnxruntime versions. A retrained model or a
    changed exporter gets a new export."""
    import importlib.metadata as metadata

    import gliclass.onnx.common as common
    import gliclass.onnx.export as exporter
    import gliclass.onnx.quantize as quantizer

    digest = hashlib.sha256()
    # every file below the model directory (label_tokenizer/ included), by its path relative to it
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        digest.update(path.relative_to(model_dir).as_posix().encode())
        with open(path, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(block)
    for module in (common, exporter, quantizer):  # the int8 graphs are the quantiser's; common: names, inputs
        digest.update(Path(module.__file__).read_bytes())
    for package in ("torch", "onnx", "onnxruntime"):
        try:
            digest.update(f"{package}=={metadata.version(package)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{package} missing".encode())
    return digest.hexdigest()[:16]


def onnx_export(model_dir: Path) -> Path | None:
    """The model's ONNX export (fp32 graph-optimised + dynamic int8 graphs), written once under experiments/.cache
    per `onnx_cache_key`; None without onnx."""
    try:
        from gliclass.onnx import export_onnx, has_onnx_export
    except ImportError:
        return None
    out = CACHE_DIR / f"onnx-{model_dir.name}-{onnx_cache_key(model_dir)}"
    if not has_onnx_export(out):
        from gliclass.modeling import GLiClassModel

        model, processor = GLiClassModel.from_pretrained(str(model_dir)), GLiClassProcessor.from_pretrained(model_dir)
        export_onnx(model, processor, out, quantize="int8")
    return out


def start_workers(
    names: Sequence[str], model_dir: Path, bi_dir: Path, budget: int, args: argparse.Namespace
) -> dict[str, Worker]:
    workers = {}
    for name in names:
        python = official_python() if name in OFFICIALS else None
        if name in OFFICIALS and python is None:
            print(f"official venv not found (GLICLASS_OFFICIAL_PYTHON): skipping the {name} system")
            continue
        directory: Path | None = model_dir
        if name == "ours-bi-cached":
            directory = bi_dir
        elif name in ("ours-onnx", "ours-onnx-int8"):
            directory = onnx_export(model_dir)
            if directory is None:
                print("gliclass.onnx / onnxruntime unavailable: skipping the ONNX system")
                continue
        workers[name] = Worker(
            name,
            directory,
            python=python,
            threads=args.threads,
            max_length=budget,
            batch_size=1,
            pair_batch_size=args.pair_batch_size,
        )
    return workers


def interleaved(
    workers: dict[str, Worker],
    order: Sequence[str],
    request: dict[str, Any],
    passes: int,
    cap: float,
    calls: int = 1,
    warmup: int = 1,
) -> dict[str, Any]:
    """`warmup` calls each, then `passes` rounds of one timed pass per system (order rotating every round); a pass
    is `calls` back-to-back calls and records the mean seconds of one. A system whose passes add up to more than
    `cap` seconds sits out the remaining rounds."""
    seconds: dict[str, list[float]] = {name: [] for name in order}
    results: dict[str, Any] = {}
    for name in order:
        try:
            reply = workers[name].request(cmd="time", passes=0, warmup=warmup, **request)
            results[name] = {"labels_scored": reply["labels_scored"]}
        except WorkerError as err:  # one failing cell (e.g. an official crash) must not end the run
            results[name] = {"error": str(err)}
    for p in range(passes):
        for name in rotate(order, p):
            if "error" in results[name] or sum(seconds[name]) * calls > cap:
                continue
            try:
                reply = workers[name].request(cmd="time", passes=1, warmup=0, calls=calls, **request)
                seconds[name] += reply["seconds"]
            except WorkerError as err:
                results[name] = {"error": str(err)}
    for name in order:
        if "error" not in results[name]:
            results[name].update(
                examples_per_s=len(request["texts"]) / statistics.median(seconds[name]),
                passes=len(seconds[name]),
                seconds=seconds[name],
            )
    return results


def safe_ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compact(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {compact(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(compact(v) for v in value) + "]"
    return str(value)
