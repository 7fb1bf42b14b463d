"""Peak memory of the token-level contrastive loss: the old per-position copy against the batched matmul.

The old formulation indexed the normalised token states once per valid position (`normed[rows]`, an [M, N, D] copy
for M valid positions) and took one dot product per row; `sequence_contrastive_loss` now takes one batched matmul
[B, N, N] and gathers the valid rows. Each variant runs forward + backward in a fresh process, on all-valid token
states (M = B*T, the worst case), and reports the peak above what the inputs already hold: CUDA's
`max_memory_allocated`, or on CPU the peak resident set size (VmHWM, reset before the call).

    python scripts/bench_contrastive_memory.py                      # B=8, T=512, D=768 on CPU
    python scripts/bench_contrastive_memory.py --device cuda --length 1024 --dim 1024

Writes `experiments/results/contrastive_memory.{md,json}` only from a clean git tree (committed results must name a
commit), unless `--allow-dirty`; the table is printed either way.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from gliclass.evaluation.common import run_record  # noqa: E402
from gliclass.modeling.losses import sequence_contrastive_loss  # noqa: E402

VARIANTS = ("per-position copy (old)", "batched matmul + gather (new)")
GIB = 1024**3


def per_position_copy_loss(embeddings: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The formulation `sequence_contrastive_loss` had before: an [M, N, D] copy of the states (reference)."""
    valid = torch.ones_like(embeddings[..., 0], dtype=torch.bool) if mask is None else mask.bool()
    normed = F.normalize(embeddings.float(), p=2, dim=-1)
    rows, positions = valid.nonzero(as_tuple=True)
    if rows.numel() == 0:
        return embeddings.sum() * 0.0
    similarity = torch.einsum("md,mnd->mn", normed[rows, positions], normed[rows])
    similarity = similarity.masked_fill(~valid[rows], float("-inf"))
    return F.cross_entropy(similarity, positions)


LOSSES = dict(zip(VARIANTS, (per_position_copy_loss, sequence_contrastive_loss), strict=True))


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def measure(variant: str, batch: int, length: int, dim: int, device: str, seed: int = 0) -> dict[str, float]:
    """Forward + backward of one variant in this process: peak bytes above the inputs, seconds, loss value."""
    torch.manual_seed(seed)
    embeddings = torch.randn(batch, length, dim, device=device, requires_grad=True)
    mask = torch.ones(batch, length, dtype=torch.bool, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        base = _proc_status_bytes("VmRSS")
    start = time.perf_counter()
    loss = LOSSES[variant](embeddings, mask)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _proc_status_bytes("VmHWM") - base
    return {"peak_bytes": peak, "seconds": time.perf_counter() - start, "loss": loss.item()}


def old_copy_bytes(batch: int, length: int, dim: int) -> int:
    """Size of the old [M, N, D] fp32 copy at M = B*T (its gradient in backward is as large again)."""
    return batch * length * length * dim * 4


def run_variant(variant: str, args: argparse.Namespace) -> dict[str, float]:
    """`measure` in a fresh interpreter, so one variant's freed memory cannot hide the other's peak."""
    command = [
        sys.executable,
        __file__,
        "--worker",
        variant,
        f"--batch={args.batch}",
        f"--length={args.length}",
        f"--dim={args.dim}",
        f"--device={args.device}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed (exit {done.returncode}; -9 is the OOM killer):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(results: dict[str, dict[str, float]], args: argparse.Namespace, record: dict) -> str:
    lines = [
        "# Token-level contrastive loss: peak memory",
        "",
        f"- shape: B={args.batch}, T={args.length}, D={args.dim}, all positions valid (M = {args.batch * args.length})",
        f"- device: {args.device}; forward + backward; peak above the inputs "
        + ("(CUDA max_memory_allocated)" if args.device == "cuda" else "(peak RSS, VmHWM)"),
        f"- the old [M, N, D] fp32 copy alone: {old_copy_bytes(args.batch, args.length, args.dim) / GIB:.3f} GiB "
        "(and its gradient as much again)",
        f"- date: {record['date']}; commit {record['git_commit']}; torch {record['torch']}",
        f"- command: `{record['command']}`",
        "",
        "| formulation | peak memory (GiB) | seconds | loss |",
        "|---|---|---|---|",
    ]
    for variant, result in results.items():
        lines.append(
            f"| {variant} | {result['peak_bytes'] / GIB:.3f} | {result['seconds']:.2f} | {result['loss']:.6f} |"
        )
    if len(results) == 2:
        old, new = (results[v]["peak_bytes"] for v in VARIANTS)
        lines += ["", f"Peak memory, old / new: {old / max(new, 1):.1f}x at this shape."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "experiments" / "results")
    parser.add_argument("--allow-dirty", action="store_true", help="write the results from an uncommitted tree too")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker, args.batch, args.length, args.dim, args.device)))
        return {}
    record = run_record(args, "")
    argv = sys.argv[1:] if argv is None else argv
    record["command"] = " ".join(shlex.quote(a) for a in ["python", "scripts/bench_contrastive_memory.py", *argv])
    results = {variant: run_variant(variant, args) for variant in VARIANTS}
    text = report(results, args, record)
    print(text, end="")
    if record["git_commit"].endswith("+dirty") and not args.allow_dirty:
        print(f"not written to {args.out}: the tree has uncommitted changes (commit first, or --allow-dirty)")
        return results
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "contrastive_memory.md").write_text(text)
    payload = {"run": record, "shape": [args.batch, args.length, args.dim], "results": results}
    (args.out / "contrastive_memory.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out / 'contrastive_memory.md'} and .json")
    return results


if __name__ == "__main__":
    main()
