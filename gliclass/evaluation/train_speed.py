"""Training throughput: `python run.py` against the official package's trainer, side by side (issue 13 item 6).

    python -m gliclass.evaluation.train_speed [--steps 60] [--out experiments/results]

Both trainers get the same training set, the same starting model, the same sequence budget and the same objective:
- data: `--rows` rows sampled (seeded) from the zero-shot training mix of conf/data/zeroshot.yaml (its 17 train-only
  datasets, with their negative sampling), written once as an official-format JSON list. Only rows whose whole
  sequence (text and every label) fits `--max-length` are kept, so neither trainer cuts anything: the official one
  would cut labels off the end, ours would trim negatives.
- model: the offline MiniLM backbone as a uni-encoder (`--arch`) with the official defaults that both packages read
  the same way (first-token pooling, `<<LABEL>>`-token label vectors, the official spans), saved once in the official
  layout; each trainer loads that directory.
- objective: the official sigmoid focal loss (alpha 0.5, gamma 2, mean over real label slots; ours is `loss=focal`),
  AdamW with the backbone at `--encoder-lr` and the head at `--lr`, weight decay 0.01, linear schedule with 5%
  warmup, gradient clipping at 1.0, batch `--batch-size`, `--steps` optimiser steps, labels shuffled per row.
  Official data augmentation is off (ours has none).
- each trainer runs alone in its own process with `--threads` threads, one after the other (official first):
  the official `gliclass.training.Trainer` (a transformers Trainer) with its own dataset and collator, in the
  official venv; ours is `python run.py` with Hydra overrides (no checkpoints, validation, tests or export).

Timing: each trainer records `time.perf_counter()` when its training loop starts (HF `on_train_begin`, Lightning
`on_train_start`, after the model, data and optimiser are set up) and at the end of every optimiser step (HF
`on_step_end`, Lightning `on_train_batch_end`). The training seconds are last step end minus loop start: batch
loading and tokenisation, forward, backward, clipping, optimiser and scheduler steps and per-step logging are in it;
start-up, model loading and everything after the last step are not. Examples/s = steps x batch / seconds.

Losses: each step's training loss (a per-slot mean, combined over the first and last 20 steps weighted by label
slots), and the loss of `--heldout` other rows of the mix (labels in file order, eval mode) before the first step and
after the last one, outside the timed window. Equal values before training show that both start from the same model
and objective; the values after training are the "same loss curve" check (within `--loss-tolerance`, relative).
Length-grouped batches change which rows train together, so the per-step curves differ in shape; the held-out loss
compares what was learnt.

Outputs `train_speed.{json,md,png}` under `--out`: the ratio ours/official (wall and CPU seconds), the loss curves,
and whether the targets hold (>= 1.5x the official examples/s; the held-out loss after training within tolerance).

The top of this file imports only the standard library: the official side runs it as a script with the official
package's own interpreter, where `import gliclass` must find the official package.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
NAME = "train_speed"
TARGET_RATIO = 1.5
ZEROSHOT_DATA = REPO_ROOT / "conf" / "data" / "zeroshot.yaml"
# the model both trainers start from: official defaults that both packages read identically
MODEL_CONFIG: dict[str, Any] = {
    "pooling_strategy": "first",
    "class_token_pooling": "first",
    "scorer_type": "simple",
    "exact_feature_spans": False,
    # the official model computes its focal loss for multi-label problems only
    "problem_type": "multi_label_classification",
}
CURVE_WINDOW = 20


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="optimiser steps of each trainer")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rows", type=int, default=480, help="training rows (sampled from the zero-shot mix)")
    parser.add_argument("--heldout", type=int, default=64, help="rows scored before and after training")
    parser.add_argument("--arch", default="uni-encoder", choices=["uni-encoder", "bi-encoder"])
    parser.add_argument("--encoder-lr", type=float, default=3e-5)
    parser.add_argument("--lr", type=float, default=2e-4, help="learning rate of the head")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--loss-tolerance", type=float, default=0.15, help="relative, held-out loss after training")
    parser.add_argument("--systems", default="official,ours", help="comma-separated: official, ours")
    parser.add_argument("--overrides", default="", help="extra Hydra overrides for our run.py (space-separated)")
    parser.add_argument("--data-dir", default=None, help="the benchmark folders (default: ../shared/data)")
    parser.add_argument("--work-dir", default=None, help="where the data, model and runs go (default: a temp dir)")
    parser.add_argument("--out", default=str(REPO_ROOT / "experiments" / "results"))
    parser.add_argument("--name", default=NAME)
    args = parser.parse_args(argv)
    if args.steps < 2 or args.batch_size < 1 or args.rows < args.batch_size or args.heldout < 1:
        raise SystemExit("--steps must be >= 2, --batch-size and --heldout >= 1, and --rows >= --batch-size")
    systems = [s for s in args.systems.split(",") if s]
    if not systems or set(systems) - {"official", "ours"}:
        raise SystemExit(f"--systems {args.systems!r}: choose from official, ours")
    if args.arch != "uni-encoder" and "official" in systems:
        raise SystemExit(f"--arch {args.arch}: the official side is set up for the uni-encoder; use --systems ours")
    args.systems = systems
    return args


# ------------------------------------------------------------------------------------------------ inputs
def make_training_set(
    path: Path,
    heldout_path: Path,
    rows: int,
    heldout: int,
    max_length: int,
    seed: int,
    data_dir: str | None,
    processor: Any,
) -> dict[str, Any]:
    """`rows` rows of the zero-shot training mix whose whole sequence fits `max_length`, as an official JSON list,
    and `heldout` other such rows (scored before and after training, never trained on).

    Returns counts for the report (rows of the mix, rows that fit, token lengths of the chosen rows)."""
    from omegaconf import OmegaConf

    from gliclass.data.datamodule import GLiClassDataModule
    from gliclass.data.formats import write_training_file

    spec = OmegaConf.load(ZEROSHOT_DATA)
    module = GLiClassDataModule(
        processor=processor,
        benchmarks=list(spec.benchmarks),
        min_negatives=spec.min_negatives,
        max_negatives=spec.max_negatives,
        max_candidates=spec.max_candidates,
        max_foreign_negatives=spec.max_foreign_negatives,
        data_dir=data_dir,
        seed=seed,
    )
    mix = module.build_mix()
    lengths = sequence_lengths(processor, mix)
    fitting = [i for i, n in enumerate(lengths) if n <= processor.budget]
    if len(fitting) < rows + heldout:
        raise ValueError(f"only {len(fitting)} rows of the mix fit max_length={max_length}; asked for {rows + heldout}")
    drawn = random.Random(f"train_speed:{seed}").sample(fitting, rows + heldout)
    chosen, kept_out = drawn[:rows], drawn[rows:]
    write_training_file([mix[i] for i in chosen], path)
    write_training_file([mix[i] for i in kept_out], heldout_path)
    picked = sorted(lengths[i] for i in chosen)
    return {
        "mix_rows": len(mix),
        "fitting_rows": len(fitting),
        "rows": rows,
        "heldout_rows": heldout,
        "tokens_median": picked[len(picked) // 2],
        "tokens_p90": picked[int(0.9 * (len(picked) - 1))],
        "tokens_max": picked[-1],
        "datasets": sorted({str(mix[i].meta.get("dataset")) for i in chosen}),
    }


def sequence_lengths(processor: Any, examples: Sequence[Any]) -> list[int]:
    """Untruncated token count of each example's text-encoder sequence (text and labels, special tokens)."""
    strings = [processor.segments(e.text, e.all_labels, e.prompt, e.examples).string for e in examples]
    return [len(ids) for ids in processor.tokenizer(strings, verbose=False)["input_ids"]]


