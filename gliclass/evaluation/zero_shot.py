"""Zero-shot benchmark: macro-F1 and ECE per dataset for GLiClass and its baselines (paper Table 3 layout).

    python -m gliclass.evaluation.zero_shot --model models/default --limit 200 --out experiments/results/
    python -m gliclass.evaluation.zero_shot --model default=models/default --model edge_cpu=models/edge_cpu \
        --systems ours,embed-sim --limit 200 --out experiments/results/

Systems: `ours` (our pipeline, once per `--model`), `ours-bf16` (the same in bf16, `<name>-bf16` per model),
`embed-sim` (MiniLM sentence-embedding cosine), `cross-encoder` (pairwise NLI-style on the first checkpoint's own
backbone; untrained unless --cross-snli-pairs), `official` (the official `gliclass` package on the first
checkpoint, in its own venv; its scores are compared with that model's).

`--model` is repeatable, each `name=path` or a plain path: one plain path is reported as `ours` (as before),
several plain paths by their directory names. Every system scores the same seeded stratified rows per dataset.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from gliclass.data.benchmarks import data_root
from gliclass.data.nli import read_nli
from gliclass.evaluation.common import DEFAULT_MODEL, ModelSpec, resolve_models, run_record
from gliclass.evaluation.data import EvalSet, classification_datasets, load_eval_set
from gliclass.evaluation.metrics import evaluate_scores
from gliclass.evaluation.report import accuracy_table, markdown_table, publish
from gliclass.evaluation.systems import EmbeddingSimilarity, GLiClassSystem, PairwiseCrossEncoder, System
from gliclass.evaluation.workers import Worker, official_python
from gliclass.processing import GLiClassProcessor

SYSTEMS = ("ours", "ours-bf16", "embed-sim", "cross-encoder", "official")
BASELINES = ("embed-sim", "cross-encoder", "official")
BLOCK = 64  # texts per progress-bar step


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="[NAME=]PATH",
        help=f"GLiClass model dir, repeatable; NAME is its system name (default: {DEFAULT_MODEL}, named `ours`)",
    )
    parser.add_argument(
        "--data-dir", default=None, help="benchmark folder (default: $GLICLASS_DATA_DIR or ../shared/data)"
    )
    parser.add_argument("--datasets", default="all", help="comma list, 'all', or 'test' (datasets with a test split)")
    parser.add_argument("--limit", type=int, default=None, help="rows per dataset (seeded stratified sample)")
    parser.add_argument(
        "--whole-up-to", type=int, default=None, help="take a test split of at most this many rows whole (no --limit)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list of {list(SYSTEMS)}")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, here and in the official worker")
    parser.add_argument("--cross-snli-pairs", type=int, default=0, help="fine-tune the cross-encoder on N SNLI pairs")
    parser.add_argument("--out", default="experiments/results/", help="output folder")
    parser.add_argument("--name", default="zero_shot", help="output file stem")
    return parser.parse_args(argv)


def select_datasets(root: Path, spec: str) -> list[str]:
    found = classification_datasets(root)
    if spec == "all":
        return sorted(found)
    if spec == "test":
        return sorted(name for name, splits in found.items() if "test" in splits)
    names = [name.strip() for name in spec.split(",") if name.strip()]
    missing = [name for name in names if name not in found]
    if missing:
        raise SystemExit(f"datasets {missing} not in {root} (found {sorted(found)})")
    return names


def blocked_scores(score: Any, eval_set: EvalSet, desc: str, block: int = BLOCK, disable: bool = False) -> np.ndarray:
    """`score(texts) -> [n, C]` over blocks of texts, with a progress bar."""
    parts = []
    for start in tqdm(range(0, len(eval_set), block), desc=desc, leave=False, disable=disable):
        parts.append(np.asarray(score(eval_set.texts[start : start + block]), dtype=np.float64))
    return np.concatenate(parts) if parts else np.zeros((0, len(eval_set.label_names)))


def fitting_rows(processor: GLiClassProcessor, texts: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Rows whose text + labels fit the length budget unchanged, where our scores and the official ones must agree
    (elsewhere the official pipeline silently truncates labels and ours chunks the text / groups the labels)."""
    strings = [processor.segments(text, labels).string for text in texts]
    lengths = [len(ids) for ids in processor.tokenizer(strings, verbose=False)["input_ids"]]
    return np.array([length <= processor.budget for length in lengths], dtype=bool)


def train_cross_encoder(cross: PairwiseCrossEncoder, root: Path, pairs: int, seed: int) -> None:
    data = read_nli("validation", root)
    random.Random(seed).shuffle(data)
    data = data[:pairs]
    torch.manual_seed(seed)
    with torch.enable_grad():
        cross.train_nli([p.premise for p in data], [p.hypothesis for p in data], [p.label for p in data], seed=seed)


def bf16_name(name: str) -> str:
    return f"{name}-bf16"


