"""FLOP counting and the fp32 matmul peak, for the speed benchmark's % of peak (`gliclass.evaluation.speed`).

A system's % of the fp32 FLOP peak in a cell (`peak_percent`) = model FLOPs per call (`call_flops`, from the model's
shapes and the rows each system runs; `encoder_flops` per encoder row) x calls/s / the peak of square fp32 matmuls
(`matmul_peak`, `PEAK_SIZES` 1024 and 2048, with the systems' thread count).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PEAK_SIZES = (1024, 2048)  # square fp32 matmuls whose best GFLOP/s is the peak


def encoder_flops(config: dict[str, Any], tokens: int) -> float:
    """Matmul FLOPs of one BERT-style encoder row of `tokens` real tokens: per layer, the Q/K/V/output projections
    8·n·d², the feed-forward 4·n·d·f, and attention scores plus weighted sum 4·n²·d (d = hidden_size, f =
    intermediate_size; a multiply-add is 2 FLOPs). Embeddings, norms, softmax, GELU and the GLiClass head (~1%) are
    not counted."""
    d, f, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    return float(layers * (8 * tokens * d * d + 4 * tokens * d * f + 4 * tokens * tokens * d))


def call_flops(model_config: dict[str, Any], shapes: dict[str, list[int]]) -> float:
    """FLOPs of one call: every encoder row the system runs (`shapes["rows"]`, real tokens each) plus the label
    tower on every label it encodes per call (`shapes["label_rows"]`; none when served from a cache)."""
    text = sum(encoder_flops(model_config["encoder_config"], n) for n in shapes["rows"])
    labels = shapes.get("label_rows") or []
    if labels:
        label_config = model_config.get("label_model_config") or model_config["encoder_config"]
        text += sum(encoder_flops(label_config, n) for n in labels)
    return text


def matmul_peak(threads: int = 1, sizes: Sequence[int] = PEAK_SIZES, repeats: int = 3) -> dict[str, Any]:
    """The fp32 FLOP peak of this machine as the systems run it: the best GFLOP/s of square fp32 matmuls (`sizes`),
    `repeats` timed products each after a warm-up, with `threads` torch threads (restored afterwards)."""
    import time

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    by_size = {}
    try:
        for n in sizes:
            a, b = torch.randn(n, n), torch.randn(n, n)
            torch.mm(a, b)
            best = min(_timed(lambda a=a, b=b: torch.mm(a, b), time.perf_counter) for _ in range(repeats))
            by_size[str(n)] = 2 * n**3 / best / 1e9
    finally:
        torch.set_num_threads(before)
    return {"gflops": max(by_size.values()), "by_size": by_size, "threads": threads}


def _timed(fn: Any, clock: Any) -> float:
    start = clock()
    fn()
    return clock() - start


def peak_percent(flops: float | None, per_s: float | None, peak_gflops: float | None) -> float | None:
    """% of the fp32 peak a system reaches: FLOPs per call x calls per second / peak."""
    if not flops or not per_s or not peak_gflops:
        return None
    return 100.0 * flops * per_s / (peak_gflops * 1e9)