def make_model(out_dir: Path, architecture: str, max_length: int) -> Any:
    """The starting model (seeded), saved in the official layout; returns its processor."""
    import torch

    from gliclass import build_model

    torch.manual_seed(0)
    model, processor = build_model(
        "minilm", architecture_type=architecture, max_length=max_length, head_init="random", **MODEL_CONFIG
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return processor


# ------------------------------------------------------------------------------------------------ runners
def child_env(threads: int) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "PYTHONWARNINGS": "ignore",
    }


def run_child(command: list[str], threads: int, log_path: Path) -> float:
    """Run a trainer process to completion (its output to `log_path`); wall seconds of the whole process."""
    started = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.run(command, cwd=REPO_ROOT, env=child_env(threads), stdout=log, stderr=subprocess.STDOUT)
    if code.returncode != 0:
        tail = log_path.read_text()[-4000:]
        raise RuntimeError(f"{command[0]} ... exited with code {code.returncode}; log {log_path}:\n{tail}")
    return time.perf_counter() - started


def ours_command(
    args: argparse.Namespace, data: Path, heldout: Path, model: Path, run_dir: Path, record: Path
) -> list[str]:
    """`python run.py` training the saved model on the JSON file, timed by `step_timer` (a Hydra callback)."""
    overrides = [
        f"hydra.run.dir={run_dir}",
        f"run_name={NAME}",
        "model._target_=gliclass.training.stages.build_model_and_processor_from",
        f"+model.init_from={model}",
        f"model.max_length={args.max_length}",
        "loss=focal",
        f"+data.train_files=[{data}]",
        "data.benchmarks=[]",
        "data.nli=[]",
        "data.eval_datasets=[]",
        "data.val_fraction=0.0",
        f"data.batch_size={args.batch_size}",
        f"optim.encoder_lr={args.encoder_lr}",
        f"optim.lr={args.lr}",
        f"seed={args.seed}",
        f"trainer.max_steps={args.steps}",
        "trainer.max_epochs=-1",
        "train=true",
        "test=false",
        "eval_untrained=false",
        "eval_embed_sim=false",
        "export=false",
        "weight_ensemble_alpha=1.0",
        "callbacks.model_checkpoint=null",
        "+trainer.enable_checkpointing=false",
        "extras.print_config=false",
        "+callbacks.step_timer._target_=gliclass.evaluation.train_speed.step_timer",
        f"+callbacks.step_timer.path={record}",
        f"+callbacks.step_timer.heldout={heldout}",
        f"+callbacks.step_timer.batch_size={args.batch_size}",
        *args.overrides.split(),
    ]
    return [sys.executable, str(REPO_ROOT / "run.py"), *overrides]


