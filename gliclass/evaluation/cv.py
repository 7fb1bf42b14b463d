"""The leave-family-out cross-validation table of a `experiment=recipe_cv` sweep (docs/recipe_cv.md).

python -m gliclass.evaluation.cv logs/train/multiruns/recipe_cv                  # <sweep dir>/cv.{md,json}
python -m gliclass.evaluation.cv logs/train/multiruns/recipe_cv --out experiments/results/recipe_cv
python -m gliclass.evaluation.cv runs/cv_baseline runs/cv_focal ... --baseline run_name=cv_baseline  # several sweeps

Several sweep directories (one per variant or per fold, as scripts/gpu/cv_batch.py runs them) make one table; a
variant's fold may appear in only one of them. With --baseline (a substring of one variant's overrides), an overview first lists every
variant's CV margin and its difference from that baseline's, measured in the same batch.

Jobs are grouped into variants by their overrides other than `fold=`; each variant's table has one row per fold: the
mean over the fold's held-out sets of macro-F1 minus `embed-sim`'s on the same rows, for the exported model
(`test/`) and for the fine-tuned weights before weight ensembling (`zeroshot_finetuned/`). The CV margin is the mean
of the fold margins; it is only given when every fold of the variant completed (a missing fold is named instead).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from gliclass.data.families import FOLDS

SYSTEMS = {"exported": "test", "fine-tuned": "zeroshot_finetuned"}
BASELINE = "embed_sim"


def fold_margins(metrics: dict[str, float], prefix: str) -> tuple[float, dict[str, tuple[float, float]]]:
    """(mean margin over embed-sim, {set: (model F1, embed-sim F1)}) for the sets of one job's metrics."""
    per_set = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == prefix and parts[2] == "f1_macro":
            base = metrics.get(f"{BASELINE}/{parts[1]}/f1_macro")
            if base is None:
                raise ValueError(f"{parts[1]}: no {BASELINE} score in the same job, so no margin")
            per_set[parts[1]] = (float(value), float(base))
    if not per_set:
        return math.nan, {}
    return sum(m - b for m, b in per_set.values()) / len(per_set), per_set


def read_sweep(sweep_dir: Path, same_if_resolved: Sequence[str] = ()) -> dict[str, dict[str, dict[str, Any]]]:
    """{variant (overrides other than the fold, joined): {fold: {status, metrics, dir, error}}}.

    `same_if_resolved`: config keys whose overrides are left out of the variant name (a fold re-run that had to pin
    a default changed since the other folds ran); `read_sweeps` then checks that every job of the variant resolved
    each such key to the same value."""
    variants: dict[str, dict[str, dict[str, Any]]] = {}
    if not sweep_dir.is_dir():
        raise SystemExit(f"{sweep_dir}: not a sweep directory")
    for job_dir in sorted(p for p in sweep_dir.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()):
        overrides = [str(o) for o in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")]
        folds = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == "fold"]
        if len(folds) != 1:
            raise SystemExit(f"{job_dir}: not a cross-validation job (its overrides name no single fold={overrides})")
        keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("fold", *same_if_resolved)]
        variant = " ".join(keep) or "(as configured)"
        resolved = {}
        if same_if_resolved:
            config = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
            resolved = {key: OmegaConf.select(config, key, default="<unset>") for key in same_if_resolved}
        result = job_dir / "result.json"
        record = json.loads(result.read_text()) if result.is_file() else {"status": "not started"}
        variants.setdefault(variant, {})[folds[0]] = {
            "status": record.get("status"),
            "metrics": record.get("metrics") or {},
            "dir": str(job_dir),
            "error": record.get("error"),
            "git_commit": record.get("git_commit"),
            "resolved": resolved,
        }
    if not variants:
        raise SystemExit(f"{sweep_dir}: no job directories (with .hydra/overrides.yaml) found")
    return variants


def summarize(variants: dict[str, dict[str, dict[str, Any]]], folds: Sequence[str] = tuple(FOLDS)) -> dict:
    out: dict[str, Any] = {}
    for variant, jobs in variants.items():
        rows, missing = {}, []
        for fold in folds:
            job = jobs.get(fold)
            if job is None or job["status"] != "completed":
                missing.append(f"{fold}: {'not run' if job is None else job['status']}")
                continue
            rows[fold] = {}
            for system, prefix in SYSTEMS.items():
                margin, per_set = fold_margins(job["metrics"], prefix)
                rows[fold][system] = {"margin": margin, "sets": per_set}
        cv = {}
        if not missing:
            for system in SYSTEMS:
                values = [rows[f][system]["margin"] for f in folds]
                cv[system] = sum(values) / len(values)
        commits = sorted({str(j.get("git_commit")) for j in jobs.values()})
        out[variant] = {"folds": rows, "missing": missing, "cv_margin": cv, "git_commits": commits}
    return out