def expand_systems(names: Sequence[str], models: Sequence[ModelSpec]) -> list[str]:
    """--systems in the order given, `ours` / `ours-bf16` expanded to one system per model."""
    order: list[str] = []
    for name in names:
        if name == "ours":
            order += [m.name for m in models]
        elif name == "ours-bf16":
            order += [bf16_name(m.name) for m in models]
        else:
            order.append(name)
    clashes = sorted({name for name in order if order.count(name) > 1})
    if clashes:
        raise SystemExit(f"system names {clashes} occur twice; rename the --model that produces them")
    return order


def build_systems(
    names: Sequence[str], models: Sequence[ModelSpec], args: argparse.Namespace, root: Path
) -> dict[str, System]:
    systems: dict[str, System] = {}
    for name in names:
        if name == "ours":
            for m in models:
                systems[m.name] = GLiClassSystem.from_pretrained(m.path, batch_size=args.batch_size, name=m.name)
        elif name == "ours-bf16":
            for m in models:
                systems[bf16_name(m.name)] = GLiClassSystem.from_pretrained(
                    m.path, batch_size=args.batch_size, name=bf16_name(m.name), precision="bf16"
                )
        elif name == "embed-sim":
            systems["embed-sim"] = EmbeddingSimilarity(batch_size=32)
        elif name == "cross-encoder":
            torch.manual_seed(args.seed)  # its fresh NLI head: the same whatever ran before it in this process
            cross = PairwiseCrossEncoder.from_gliclass(models[0].path)
            if args.cross_snli_pairs > 0:
                train_cross_encoder(cross, root, args.cross_snli_pairs, args.seed)
            systems["cross-encoder"] = cross
    return systems


def system_notes(
    systems: dict[str, Any], models: Sequence[ModelSpec], official: Worker | None, skipped: dict[str, str]
) -> dict[str, str]:
    notes = {}
    several = len(models) > 1
    first = f" of `{models[0].name}`" if several else ""
    for m in models:
        if m.name in systems:
            notes[m.name] = (
                f"our ZeroShotPipeline ({systems[m.name].backend}) on `{m.path}`; single-label: softmax, multi: sigmoid"
            )
        if bf16_name(m.name) in systems:
            notes[bf16_name(m.name)] = f"`{m.name}`'s pipeline with precision='bf16' (bfloat16 autocast)"
    if "embed-sim" in systems:
        notes["embed-sim"] = "MiniLM mean-pooled L2-normalised cosine; softmax(20*cos) / sigmoid(20*(cos-0.3))"
    if "cross-encoder" in systems:
        trained = systems["cross-encoder"].trained_on
        notes["cross-encoder"] = (
            f"pairwise [CLS] text [SEP] This example is {{label}}. [SEP] on the checkpoint's backbone{first} + linear "
            "NLI head, " + (f"head and backbone fine-tuned on {trained}" if trained else "UNTRAINED head (near chance)")
        )
    if official is not None:
        on = f"the checkpoint{first} (the first --model only)" if several else "the same checkpoint"
        notes["official"] = f"official gliclass==0.1.21 pipeline on {on} (own venv, subprocess)"
    notes.update({name: f"skipped: {why}" for name, why in skipped.items()})
    return notes


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    root = data_root(args.data_dir)
    names = list(dict.fromkeys(s.strip() for s in args.systems.split(",") if s.strip()))
    unknown = [s for s in names if s not in SYSTEMS]
    if unknown:
        raise SystemExit(f"unknown systems {unknown}; choose from {list(SYSTEMS)}")
    models = resolve_models(args.model, reserved=BASELINES)
    first = models[0]
    expanded = expand_systems(names, models)
    systems = build_systems(names, models, args, root)
    skipped: dict[str, str] = {}
    official = processor = None
    if "official" in names:
        python = official_python()
        if python is None:
            skipped["official"] = "no official venv (set GLICLASS_OFFICIAL_PYTHON)"
        else:
            processor = GLiClassProcessor.from_pretrained(first.path)
            official = Worker("official", first.path, python=python, threads=args.threads, max_length=processor.budget)
    order = [s for s in expanded if s in systems or (s == "official" and official is not None)]
    datasets = []
    diffs: dict[str, dict[str, Any]] = {}
    bf16: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        for name in tqdm(select_datasets(root, args.datasets), desc="datasets"):
            # one seeded stratified sample per dataset, scored by every system
            eval_set = load_eval_set(name, root, args.limit, args.seed, whole_up_to=args.whole_up_to)
            labels, multi = eval_set.label_names, eval_set.multi_label
            scores: dict[str, np.ndarray] = {}
            for system_name, system in systems.items():
                scores[system_name] = blocked_scores(
                    lambda texts, system=system, labels=labels, multi=multi: system.scores(texts, labels, multi),
                    eval_set,
                    f"{name}/{system_name}",
                )
            if official is not None:
                # batch 1: the official mean-type poolings average over padding, so its batched scores depend on
                # the batch (its bug); one text at a time is its best-case answer and the one ours must match
                def official_scores(texts: Sequence[str], labels: list[str] = labels, multi: bool = multi) -> Any:
                    reply = official.request(
                        cmd="scores", texts=list(texts), labels=labels, multi_label=multi, batch_size=1
                    )
                    return reply["scores"]

                scores["official"] = blocked_scores(official_scores, eval_set, f"{name}/official")
                if first.name in scores:
                    fits = fitting_rows(processor, eval_set.texts, labels)
                    gap = np.abs(scores[first.name] - scores["official"]).max(axis=1)
                    diffs[name] = {
                        "max_abs_diff_fitting_rows": float(gap[fits].max()) if fits.any() else None,
                        "fitting_rows": int(fits.sum()),
                        "max_abs_diff_all_rows": float(gap.max()),
                    }
            for m in models:
                if m.name in scores and bf16_name(m.name) in scores:
                    pair = decision_agreement(scores[m.name], scores[bf16_name(m.name)], multi)
                    bf16.setdefault(m.name, {})[name] = pair
            results = {
                s: evaluate_scores(scores[s], eval_set.labels, labels, multi).to_dict() for s in order if s in scores
            }
            datasets.append(
                {
                    "name": name,
                    "split": eval_set.split,
                    "n": len(eval_set),
                    "num_labels": len(labels),
                    "multi_label": multi,
                    "results": results,
                }
            )
    finally:
        if official is not None:
            official.close()
    return {
        "run": run_record(args, "gliclass.evaluation.zero_shot", {m.name: m.path for m in models}),
        "model": str(first.path),
        "model_note": first.note,
        "models": [{"name": m.name, "path": str(m.path), "note": m.note} for m in models],
        "data_dir": str(root),
        "systems": system_notes(systems, models, official, skipped),
        "order": order,
        "datasets": datasets,
        "official_model": first.name if official is not None else None,
        "official_agreement": diffs,
        "bf16_agreement": bf16,
    }