def official_command(
    args: argparse.Namespace, python: str, data: Path, heldout: Path, model: Path, run_dir: Path, record: Path
) -> list[str]:
    return [
        python,
        str(Path(__file__).resolve()),
        "--official-trainer",
        f"--data={data}",
        f"--heldout={heldout}",
        f"--model={model}",
        f"--run-dir={run_dir}",
        f"--record={record}",
        f"--steps={args.steps}",
        f"--batch-size={args.batch_size}",
        f"--max-length={args.max_length}",
        f"--encoder-lr={args.encoder_lr}",
        f"--lr={args.lr}",
        f"--threads={args.threads}",
        f"--seed={args.seed}",
    ]


def step_timer(path: str, heldout: str | None = None, batch_size: int = 16) -> Any:
    """A Lightning callback for our run.py (a Hydra `callbacks` entry): step-end clocks, losses and batch shapes,
    written to `path` (JSON) when training ends; with `heldout` (a training-format file), the loss of those rows
    before the first step and after the last one (outside the timed window)."""
    import torch
    from lightning.pytorch import Callback

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.record = Record()
            self.heldout_start: float | None = None

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            if heldout is not None:
                self.heldout_start = _our_heldout_loss(pl_module, trainer.datamodule.processor, heldout, batch_size)
            self.record.begin()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            self.record.step(loss, batch["attention_mask"], batch["labels_mask"].sum())

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            end = None
            if heldout is not None:
                end = _our_heldout_loss(pl_module, trainer.datamodule.processor, heldout, batch_size)
            self.record.write(path, self.heldout_start, end)

    del torch  # imported to fail early outside our venv
    return StepTimer()


