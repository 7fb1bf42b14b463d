"""Few-shot adaptation (paper Table 5): N examples per label from `train`, a brief fine-tune, macro-F1 on `test`.

    python -m gliclass.evaluation.few_shot --model models/default --shots 8 --limit 200 --out experiments/results/
    python -m gliclass.evaluation.few_shot --model default=models/default --model edge_cpu=models/edge_cpu ...

`--model` is repeatable (`name=path` or a plain path, named as in the zero-shot harness); every model sees the
same test rows and the same training shots. Per dataset and model the model is reloaded from disk, scored
zero-shot, fine-tuned on the sampled shots (focal loss with the checkpoint's alpha/gamma, labels shuffled per
example, encoder and head learning rates as in the official optimiser groups), optionally averaged with the
zero-shot weights (`--wise-alpha`, WiSE-FT), and scored again on the same test rows. `--prototype-weight`
(bi-encoders with the dot scorer) then also moves each label's vector towards the mean embedding of its shots
(`prototype_vectors`) and scores the test rows a third time; the table keeps the tuned-only row beside it.

Only datasets with both train and test splits qualify, unless `--test-split train` holds the test rows out of
`train` itself (the shots are then drawn from the other rows): that scores train-only datasets, e.g. to choose the
few-shot schedule on sets that the reported table does not use.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from gliclass.data.benchmarks import data_root
from gliclass.data.dataset import GLiClassCollator, GLiClassDataset
from gliclass.data.formats import Example
from gliclass.evaluation.common import DEFAULT_MODEL, resolve_models, run_record
from gliclass.evaluation.data import (
    EvalSet,
    classification_datasets,
    few_shot_indices,
    load_eval_set,
    stratified_indices,
)
from gliclass.evaluation.metrics import evaluate_scores
from gliclass.evaluation.report import markdown_table, mean, publish
from gliclass.evaluation.systems import GLiClassSystem
from gliclass.modeling import GLiClassModel
from gliclass.modeling.losses import GLiClassLoss
from gliclass.pipeline import ZeroShotPipeline, check_prototype_model
from gliclass.processing import GLiClassProcessor
from gliclass.training.optim import parameter_groups
from gliclass.training.utils import interpolate_weights, snapshot_weights

TABLE5_DATASETS = ("sst5", "emotion", "rotten_tomatoes", "banking77")  # Table 5's datasets that have a train split


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="[NAME=]PATH",
        help=f"GLiClass model dir, repeatable; NAME is its name in the table (default: {DEFAULT_MODEL})",
    )
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--datasets", default=",".join(TABLE5_DATASETS), help="comma list, or 'all' (every train+test dataset)"
    )
    parser.add_argument("--shots", type=int, default=8, help="training examples per label")
    parser.add_argument("--limit", type=int, default=None, help="test rows per dataset (seeded stratified sample)")
    parser.add_argument(
        "--whole-up-to", type=int, default=None, help="take a test split of at most this many rows whole (no --limit)"
    )
    parser.add_argument("--epochs", type=int, default=3, help="fine-tune epochs (0: no tuning, e.g. prototypes alone)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-5, help="head learning rate")
    parser.add_argument("--encoder-lr", type=float, default=2e-5, help="encoder learning rate")
    parser.add_argument(
        "--cross-entropy-coef",
        type=float,
        default=0.0,
        help="add the softmax cross-entropy term beside focal (1.0: the objective the default recipe trains with)",
    )
    parser.add_argument(
        "--wise-alpha",
        type=float,
        default=1.0,
        help="weight-space ensemble of the tuned and zero-shot weights: alpha*tuned + (1-alpha)*zero-shot (1: tuned)",
    )
    parser.add_argument(
        "--prototype-weight",
        type=float,
        default=0.0,
        help="after tuning, each label's vector = (1-w) x its own + w x the mean of its shots' text embeddings "
        "(bi-encoder, dot scorer; 0: off)",
    )
    parser.add_argument(
        "--test-split",
        default="test",
        help="the split scored; 'train' holds the test rows out of train and draws the shots from the other rows",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="experiments/results/")
    parser.add_argument("--name", default="few_shot")
    return parser.parse_args(argv)


def select_datasets(root: Path, spec: str, test_split: str = "test") -> list[str]:
    needed = {"train", test_split}
    both = {name for name, splits in classification_datasets(root).items() if needed <= set(splits)}
    names = sorted(both) if spec == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    missing = [name for name in names if name not in both]
    if missing:
        raise SystemExit(f"{missing} lack a split of {sorted(needed)} in {root}; few-shot needs them ({sorted(both)})")
    return names


def scored_and_shot_rows(
    name: str, root: Path, limit: int | None, seed: int, test_split: str, whole_up_to: int | None
) -> tuple[EvalSet, EvalSet]:
    """The scored rows and the rows the shots come from. With `test_split="train"` both come from `train` and are
    disjoint: the test rows are a stratified sample, and the shots are drawn from the rest."""
    if test_split != "train":
        test = load_eval_set(name, root, limit, seed, split=test_split, whole_up_to=whole_up_to)
        return test, load_eval_set(name, root, split="train")
    full = load_eval_set(name, root, split="train")
    if limit is None or limit >= len(full):
        raise SystemExit(
            f"{name}: --test-split train needs a --limit below its {len(full)} train rows (shots need the rest)"
        )
    held = set(stratified_indices(full.labels, limit, seed))
    return full.subset(sorted(held)), full.subset([i for i in range(len(full)) if i not in held])


def shot_examples(train: EvalSet, shots: int, seed: int) -> list[Example]:
    """`shots` rows per label, every dataset label a candidate (shuffled per access by the dataset)."""
    picked = few_shot_indices(train.labels, train.label_names, shots, seed)
    return [
        Example(train.texts[i], list(train.label_names), dict.fromkeys(train.labels[i], 1.0), source=f"train:{i}")
        for i in picked
    ]


def fine_tune(
    model: GLiClassModel, processor: GLiClassProcessor, examples: list[Example], args: argparse.Namespace
) -> list[float]:
    """A plain torch loop; returns the loss of every step."""
    torch.manual_seed(args.seed)
    dataset = GLiClassDataset(examples, processor, shuffle_labels=True, seed=args.seed)
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=GLiClassCollator(processor),
        generator=torch.Generator().manual_seed(args.seed),
    )
    loss_fn = GLiClassLoss(
        "focal",
        focal_alpha=model.config.focal_loss_alpha,
        focal_gamma=model.config.focal_loss_gamma,
        cross_entropy_coef=args.cross_entropy_coef,
    )
    optimizer = torch.optim.AdamW(parameter_groups(model, args.encoder_lr), lr=args.lr)
    model.train()
    losses = []
    for _ in range(args.epochs):
        for batch in loader:
            inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "targets"}
            loss = loss_fn(model(**inputs), batch["targets"])["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    model.eval()
    return losses


def check_prototypes(config: Any, name: str) -> None:
    """Before any tuning: prototypes need a model whose label scores are dot products (`check_prototype_model`)."""
    try:
        check_prototype_model(config)
    except ValueError as error:
        raise SystemExit(f"--prototype-weight: model {name!r}: {error}") from None


def prototype_vectors(
    model: GLiClassModel,
    processor: GLiClassProcessor,
    examples: list[Example],
    label_names: Sequence[str],
    weight: float,
    batch_size: int = 8,
) -> dict[str, torch.Tensor]:
    """`ZeroShotPipeline.label_prototypes` from the shots: each label's vector moved towards the mean unit-length
    embedding of the shots where it is positive. Labels without a shot keep their own vector (left out)."""
    texts = {name: [e.text for e in examples if e.true_labels.get(name, 0.0) > 0] for name in label_names}
    shot = {name: rows for name, rows in texts.items() if rows}
    return ZeroShotPipeline(model, processor, batch_size=batch_size).label_prototypes(shot, weight)


def score(
    model: GLiClassModel,
    processor: GLiClassProcessor,
    test: EvalSet,
    batch_size: int,
    label_vectors: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    system = GLiClassSystem(model, processor, batch_size=batch_size)  # a fresh pipeline: no stale label cache
    if label_vectors:
        system.pipe.set_label_vectors(label_vectors)
    scores = system.scores(test.texts, test.label_names, test.multi_label)
    return evaluate_scores(scores, test.labels, test.label_names, test.multi_label).to_dict()


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not 0.0 <= args.wise_alpha <= 1.0:  # before any model loads or tunes
        raise SystemExit(f"--wise-alpha must be in [0, 1], got {args.wise_alpha}")
    if args.epochs < 0:
        raise SystemExit(f"--epochs must be >= 0, got {args.epochs}")
    if not 0.0 <= args.prototype_weight <= 1.0:
        raise SystemExit(f"--prototype-weight must be in [0, 1], got {args.prototype_weight}")
    torch.set_num_threads(args.threads)
    root = data_root(args.data_dir)
    models = resolve_models(args.model)
    processors = {m.name: GLiClassProcessor.from_pretrained(m.path) for m in models}
    if args.prototype_weight > 0:
        for m in models:
            check_prototypes(processors[m.name].config, m.name)
    rows = []
    for name in select_datasets(root, args.datasets, args.test_split):
        # one test sample and one set of shots per dataset, shared by every model
        test, train = scored_and_shot_rows(name, root, args.limit, args.seed, args.test_split, args.whole_up_to)
        examples = shot_examples(train, args.shots, args.seed)
        for m in models:
            processor = processors[m.name]
            model = GLiClassModel.from_pretrained(str(m.path)).eval()
            zero = score(model, processor, test, args.batch_size)
            start = time.perf_counter()
            zero_weights = snapshot_weights(model) if args.wise_alpha < 1.0 else None
            losses = fine_tune(model, processor, examples, args)
            if zero_weights is not None:
                interpolate_weights(model, zero_weights, args.wise_alpha)
            tuned_s = time.perf_counter() - start
            few = score(model, processor, test, args.batch_size)
            tuned = None
            if args.prototype_weight > 0:
                vectors = prototype_vectors(
                    model, processor, examples, test.label_names, args.prototype_weight, args.batch_size
                )
                tuned, few = few, score(model, processor, test, args.batch_size, vectors)
            rows.append(
                {
                    "name": name,
                    "model": m.name,
                    "n_test": len(test),
                    "n_train": len(examples),
                    "num_labels": len(test.label_names),
                    "zero_shot": zero,
                    "few_shot": few,
                    "fine_tune_only": tuned,  # with --prototype-weight: the tuned model before the prototypes
                    "fine_tune_seconds": tuned_s,
                    "first_loss": losses[0] if losses else None,
                    "last_loss": losses[-1] if losses else None,
                }
            )
            who = f" [{m.name}]" if len(models) > 1 else ""
            print(f"{name}{who}: zero-shot {zero['macro_f1']:.4f} -> {args.shots}-shot {few['macro_f1']:.4f}")
    return {
        "run": run_record(args, "gliclass.evaluation.few_shot", {m.name: m.path for m in models}),
        "model": str(models[0].path),
        "model_note": models[0].note,
        "models": [{"name": m.name, "path": str(m.path), "note": m.note} for m in models],
        "data_dir": str(root),
        "datasets": rows,
    }


def render(result: dict[str, Any]) -> str:
    run_info, args = result["run"], result["run"]["args"]
    rows = result["datasets"]
    models = result.get("models") or [{"name": "ours", "path": result["model"], "note": result["model_note"]}]
    several = len(models) > 1
    names = list(dict.fromkeys(d["name"] for d in rows))
    headers = [*(["Model"] if several else []), "Examples per label", *names, "Avg"]
    table_rows = []
    for m in models:
        mine = {d["name"]: d for d in rows if d.get("model", m["name"]) == m["name"]}
        protos, tuned = args.get("prototype_weight", 0.0) > 0, args["epochs"] > 0
        few_label = args["shots"]
        if protos:
            few_label = f"{args['shots']} ({'tuned + prototypes' if tuned else 'prototypes, no tuning'})"
        only = [(f"{args['shots']} (tuned only)", "fine_tune_only")] if protos and tuned else []
        for shots, key in ((0, "zero_shot"), *only, (few_label, "few_shot")):
            f1 = [mine[n][key]["macro_f1"] if n in mine else None for n in names]
            table_rows.append([*([m["name"]] if several else []), shots, *f1, mean(f1)])
    table = markdown_table(headers, table_rows)
    details = markdown_table(
        [
            *(["model"] if several else []),
            "dataset",
            "labels",
            "train shots",
            "test rows",
            "ECE 0-shot",
            "ECE few-shot",
            "tune s",
            "loss first→last",
        ],
        [
            [
                *([d.get("model")] if several else []),
                d["name"],
                d["num_labels"],
                d["n_train"],
                d["n_test"],
                d["zero_shot"]["ece"],
                d["few_shot"]["ece"],
                d["fine_tune_seconds"],
                f"{d['first_loss']:.4f}→{d['last_loss']:.4f}" if d["first_loss"] is not None else "—",
            ]
            for d in rows
        ],
    )
    model_lines = [
        f"- model{' `' + m['name'] + '`' if several else ''}: `{m['path']}`"
        + (f" — **{m['note']}**" if m["note"] else "")
        for m in models
    ]
    return "\n".join(
        [
            "# Zero-shot vs few-shot macro-F1 (paper Table 5 layout)",
            "",
            f"- date: {run_info['date']}; commit {run_info['git_commit']}",
            f"- command: `{run_info['command']}`",
            *model_lines,
            f"- shots: {args['shots']} per label from `train` (seed {args['seed']}); fine-tune {args['epochs']} epochs, "
            f"batch {args['batch_size']}, lr head {args['lr']} / encoder {args['encoder_lr']}, focal loss"
            + (f" + {ce} x softmax cross-entropy" if (ce := args.get("cross_entropy_coef", 0.0)) else "")
            + (f"; weights {wa} x tuned + {1 - wa:g} x zero-shot" if (wa := args.get("wise_alpha", 1.0)) < 1.0 else "")
            + (
                f"; label vectors {1 - pw:g} x own + {pw:g} x mean shot embedding (prototypes)"
                if (pw := args.get("prototype_weight", 0.0)) > 0
                else ""
            )
            + f"; test rows: {args['limit'] or 'all'} per dataset of `{args.get('test_split', 'test')}` "
            f"(stratified, seed {args['seed']}"
            + ("; the shots come from the other rows)" if args.get("test_split") == "train" else ")")
            + (f", whole where a test split has at most {args['whole_up_to']}" if args.get("whole_up_to") else ""),
            "",
            table,
            "",
            details,
        ]
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    publish(result, args.out, args.name, render)
    return result


if __name__ == "__main__":
    main()
