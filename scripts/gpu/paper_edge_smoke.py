"""One-shot GPU check of `experiment=paper_edge`: its three stages for a few hundred steps each, offline.

    python scripts/gpu/paper_edge_smoke.py [--steps 300] [--out DIR] [--device cuda|cpu] [override ...]
    bash scripts/gpu/paper_edge_smoke.sh                          # the same on the device machine, into $OUT

Nothing is downloaded. The backbone is `backbone=ettin_32m_random`: a randomly initialised ModernBERT of
ettin-encoder-32m's shape (about 32M parameters, the edge model's size). The tokenizer is the tests' 260-word
vocabulary, written to a temporary folder, and the data is synthetic: three train-only sets (single-label topics,
multi-label tags, long documents) and a held-out test set. Texts run from 4 to 400 words, and each row has 2 to 40
candidate labels. Every other setting is experiment=paper_edge's: uni-encoder, MLP scorer, focal loss, 1024 tokens,
1e-5 / 3e-5, then PPO mid-training and LoRA post-training with paper Table 1's edge preset (r 1536).

It reports, as a table on stdout and in `<out>/paper_edge_smoke.json`:
- steps per second of each stage: the median time of a training batch (the device synchronised at batch ends) and
  the whole fit's rate (validation and data loading included). Mid-training makes 3 policy updates per batch.
- the peak memory of each stage: GPU memory allocated (`torch.cuda.max_memory_allocated`), or on CPU the process's
  peak RSS.
- bf16 agreement: the pre-trained model scored in fp32 and under bf16 autocast, on the same batches. It gives the
  largest and mean |logit difference|, the largest |probability difference|, the share of label decisions
  (sigmoid >= 0.5) and of top labels (argmax) that agree (also among rows whose winner leads by a clear margin: a
  barely trained model has near-ties that any rounding flips), the relative loss difference, and the cosine between
  the fp32 and bf16 gradients.

Extra arguments are Hydra overrides for every stage, e.g. `model.compile=true`, `model.gradient_checkpointing=true`,
`model.attn_implementation=eager`, `trainer.precision=32-true`. `--backbone tiny_modernbert --steps 2 --rows 64
--device cpu` is the quick CPU run of tests/test_paper_recipes.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
VOCAB = ROOT / "tests" / "fixtures" / "tiny_vocab.txt"
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from lightning.pytorch import Callback  # noqa: E402

# batch timings of the stage being trained, filled by StepTimer (a callback the run config instantiates by name)
TIMINGS: dict[str, list[float]] = {"batch_seconds": []}


class StepTimer(Callback):
    """Wall time of every training batch, with the device synchronised at both ends (CUDA runs asynchronously)."""

    def __init__(self) -> None:
        self.started = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        _sync(pl_module.device)
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        _sync(pl_module.device)
        TIMINGS["batch_seconds"].append(time.perf_counter() - self.started)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------- offline inputs
def vocabulary_words() -> list[str]:
    """The plain words of the tests' vocabulary (no special tokens, punctuation or word pieces)."""
    words = [w.strip() for w in VOCAB.read_text().splitlines()]
    return [w for w in words if w.isalpha() and w.islower() and len(w) > 1]


def write_tokenizer(folder: Path) -> Path:
    from transformers import BertTokenizer

    BertTokenizer(vocab_file=str(VOCAB)).save_pretrained(folder)
    return folder