def _our_heldout_loss(pl_module: Any, processor: Any, rows_path: str, batch_size: int) -> float:
    """Mean focal loss per label slot over the rows (labels in file order), eval mode, no gradients."""
    import torch

    from gliclass.data.formats import read_training_file
    from gliclass.training.module import model_inputs

    examples = read_training_file(rows_path)
    was_training = pl_module.training
    pl_module.eval()
    total = slots = 0.0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            part = examples[start : start + batch_size]
            batch = processor([e.text for e in part], [e.all_labels for e in part])
            targets = torch.zeros(batch["labels_mask"].shape)
            for row, example in enumerate(part):
                targets[row, : len(example.all_labels)] = torch.tensor(example.targets())
            output = pl_module.model(**model_inputs(batch))
            count = float(batch["labels_mask"].sum())
            total += float(pl_module.loss(output, targets)["loss"]) * count
            slots += count
    pl_module.train(was_training)
    return total / slots


def clocks() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads): CPU time is less sensitive to other jobs."""
    return time.perf_counter(), time.process_time()


class Record:
    """What one trainer reports: clocks at the loop's start and each step's end, and per step the loss, the padded
    batch shape, its real tokens and label slots (tensors kept until the end: no sync inside the timed loop)."""

    def __init__(self) -> None:
        self.start = (0.0, 0.0)
        self.ends: list[tuple[float, float]] = []
        self.losses: list[Any] = []
        self.shapes: list[list[int]] = []
        self.tokens: list[Any] = []
        self.slots: list[Any] = []

    def begin(self) -> None:
        self.start = clocks()

    def step(self, loss: Any, attention_mask: Any, slots: Any) -> None:
        self.ends.append(clocks())
        self.losses.append(loss.detach())
        self.shapes.append(list(attention_mask.shape))
        self.tokens.append(attention_mask.sum())
        self.slots.append(slots)

    def write(self, path: str, heldout_start: float | None, heldout_end: float | None) -> None:
        record = {
            "step_end_s": [end[0] - self.start[0] for end in self.ends],
            "step_end_cpu_s": [end[1] - self.start[1] for end in self.ends],
            "losses": [float(loss) for loss in self.losses],
            "batch_shapes": self.shapes,
            "tokens": [int(n) for n in self.tokens],
            "label_slots": [int(n) for n in self.slots],
            "heldout_loss_start": heldout_start,
            "heldout_loss_end": heldout_end,
        }
        Path(path).write_text(json.dumps(record) + "\n")


# ------------------------------------------------------------------------------------------------ official side
def official_trainer(argv: Sequence[str]) -> None:
    """The official trainer on the JSON file (run with the official package's interpreter)."""
    parser = argparse.ArgumentParser()
    for flag in ("--data", "--heldout", "--model", "--run-dir", "--record"):
        parser.add_argument(flag, required=True)
    for flag in ("--steps", "--batch-size", "--max-length", "--threads", "--seed"):
        parser.add_argument(flag, type=int, required=True)
    for flag in ("--encoder-lr", "--lr"):
        parser.add_argument(flag, type=float, required=True)
    args = parser.parse_args(argv)
    # the script's folder and the repository must not shadow the official package
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here and not _inside_repo(p)]

    import torch
    from gliclass.data_processing import AugmentationConfig, DataCollatorWithPadding, GLiClassDataset
    from transformers import AutoTokenizer, TrainerCallback

    import gliclass
    from gliclass import GLiClassModel
    from gliclass.training import Trainer, TrainingArguments

    if _inside_repo(gliclass.__file__):
        raise SystemExit(f"refusing to run: imported this repository's gliclass ({gliclass.__file__})")
    torch.set_num_threads(args.threads)
    model = GLiClassModel.from_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    config = model.config
    if config.architecture_type != "uni-encoder":
        raise SystemExit(f"the official side runs uni-encoders here, got {config.architecture_type}")

    def dataset(path: str, shuffle: bool) -> Any:
        return GLiClassDataset(
            json.loads(Path(path).read_text()),
            tokenizer,
            AugmentationConfig(enabled=False),  # ours has no augmentation: the same rows for both
            max_length=args.max_length,
            problem_type="multi_label_classification",
            architecture_type=config.architecture_type,
            prompt_first=config.prompt_first,
            shuffle_labels=shuffle,
        )

    collator = DataCollatorWithPadding(device="cpu", config=config)
    heldout = dataset(args.heldout, shuffle=False)

    def heldout_loss() -> float:
        model.eval()
        total = slots = 0.0
        with torch.no_grad():
            for start in range(0, len(heldout), args.batch_size):
                batch = collator([heldout[i] for i in range(start, min(start + args.batch_size, len(heldout)))])
                count = float(sum(len(labels) for labels in batch.pop("labels_text")))
                batch.pop("input_texts")
                total += float(model(**batch).loss) * count
                slots += count
        model.train()
        return total / slots

    heldout_start = heldout_loss()
    record = Record()

    class Timer(TrainerCallback):
        def on_train_begin(self, *unused: Any, **kwargs: Any) -> None:
            record.begin()

    class RecordingTrainer(Trainer):
        def training_step(self, model: Any, inputs: dict[str, Any], *rest: Any, **kwargs: Any) -> Any:
            mask, slots = inputs["attention_mask"], sum(len(labels) for labels in inputs["labels_text"])
            loss = super().training_step(model, inputs, *rest, **kwargs)
            self.step_stats = (loss, mask, slots)  # recorded at the step's end, after the optimiser step
            return loss

    class StepEnd(TrainerCallback):
        def on_step_end(self, *unused: Any, **kwargs: Any) -> None:
            loss, mask, slots = trainer.step_stats
            record.step(loss, mask, torch.tensor(slots))

    training_args = TrainingArguments(
        output_dir=args.run_dir,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.encoder_lr,
        others_lr=args.lr,
        weight_decay=0.01,
        others_weight_decay=0.01,
        lr_scheduler_type="linear",
        warmup_steps=0.05,
        max_grad_norm=1.0,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        seed=args.seed,
    )
    trainer = RecordingTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset(args.data, shuffle=True),
        data_collator=collator,
        callbacks=[Timer(), StepEnd()],
    )
    trainer.train()
    record.write(args.record, heldout_start, heldout_loss())