def read_sweeps(
    sweep_dirs: Sequence[Path], same_if_resolved: Sequence[str] = ()
) -> dict[str, dict[str, dict[str, Any]]]:
    """`read_sweep` over several directories, one table: a variant's folds may come from different directories (one
    process per fold, or a re-run of a fold that failed or was stopped, which then supersedes it); the same fold
    completed in two of them is an error, as is a variant whose jobs resolved a `same_if_resolved` key differently."""
    merged: dict[str, dict[str, dict[str, Any]]] = {}
    for sweep_dir in sweep_dirs:
        for variant, jobs in read_sweep(sweep_dir, same_if_resolved).items():
            known = merged.setdefault(variant, {})
            for fold, job in jobs.items():
                if fold in known:
                    done = [j for j in (known[fold], job) if j["status"] == "completed"]
                    if len(done) != 1:
                        raise SystemExit(
                            f"{variant!r} {fold} is in more than one sweep directory (the second: {sweep_dir}), "
                            f"{'both completed' if done else 'neither completed'}"
                        )
                    # a re-run of a fold that failed or was stopped supersedes it
                    job = done[0] | {"superseded": (known[fold] if done[0] is job else job)["dir"]}
                known[fold] = job
    for variant, jobs in merged.items():
        for key in same_if_resolved:
            values = {fold: job["resolved"][key] for fold, job in jobs.items()}
            if len(set(map(str, values.values()))) > 1:
                raise SystemExit(
                    f"{variant!r}: its jobs resolved {key} differently ({values}), so they are not one variant"
                )
    return merged


def find_baseline(summary: dict, baseline: str) -> str:
    matches = [variant for variant in summary if baseline in variant.split()]
    if len(matches) != 1:
        raise SystemExit(f"--baseline {baseline!r} must name exactly one variant's override; it matches {matches}")
    return matches[0]


def overview(summary: dict, baseline: str | None) -> list[str]:
    """One row per variant: its CV margins, the difference from the baseline's, and its exported fold margins."""
    base = summary[baseline]["cv_margin"] if baseline else {}
    lines = ["| variant | exported | Δ baseline | fine-tuned | Δ baseline | " + " | ".join(FOLDS) + " |"]
    lines.append("|---|---:|---:|---:|---:|" + "---:|" * len(FOLDS))
    for variant, data in summary.items():
        cells = []
        for system in SYSTEMS:
            value = data["cv_margin"].get(system)
            cells.append("incomplete" if value is None else f"{value:+.4f}")
            delta = None if value is None or system not in base else value - base[system]
            cells.append("" if delta is None else ("—" if variant == baseline else f"{delta:+.4f}"))
        folds = [f"{data['folds'][f]['exported']['margin']:+.3f}" if f in data["folds"] else "—" for f in FOLDS]
        lines.append(f"| `{variant}` | {' | '.join(cells)} | {' | '.join(folds)} |")
    return lines + [""]


def markdown(summary: dict, baseline: str | None = None) -> str:
    lines = ["# Leave-family-out cross-validation: margin over `embed-sim` (macro-F1), docs/recipe_cv.md", ""]
    if len(summary) > 1 or baseline:
        lines += overview(summary, baseline)
    for variant, data in summary.items():
        lines += [f"## `{variant}`", "", f"commit(s): {', '.join(data['git_commits'])}", ""]
        lines += ["| fold | held-out families | exported | fine-tuned |", "|---|---|---:|---:|"]
        for fold, row in data["folds"].items():
            cells = [f"{row[s]['margin']:+.4f}" for s in SYSTEMS]
            lines.append(f"| {fold} | {', '.join(FOLDS.get(fold, ()))} | {' | '.join(cells)} |")
        if data["cv_margin"]:
            cells = [f"**{data['cv_margin'][s]:+.4f}**" for s in SYSTEMS]
            lines.append(f"| **CV margin** | mean of the folds | {' | '.join(cells)} |")
        else:
            lines.append(f"| CV margin | incomplete: {'; '.join(data['missing'])} | | |")
        lines += ["", "| set | exported | fine-tuned | embed-sim |", "|---|---:|---:|---:|"]
        for row in data["folds"].values():
            for name, (model, base) in row["exported"]["sets"].items():
                tuned = row["fine-tuned"]["sets"].get(name, (math.nan, math.nan))[0]
                lines.append(f"| {name} | {model:.4f} | {tuned:.4f} | {base:.4f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sweep_dirs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: the (first) sweep directory)")
    p.add_argument("--name", default="cv", help="file name stem (<out>/<name>.{md,json})")
    p.add_argument("--baseline", default=None, help="one override naming the baseline variant, e.g. run_name=cv_base")
    p.add_argument(
        "--same-if-resolved",
        nargs="*",
        default=[],
        metavar="KEY",
        help="leave overrides of KEY out of variant names, checking that the variant's jobs resolved KEY alike",
    )
    args = p.parse_args(argv)
    summary = summarize(read_sweeps(args.sweep_dirs, args.same_if_resolved))
    baseline = find_baseline(summary, args.baseline) if args.baseline else None
    out = args.out or args.sweep_dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (out / f"{args.name}.md").write_text(markdown(summary, baseline))
    print(markdown(summary, baseline))
    return summary


if __name__ == "__main__":
    main()