def write_synthetic_data(folder: Path, rows: int, seed: int = 0) -> dict[str, list[str]]:
    """Benchmark folders (`<name>/<split>.jsonl` + `labels.json`) of synthetic texts; returns each set's labels.

    A text mixes its labels' words into random filler, so training has a signal to learn (the scores only have to
    move, they are not a result)."""
    rng = random.Random(seed)
    words = vocabulary_words()
    sets = {
        "synth_topics": (words[:12], 1, (4, 60)),  # single-label, short
        "synth_tags": (words[12:40], 3, (8, 120)),  # multi-label, up to 3 true tags of 28
        "synth_docs": (words[40:48], 1, (100, 400)),  # single-label, long
    }
    labels = {}
    for name, (names, max_true, (shortest, longest)) in sets.items():
        labels[name] = names
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "labels.json").write_text(json.dumps(names))
        splits = {"train": rows, "test": max(8, rows // 4)} if name == "synth_topics" else {"train": rows}
        for split, count in splits.items():
            lines = []
            for _ in range(count):
                true = rng.sample(names, rng.randint(1, max_true))
                filler = [rng.choice(words) for _ in range(rng.randint(shortest, longest))]
                for label in true:
                    filler.insert(rng.randrange(len(filler) + 1), label)
                lines.append(json.dumps({"text": " ".join(filler), "labels": true}))
            (folder / name / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return labels


# ---------------------------------------------------------------------------------------------------- the run
def load_run_module():
    spec = importlib.util.spec_from_file_location("gliclass_run", ROOT / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose_run(args: argparse.Namespace, work: Path, data_dir: Path, tokenizer: Path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    overrides = [
        "experiment=paper_edge",
        f"backbone={args.backbone}",
        f"trainer={'gpu' if args.device == 'cuda' else 'cpu'}",
        f"trainer.max_steps={args.steps}",
        "trainer.log_every_n_steps=10",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        f"paths.log_dir={work}",
        f"paths.output_dir={work}",
        f"paths.export_dir={work}/model",
        f"paths.data_dir={data_dir}",
        "extras.print_config=false",
        *args.overrides,
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.model.backbone.tokenizer = str(tokenizer)
        # the synthetic sets in place of paper_local's (no ../shared/data, no hub here)
        cfg.data.benchmarks = ["synth_topics:train", "synth_tags:train", "synth_docs:train"]
        cfg.data.nli = []
        cfg.data.eval_datasets = ["synth_topics:test"]
        cfg.data.num_workers = args.workers
        cfg.callbacks.step_timer = {"_target_": f"{StepTimer.__module__}.StepTimer"}
        cfg.callbacks.pop("progress_bar", None)  # trainer.enable_progress_bar=false: no bar in the device log
    return cfg, overrides


def peak_memory_gib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run_stages(cfg, device: str) -> dict[str, dict[str, Any]]:
    """Each stage through run.py's `train`, as `experiment=paper_edge` chains them, with its own timings."""
    from gliclass.training.stages import chain_configs

    run = load_run_module()
    report = {}
    for name, stage in chain_configs(cfg, CONF).items():
        TIMINGS["batch_seconds"] = []
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        metrics = run.train(stage)
        batches = TIMINGS["batch_seconds"]
        steady = batches[min(10, len(batches) // 2) :] or batches  # the first batches compile and warm up
        median = statistics.median(steady) if steady else float("nan")
        updates = metrics.get("perf/train_steps", float("nan"))
        report[name] = {
            "batches": len(batches),
            "optimizer_steps": updates,
            "median_batch_seconds": median,
            "batches_per_s": 1.0 / median if median else float("nan"),
            # a mid-training batch makes several policy updates (module.ppo.num_rl_iters)
            "optimizer_steps_per_s": updates / len(batches) / median if batches and median else float("nan"),
            "fit_steps_per_s": updates / metrics["perf/train_seconds"] if metrics.get("perf/train_seconds") else None,
            "fit_texts_per_s": metrics.get("perf/train_texts_per_s"),
            "peak_memory_gib": peak_memory_gib(device),
            "train_loss": metrics.get("train/loss_epoch"),
            "test_f1_macro": metrics.get("test/f1_macro"),
            "export": stage.paths.export_dir,
        }
    return report


# ---------------------------------------------------------------------------------------------------- bf16 vs fp32
# a top label counts as clear when it leads the runner-up by more than this (logits; bf16 keeps 8 mantissa bits)
CLEAR_MARGIN = 0.05


def bf16_agreement(export: str, data_dir: Path, device: str, texts: int = 256, batch_size: int = 32) -> dict:
    """The exported model in fp32 and under bf16 autocast on the same batches (eval for scores, train for grads)."""
    from gliclass import GLiClassModel, GLiClassProcessor
    from gliclass.modeling.losses import GLiClassLoss

    model = GLiClassModel.from_pretrained(export).to(device)
    processor = GLiClassProcessor.from_pretrained(export)
    loss_fn = GLiClassLoss(classification="focal", focal_alpha=0.5, focal_gamma=2.0)
    rows = []
    for name in ("synth_topics", "synth_tags", "synth_docs"):
        labels = json.loads((data_dir / name / "labels.json").read_text())
        for line in (data_dir / name / "train.jsonl").read_text().splitlines()[: texts // 3]:
            row = json.loads(line)
            rows.append((row["text"], labels, row["labels"]))
    max_logit = sum_logit = max_prob = 0.0
    count = decisions = tops = rows_seen = clear_rows = clear_tops = 0
    loss_rel, cosines = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = processor([r[0] for r in chunk], [r[1] for r in chunk])
        batch = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
        mask = batch["labels_mask"]
        targets = torch.zeros(mask.shape, device=device)
        for i, (_, names, true) in enumerate(chunk):
            for label in true:
                targets[i, names.index(label)] = 1.0
        model.eval()
        with torch.no_grad():
            fp32 = model(**batch).logits.float()
            with torch.autocast(device_type=device, dtype=torch.bfloat16):
                bf16 = model(**batch).logits.float()
        diff = (fp32 - bf16)[mask].abs()
        max_logit, sum_logit, count = (
            max(max_logit, diff.max().item()),
            sum_logit + diff.sum().item(),
            count + diff.numel(),
        )
        max_prob = max(max_prob, (fp32.sigmoid() - bf16.sigmoid())[mask].abs().max().item())
        decisions += ((fp32 >= 0) == (bf16 >= 0))[mask].sum().item()
        low = torch.finfo(fp32.dtype).min
        same_top = fp32.masked_fill(~mask, low).argmax(-1) == bf16.masked_fill(~mask, low).argmax(-1)
        tops += same_top.sum().item()
        # rows whose fp32 winner leads by more than bf16's rounding can move it (near-ties flip by construction)
        best = fp32.masked_fill(~mask, low).topk(2, dim=-1).values
        clear = (best[:, 0] - best[:, 1]) > CLEAR_MARGIN
        clear_rows, clear_tops = clear_rows + clear.sum().item(), clear_tops + (same_top & clear).sum().item()
        rows_seen += len(chunk)
        # one training-mode backward each (dropout off, so both see the same function)
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.eval()
        grads, losses = [], []
        for autocast in (False, True):
            model.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=autocast):
                output = model(**batch)
            loss = loss_fn(output, targets)["loss"].float()
            loss.backward()
            losses.append(loss.item())
            grads.append(torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None]))
        loss_rel.append(abs(losses[1] - losses[0]) / max(abs(losses[0]), 1e-12))
        cosines.append(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0).item())
    return {
        "texts": rows_seen,
        "label_slots": count,
        "max_abs_logit_diff": max_logit,
        "mean_abs_logit_diff": sum_logit / max(count, 1),
        "max_abs_prob_diff": max_prob,
        "decision_agreement": decisions / max(count, 1),
        "top_label_agreement": tops / max(rows_seen, 1),
        "clear_top_rows": clear_rows,
        "clear_top_label_agreement": clear_tops / clear_rows if clear_rows else None,
        "max_rel_loss_diff": max(loss_rel),
        "min_grad_cosine": min(cosines),
    }


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of each stage (default 300)")
    parser.add_argument("--rows", type=int, default=4000, help="training rows of each synthetic set (default 4000)")
    parser.add_argument("--backbone", default="ettin_32m_random", help="backbone group (default ettin_32m_random)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=4, help="data loader workers (default 4)")
    parser.add_argument("--out", type=Path, default=None, help="folder of paper_edge_smoke.json (default: none)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every stage (model.compile=true, ...)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible (use --device cpu for the quick CPU run)")
    with tempfile.TemporaryDirectory(prefix="paper_edge_smoke_") as tmp:
        work = Path(tmp)
        data_dir = work / "data"
        write_synthetic_data(data_dir, args.rows)
        tokenizer = write_tokenizer(work / "tokenizer")
        cfg, overrides = compose_run(args, work / "run", data_dir, tokenizer)
        started = time.perf_counter()
        stages = run_stages(cfg, args.device)
        agreement = bf16_agreement(stages["pretrain"]["export"], data_dir, args.device)
        seconds = time.perf_counter() - started
    for stage in stages.values():
        stage.pop("export")
    report = {
        "experiment": "paper_edge",
        "overrides": overrides,
        "steps_per_stage": args.steps,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "seconds": seconds,
        "stages": stages,
        "bf16_vs_fp32": agreement,
    }
    print(summary(report))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "paper_edge_smoke.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def summary(report: dict[str, Any]) -> str:
    lines = [
        f"experiment=paper_edge on {report['device']} (torch {report['torch']}, transformers "
        f"{report['transformers']}), {report['steps_per_stage']} steps a stage, {report['seconds']:.0f} s in all",
        "| stage | optimizer steps | batches/s (median) | steps/s (fit) | texts/s (fit) | peak memory GiB | loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in report["stages"].items():
        lines.append(
            f"| {name} | {s['optimizer_steps']:.0f} | {s['batches_per_s']:.2f} | {s['fit_steps_per_s'] or 0:.2f} | "
            f"{s['fit_texts_per_s'] or 0:.1f} | {s['peak_memory_gib']:.2f} | {s['train_loss'] or float('nan'):.4f} |"
        )
    a = report["bf16_vs_fp32"]
    lines.append(
        f"bf16 vs fp32 on {a['texts']} texts ({a['label_slots']} label slots): max |logit diff| "
        f"{a['max_abs_logit_diff']:.2e}, mean {a['mean_abs_logit_diff']:.2e}, max |prob diff| "
        f"{a['max_abs_prob_diff']:.2e}, decisions agree {a['decision_agreement']:.4f}, top labels agree "
        f"{a['top_label_agreement']:.4f} ({a['clear_top_label_agreement']} on the {a['clear_top_rows']} rows with a "
        f"clear winner), max rel loss diff {a['max_rel_loss_diff']:.2e}, min grad cosine {a['min_grad_cosine']:.5f}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