def _inside_repo(entry: str) -> bool:
    """A path of this repository's code; the running interpreter's own venv (e.g. <repo>/.venv-official) is not."""
    path = Path(entry or ".").resolve()
    return path.is_relative_to(REPO_ROOT) and not path.is_relative_to(Path(sys.prefix).resolve())


# ------------------------------------------------------------------------------------------------ report
def slot_mean(losses: Sequence[float], slots: Sequence[int]) -> float:
    """Mean loss per label slot over steps (each step's loss is already a per-slot mean): batches of few or many
    labels weigh by their slots, so length-grouped and random batches compare on the same footing."""
    return sum(loss * n for loss, n in zip(losses, slots, strict=True)) / sum(slots)


def summarise(record: dict[str, Any], batch_size: int) -> dict[str, Any]:
    ends, cpu, losses, slots = record["step_end_s"], record["step_end_cpu_s"], record["losses"], record["label_slots"]
    steps = len(ends)
    window = min(CURVE_WINDOW, steps)
    tokens = sum(record["tokens"])
    padded = sum(shape[0] * shape[1] for shape in record["batch_shapes"])
    return {
        "steps": steps,
        "train_seconds": ends[-1],
        "examples_per_s": steps * batch_size / ends[-1],
        "steady_examples_per_s": (steps - 1) * batch_size / (ends[-1] - ends[0]) if steps > 1 else None,
        "train_cpu_seconds": cpu[-1],
        "examples_per_cpu_s": steps * batch_size / cpu[-1],
        "loss_first": slot_mean(losses[:window], slots[:window]),
        "loss_last": slot_mean(losses[-window:], slots[-window:]),
        "heldout_loss_start": record["heldout_loss_start"],
        "heldout_loss_end": record["heldout_loss_end"],
        "padding_fraction": 1 - tokens / padded if padded else None,
        "mean_padded_length": statistics.fmean(shape[1] for shape in record["batch_shapes"]),
    }