def decision_agreement(a: np.ndarray, b: np.ndarray, multi: bool) -> dict[str, Any]:
    """How often two score matrices [N, C] make the same decision (argmax; multi-label: the set >= 0.5)."""
    same = ((a >= 0.5) == (b >= 0.5)).all(axis=1) if multi else a.argmax(axis=1) == b.argmax(axis=1)
    return {
        "rows": int(len(a)),
        "same_decision": float(same.mean()) if len(a) else None,
        "max_abs_diff": float(np.abs(a - b).max()) if len(a) else None,
    }


def sci(value: float | None) -> str:
    return "—" if value is None else f"{value:.1e}"


def model_lines(result: dict[str, Any]) -> list[str]:
    """One line per --model: its system name, dir and note (results without `models` predate several models)."""
    models = result.get("models") or [{"name": "ours", "path": result["model"], "note": result["model_note"]}]
    return [f"- model `{m['name']}`: `{m['path']}`" + (f" — **{m['note']}**" if m["note"] else "") for m in models]


def render(result: dict[str, Any]) -> str:
    run = result["run"]
    lines = [
        "# Zero-shot macro-F1 (paper Table 3 layout) and ECE",
        "",
        f"- date: {run['date']}; commit {run['git_commit']}; torch {run['torch']}, {run['torch_threads']} threads",
        f"- command: `{run['command']}`",
        *model_lines(result),
        f"- data: `{result['data_dir']}`; rows per dataset: {run['args']['limit'] or 'all'} (seed {run['args']['seed']})",
        "- decision: single-label = argmax of the softmax over the dataset's labels; multi-label = sigmoid >= 0.5",
        "- ECE: 15 equal-width bins; single-label top-label ECE; multi-label marginal ECE over every (text, label)",
        "- split `train`: the dataset has no test split (training data for our default model: not a held-out score)",
        "",
        "Systems:",
        *(f"- `{name}`: {note}" for name, note in result["systems"].items()),
        "",
        accuracy_table(result["datasets"], result["order"]),
    ]
    if result["official_agreement"]:
        agreement = result["official_agreement"]
        rows = [
            [name, d["fitting_rows"], sci(d["max_abs_diff_fitting_rows"]), sci(d["max_abs_diff_all_rows"])]
            for name, d in agreement.items()
        ]
        overall = max((d["max_abs_diff_fitting_rows"] or 0.0) for d in agreement.values())
        ours = result.get("official_model") or "ours"
        lines += [
            "",
            f"## Agreement with the official package: max |score {ours} - official| = {overall:.2e} on rows that fit",
            "",
            "Rows that do not fit the 512-token budget differ by design: the official pipeline truncates the sequence"
            " end (dropping labels), ours chunks the text and groups labels so every label is scored.",
            "",
            markdown_table(["dataset", "fitting rows", "max diff (fitting)", "max diff (all rows)"], rows),
        ]
    if result.get("bf16_agreement"):
        rows = [
            [model, name, d["rows"], d["same_decision"], sci(d["max_abs_diff"])]
            for model, per_dataset in result["bf16_agreement"].items()
            for name, d in per_dataset.items()
        ]
        lines += [
            "",
            "## bf16 against fp32 (same pipeline, `precision='bf16'`)",
            "",
            markdown_table(["model", "dataset", "rows", "same decision", "max |score diff|"], rows, 3),
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = evaluate(args)
    publish(result, args.out, args.name, render)
    return result


if __name__ == "__main__":
    main()
