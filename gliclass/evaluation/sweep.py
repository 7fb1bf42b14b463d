"""A finished (or still running) Hydra multirun of run.py as one results table, with every job shown.

python -m gliclass.evaluation.sweep logs/train/multiruns/X                # <sweep dir>/summary.{md,json,png}
python -m gliclass.evaluation.sweep logs/train/multiruns/ablation_cpu --out experiments/results --name ablation

Every job of run.py writes `<job dir>/result.json` (status running/completed/failed, its overrides, metrics and
error); the sweep's own `multirun.yaml` says which jobs the command asked for. The summary lists all of them: the
zero-shot macro-F1 of each job on each evaluation set and the mean, the embed-sim baseline measured in the same jobs,
each job's training time and training throughput, its throughput at inference (the whole test loop) and its parameter
count. A job that failed shows its error; a job still running, or never started, shows as such. Writes
`<out>/<name>.json`, `<name>.md` and, for a sweep over one or two groups, `<name>.png` (a heatmap of the mean); by
default beside the sweep (`<sweep dir>/summary.*`), so summarising a sweep never replaces a committed table unless
`--out` and `--name` say so.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from gliclass.evaluation.common import run_record
from gliclass.evaluation.report import fmt, markdown_table, publish
from gliclass.evaluation.report import mean as mean_of

COMPLETED, FAILED, RUNNING, NOT_STARTED, NO_RESULT = "completed", "failed", "running", "not started", "no result"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sweep_dir", type=Path, help="the multirun directory (hydra.sweep.dir), e.g. logs/train/multiruns/X")
    p.add_argument("--out", type=Path, default=None, help="where to write the results (default: the sweep directory)")
    p.add_argument("--name", default="summary", help="file name stem of the results (<out>/<name>.{md,json,png})")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = args.sweep_dir
    return args


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def requested_jobs(sweep_dir: Path) -> tuple[list[str], list[dict[str, str]], list[str]]:
    """From `<sweep dir>/multirun.yaml`: the swept keys, every combination the command asked for (in the order of
    Hydra's basic sweeper, which numbers the jobs), and the fixed overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        raise SystemExit(f"{sweep_dir} is not a Hydra multirun directory: {path} is missing")
    task = list(OmegaConf.load(path).hydra.overrides.task)
    swept: list[tuple[str, list[str]]] = []
    fixed: list[str] = []
    for override, text in zip(OverridesParser.create().parse_overrides(task), task, strict=True):
        if override.is_sweep_override():
            swept.append((override.get_key_element(), list(override.sweep_string_iterator())))
        else:
            fixed.append(text)
    keys = [key for key, _ in swept]
    combos = [dict(zip(keys, values, strict=True)) for values in itertools.product(*(v for _, v in swept))]
    return keys, combos, fixed


def read_job(job_dir: Path, keys: Sequence[str]) -> dict[str, Any]:
    """One job directory: its swept values (from .hydra/overrides.yaml), result.json and evaluation-set order."""
    overrides = [str(o) for o in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")]
    values = {}
    for text in overrides:
        if _key(text) in keys:
            values[_key(text)] = text.split("=", 1)[1]
    job: dict[str, Any] = {"dir": str(job_dir), "values": values, "status": NO_RESULT}
    result = job_dir / "result.json"
    if result.is_file():
        record = json.loads(result.read_text())
        job |= {k: record.get(k) for k in ("status", "error", "git_commit", "started", "finished", "metrics")}
    config = job_dir / ".hydra" / "config.yaml"
    if config.is_file():
        specs = OmegaConf.load(config).get("data", {}).get("eval_datasets") or []
        job["eval_order"] = [str(spec).split(":")[0] for spec in specs]
    return job


def _per_set(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == prefix and parts[2] == "f1_macro":
            out[parts[1]] = value
    return out


def summarize(sweep_dir: Path) -> dict[str, Any]:
    """Every requested job with its status and results (see the module docstring)."""
    keys, combos, fixed = requested_jobs(sweep_dir)
    found = [read_job(d, keys) for d in sorted(sweep_dir.iterdir()) if (d / ".hydra" / "overrides.yaml").is_file()]
    by_values = {tuple(job["values"].get(k) for k in keys): job for job in found}
    jobs = []
    for combo in combos:
        job = by_values.pop(tuple(combo[k] for k in keys), None)
        jobs.append(job if job is not None else {"values": combo, "status": NOT_STARTED})
    jobs += list(by_values.values())  # directories the command did not ask for (an older sweep in the same place)
    done = [job for job in jobs if job["status"] == COMPLETED]
    if not done:
        statuses = ", ".join(f"{_label(job['values'])}: {job['status']}" for job in jobs) or "no jobs"
        raise SystemExit(f"no job of {sweep_dir} has finished, so there is nothing to summarise ({statuses})")

    order = next((job["eval_order"] for job in done if job.get("eval_order")), [])
    names = [n for n in order if any(n in _per_set(j["metrics"], "test") for j in done)]
    names += sorted({n for j in done for n in _per_set(j["metrics"], "test")} - set(names))
    embed_sim = {}
    for job in done:
        for name, value in _per_set(job["metrics"], "embed_sim").items():
            embed_sim.setdefault(name, value)
    rows = []
    for job in jobs:
        metrics = job.get("metrics") or {}
        scores = _per_set(metrics, "test")
        rows.append(
            {
                "values": job["values"],
                "status": job["status"],
                "error": job.get("error"),
                "dir": job.get("dir"),
                "git_commit": job.get("git_commit"),
                "f1_macro": {n: scores.get(n) for n in names},
                "mean": metrics.get("test/f1_macro"),
                "val_f1_macro": metrics.get("val/f1_macro_best"),
                "train_seconds": metrics.get("perf/train_seconds"),
                "train_cpu_seconds": metrics.get("perf/train_cpu_seconds"),
                "train_steps": metrics.get("perf/train_steps"),
                "train_texts_per_s": metrics.get("perf/train_texts_per_s"),
                "test_texts_per_s": metrics.get("perf/test_texts_per_s"),
                "test_texts_per_cpu_s": metrics.get("perf/test_texts_per_cpu_s"),
                "params": metrics.get("model/params"),
            }
        )
    commits = sorted({str(job.get("git_commit")) for job in done})
    return {
        "sweep_dir": str(sweep_dir),
        "swept": keys,
        "fixed_overrides": fixed,
        "datasets": names,
        "embed_sim": {
            "f1_macro": {n: embed_sim.get(n) for n in names},
            "mean": mean_of([embed_sim.get(n) for n in names]),
        },
        "jobs": rows,
        "job_commits": commits,
    }


def _label(values: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items()) or "(no swept keys)"


def render(result: Mapping[str, Any]) -> str:
    keys, names = result["swept"], result["datasets"]
    base = result["embed_sim"]
    headers = [*keys, "status", *names, "mean", "Δ embed-sim", "train min", "train CPU min", "train texts/s"]
    headers += ["test texts/s", "test texts/CPU s", "params M"]
    rows = []
    for job in result["jobs"]:
        mean = job["mean"]
        delta = mean - base["mean"] if mean is not None and base["mean"] is not None else None
        minutes = job["train_seconds"] / 60 if job["train_seconds"] is not None else None
        cpu_minutes = job.get("train_cpu_seconds") / 60 if job.get("train_cpu_seconds") is not None else None
        params = job["params"] / 1e6 if job["params"] is not None else None
        rows.append(
            [
                *(job["values"].get(k, "?") for k in keys),
                job["status"],
                *(job["f1_macro"].get(n) for n in names),
                mean,
                delta,
                minutes,
                cpu_minutes,
                job["train_texts_per_s"],
                job["test_texts_per_s"],
                job.get("test_texts_per_cpu_s"),
                params,
            ]
        )
    rows.append(
        [*("embed-sim" if i == 0 else "" for i in range(len(keys))), "baseline", *base["f1_macro"].values()]
        + [base["mean"], None, None, None, None, None, None, None]
    )
    run = result.get("run", {})
    lines = [
        f"# Sweep: {result['sweep_dir']}",
        "",
        f"Zero-shot macro-F1 per evaluation set (rows: {', '.join(keys) or 'the job'}); `embed-sim` is the backbone's "
        "mean-pooled cosine on the same rows. Training time and texts/s are the job's own `trainer.fit`; test "
        "texts/s is its whole test loop over all evaluation sets. Wall-clock figures depend on what else ran on the "
        "machine; CPU figures (the job's process time, all threads) much less.",
        "",
        f"- fixed overrides: `{' '.join(result['fixed_overrides'])}`",
        f"- commit of the jobs: {', '.join(result['job_commits'])}; summarised at {run.get('git_commit', '?')} "
        f"({run.get('date', '?')})",
        f"- command: `{run.get('command', '?')}`",
        "",
        markdown_table(headers, rows, digits=3),
    ]
    if len(keys) == 2:
        lines += ["", f"Mean macro-F1 ({keys[0]} × {keys[1]}):", "", _pivot(result)]
    problems = [job for job in result["jobs"] if job["status"] != COMPLETED]
    if problems:
        lines += ["", "Jobs that did not complete:", ""]
        for job in problems:
            detail = f": {job['error']}" if job.get("error") else ""
            lines.append(f"- {_label(job['values'])}: **{job['status']}**{detail}")
    return "\n".join(lines)


def _grid(result: Mapping[str, Any]) -> tuple[list[str], list[str], list[list[Any]]]:
    """The mean macro-F1 as a grid over the first two swept keys (one row when one key is swept)."""
    keys = result["swept"]
    first = list(dict.fromkeys(job["values"].get(keys[0]) for job in result["jobs"]))
    second = list(dict.fromkeys(job["values"].get(keys[1]) for job in result["jobs"])) if len(keys) > 1 else [""]
    cells: list[list[Any]] = [[None] * len(second) for _ in first]
    for job in result["jobs"]:
        i = first.index(job["values"].get(keys[0]))
        j = second.index(job["values"].get(keys[1])) if len(keys) > 1 else 0
        cells[i][j] = job["mean"] if job["status"] == COMPLETED else job["status"]
    return first, second, cells


def _pivot(result: Mapping[str, Any]) -> str:
    first, second, cells = _grid(result)
    keys = result["swept"]
    return markdown_table(
        [f"{keys[0]} \\ {keys[1]}", *second], [[r, *(fmt(c, 3) for c in cells[i])] for i, r in enumerate(first)]
    )


def plot(result: Mapping[str, Any], path: Path) -> Path | None:
    """A heatmap of the mean macro-F1 over the swept keys (one or two); failed or missing cells are marked."""
    if not 1 <= len(result["swept"]) <= 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    first, second, cells = _grid(result)
    values = np.array([[c if isinstance(c, float) else math.nan for c in row] for row in cells], dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(second), 1.2 + 0.7 * len(first)))
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    for i, row in enumerate(cells):
        for j, cell in enumerate(row):
            text = f"{cell:.3f}" if isinstance(cell, float) else str(cell or "—")
            ax.text(j, i, text, ha="center", va="center", color="w" if isinstance(cell, float) else "k", fontsize=9)
    keys = result["swept"]
    ax.set_xticks(range(len(second)), second)
    ax.set_yticks(range(len(first)), first)
    ax.set_ylabel(keys[0])
    if len(keys) > 1:
        ax.set_xlabel(keys[1])
    base = result["embed_sim"]["mean"]
    ax.set_title(f"mean zero-shot macro-F1 (embed-sim {base:.3f})" if base is not None else "mean macro-F1")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if not args.sweep_dir.is_dir():
        raise SystemExit(f"sweep directory {args.sweep_dir} does not exist")
    result = summarize(args.sweep_dir)
    result["run"] = run_record(args, "gliclass.evaluation.sweep")
    publish(result, args.out, args.name, render)
    plot(result, args.out / f"{args.name}.png")
    if "fold" in result.get("swept", ()):  # a leave-family-out CV sweep: its margin table too (<name>_cv.{md,json})
        from gliclass.evaluation import cv

        cv.main([str(args.sweep_dir), "--out", str(args.out), "--name", f"{args.name}_cv"])
    return result


if __name__ == "__main__":
    main()