def verdicts(runs: dict[str, Any], tolerance: float) -> dict[str, Any]:
    if not {"ours", "official"} <= runs.keys():
        return {}
    ours, official = runs["ours"]["summary"], runs["official"]["summary"]
    ratio = ours["examples_per_s"] / official["examples_per_s"]
    gap = abs(ours["heldout_loss_end"] - official["heldout_loss_end"]) / official["heldout_loss_end"]
    return {
        "ratio": ratio,
        "steady_ratio": ours["steady_examples_per_s"] / official["steady_examples_per_s"],
        "cpu_ratio": ours["examples_per_cpu_s"] / official["examples_per_cpu_s"],
        "heldout_start_diff": abs(ours["heldout_loss_start"] - official["heldout_loss_start"]),
        "heldout_end_gap": gap,
        "train_loss_last_gap": abs(ours["loss_last"] - official["loss_last"]) / official["loss_last"],
        "speed_target": "HOLDS" if ratio >= TARGET_RATIO else "MISSED",
        "loss_target": "HOLDS" if gap <= tolerance else "MISSED",
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, run in result["runs"].items():
        losses = run["record"]["losses"]
        ax.plot(range(1, len(losses) + 1), losses, label=f"{name} ({run['summary']['examples_per_s']:.2f} ex/s)")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss (focal, batch mean)")
    ax.set_title("Training loss per step: ours (run.py) vs the official trainer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(result: dict[str, Any]) -> str:
    from gliclass.evaluation.report import markdown_table

    run, setup = result["run"], result["setup"]
    data = setup["data"]
    lines = [
        "# Training throughput: ours (`python run.py`) vs the official trainer",
        "",
        f"Date {run['date']}, commit `{run['git_commit']}`, torch {run['torch']}, transformers "
        f"{run['transformers']}, {run['cpu_count']} CPUs, {setup['threads']} threads per trainer, one trainer at a "
        "time (official first), each in its own process.",
        f"Command: `{run['command']}`",
        "",
        f"Same for both: the {setup['architecture']} MiniLM (all-MiniLM-L6-v2, first-token pooling, `<<LABEL>>`-token "
        f"label vectors) saved once in the official layout; {data['rows']} rows of the zero-shot training mix "
        f"({len(data['datasets'])} train-only datasets, only rows whose whole sequence fits max_length "
        f"{setup['max_length']}: {data['tokens_median']} tokens median, {data['tokens_p90']} p90, "
        f"{data['tokens_max']} max), labels shuffled per row; {setup['steps']} optimiser steps of batch "
        f"{setup['batch_size']}; focal loss (alpha 0.5, gamma 2); AdamW, lr {setup['encoder_lr']} backbone / "
        f"{setup['lr']} head, weight decay 0.01, linear schedule with 5% warmup, gradient clipping at 1.0.",
        "",
        "Train s: from the training loop's start to the last optimiser step's end (batch loading and tokenisation, "
        "forward, backward, clipping, optimiser and per-step logging included; start-up, model loading and saving "
        "excluded). CPU s: this process's CPU time over the same window (all threads; less sensitive to other jobs on "
        f"the machine). Losses: mean per label slot over the first and last {CURVE_WINDOW} steps, and over "
        f"{data['heldout_rows']} held-out rows of the same mix before and after training (eval mode).",
        "",
    ]
    rows = []
    for name, entry in result["runs"].items():
        s = entry["summary"]
        rows.append(
            [
                name,
                s["train_seconds"],
                s["examples_per_s"],
                s["steady_examples_per_s"],
                s["train_cpu_seconds"],
                s["examples_per_cpu_s"],
                s["mean_padded_length"],
                s["padding_fraction"],
                s["loss_first"],
                s["loss_last"],
                s["heldout_loss_start"],
                s["heldout_loss_end"],
            ]
        )
    headers = [
        "trainer",
        "train s",
        "examples/s",
        "examples/s after step 1",
        "CPU s",
        "examples/CPU s",
        "mean padded length",
        "padding fraction",
        f"train loss, first {CURVE_WINDOW}",
        f"train loss, last {CURVE_WINDOW}",
        "held-out loss before",
        "held-out loss after",
    ]
    lines += [markdown_table(headers, rows, 4), ""]
    verdict = result.get("verdict")
    if verdict:
        lines += [
            f"**Ours / official: {verdict['ratio']:.2f}x examples/s** ({verdict['steady_ratio']:.2f}x after the "
            f"first step, {verdict['cpu_ratio']:.2f}x per CPU second). Target >= {TARGET_RATIO}x: "
            f"**{verdict['speed_target']}**.",
            "",
            f"Same loss curve: held-out loss after training differs by {100 * verdict['heldout_end_gap']:.1f}% "
            f"(tolerance {100 * setup['loss_tolerance']:.0f}%): **{verdict['loss_target']}**; the last-"
            f"{CURVE_WINDOW}-step training losses differ by {100 * verdict['train_loss_last_gap']:.1f}%. Before "
            f"training the held-out losses differ by {verdict['heldout_start_diff']:.1e} (the same model and "
            "objective).",
            "",
            f"![loss curves]({result['name']}.png)",
        ]
    if setup.get("overrides"):
        lines += ["", f"Extra run.py overrides: `{setup['overrides']}`"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from gliclass.evaluation.common import run_record
    from gliclass.evaluation.report import publish
    from gliclass.evaluation.workers import official_python

    python = official_python() if "official" in args.systems else None
    if "official" in args.systems and python is None:
        raise SystemExit(
            "the official venv is missing: run scripts/official/make_fixtures.sh (or set $GLICLASS_OFFICIAL_PYTHON), "
            "or pass --systems ours"
        )
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="train_speed-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir, data_path, heldout_path = work / "model", work / "train.json", work / "heldout.json"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    processor = make_model(model_dir, args.arch, args.max_length)
    data_dir = args.data_dir or str(REPO_ROOT.parent / "shared" / "data")
    data = make_training_set(
        data_path, heldout_path, args.rows, args.heldout, args.max_length, args.seed, data_dir, processor
    )
    result: dict[str, Any] = {
        "name": args.name,
        "run": run_record(args, "gliclass.evaluation.train_speed"),
        "setup": {
            "architecture": args.arch,
            "model_config": MODEL_CONFIG,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "encoder_lr": args.encoder_lr,
            "lr": args.lr,
            "threads": args.threads,
            "loss_tolerance": args.loss_tolerance,
            "overrides": args.overrides,
            "data": data,
        },
        "runs": {},
    }
    for system in args.systems:
        run_dir, record = work / system, work / f"{system}.json"
        if system == "official":
            command = official_command(args, python, data_path, heldout_path, model_dir, run_dir, record)
        else:
            command = ours_command(args, data_path, heldout_path, model_dir, run_dir, record)
        print(f"[train_speed] {system}: training {args.steps} steps", file=sys.stderr)
        seconds = run_child(command, args.threads, work / f"{system}.log")
        entry = json.loads(record.read_text())
        if len(entry["losses"]) != args.steps:
            raise RuntimeError(f"{system} trained {len(entry['losses'])} steps, expected {args.steps}")
        result["runs"][system] = {"process_seconds": seconds, "summary": summarise(entry, args.batch_size)}
        result["runs"][system]["record"] = entry
    result["verdict"] = verdicts(result["runs"], args.loss_tolerance)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(result, out / f"{args.name}.png")
    publish(result, out, args.name, render)
    return result


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--official-trainer":
        official_trainer(sys.argv[2:])
    else:
        main()
