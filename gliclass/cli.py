"""`gliclass` command line: `predict` (zero-shot classification, JSONL out) and `export-onnx`.

Exit codes: 0 success, 2 bad usage or bad input (message on stderr, no traceback), 1 any other failure.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO_ROOT / "models" / "default"
MODEL_ENV = "GLICLASS_MODEL"


class UsageError(Exception):
    """A mistake the user can fix (bad flag combination, missing file, malformed input): exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gliclass",
        description="Zero-shot text classification with GLiClass models.",
        epilog=f"Without --model: ${MODEL_ENV}, else {DEFAULT_MODEL} (made by `make run` / `python run.py`).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for failures")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    predict = commands.add_parser(
        "predict",
        help="classify texts (arguments, or --input JSONL) and print one JSON object per text",
        description="Classify texts against candidate labels; prints one JSON object per text (JSONL).",
    )
    predict.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify (or use --input)")
    _model_argument(predict)
    labels = predict.add_mutually_exclusive_group()
    labels.add_argument("--labels", help='comma-separated candidate labels, e.g. "sports,politics,science"')
    labels.add_argument(
        "--labels-file",
        type=Path,
        help="candidate labels: one per line, or a .json list / hierarchical dict",
    )
    predict.add_argument(
        "--input",
        type=Path,
        help='JSONL file ("-" for stdin) of {"text": ..., optional "labels": [...]}; other fields are echoed back',
    )
    predict.add_argument("--output", type=Path, help="write JSONL here instead of stdout")
    predict.add_argument(
        "--multi-label",
        action="store_true",
        help="independent sigmoid score per label, keep those >= threshold (default: single best label, softmax)",
    )
    predict.add_argument("--threshold", type=float, default=0.5, help="multi-label threshold in [0, 1] (0.5)")
    predict.add_argument("--prompt", help="task description prepended to the labels (official prompt format)")
    predict.add_argument("--all-scores", action="store_true", help='also output every label\'s score ("scores")')
    predict.add_argument("--batch-size", type=int, default=8, help="model rows per forward pass (8)")
    predict.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (cpu)")
    predict.add_argument("--max-length", type=int, help="token budget per sequence (default: the model's)")
    predict.add_argument(
        "--aggregation",
        choices=["max", "mean", "logit-mean"],
        help="combine chunk scores of long texts (default: max for multi-label, mean for single-label)",
    )
    predict.add_argument(
        "--long-text",
        choices=["chunk", "truncate"],
        default="chunk",
        help="a text that does not fit beside its labels: score every window (chunk) or its head only (truncate)",
    )
    predict.add_argument(
        "--compile", action="store_true", help="torch.compile the model (exact; ~30 s one-off, then faster)"
    )
    predict.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: bfloat16 autocast (faster, ~1e-2 logits)"
    )
    backend = predict.add_mutually_exclusive_group()
    backend.add_argument("--onnx", action="store_true", help="run the ONNX export in --model with onnxruntime")
    backend.add_argument("--int8", action="store_true", help="run the int8-quantised ONNX export")

    export = commands.add_parser(
        "export-onnx",
        help="export a model to ONNX (dynamic batch/sequence/label axes)",
        description="Export a GLiClass model to ONNX, with its tokenizer and config, into --out.",
    )
    _model_argument(export)
    export.add_argument("--out", type=Path, required=True, help="output directory")
    export.add_argument(
        "--quantize",
        choices=["int8"],
        help="also write int8 dynamically quantised graphs, and print how often they agree with fp32 (stderr)",
    )
    export.add_argument(
        "--calibration",
        type=Path,
        metavar="FILE",
        help="with --quantize: texts to calibrate int8 on and to measure its agreement on (.jsonl rows "
        '{"text", "labels"?} or one text per line; default: built-in probe texts)',
    )
    export.add_argument("--no-check", action="store_true", help="skip the torch-vs-onnxruntime parity check")
    return parser


def _model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help=f"model directory (default: ${MODEL_ENV}, else {DEFAULT_MODEL})")


def resolve_model(path: Path | None) -> Path:
    """--model, else $GLICLASS_MODEL, else the repo's models/default; a missing one says how to make it."""
    if path is None and os.environ.get(MODEL_ENV):
        path = Path(os.environ[MODEL_ENV])
    if path is not None:
        if not path.is_dir():
            raise UsageError(f"model directory {str(path)!r} does not exist")
        return path
    if not DEFAULT_MODEL.is_dir():
        raise UsageError(
            f"no model given and the default model {DEFAULT_MODEL} does not exist; create it with `make run` "
            f"(or `python run.py`), or pass --model DIR, or set ${MODEL_ENV}"
        )
    return DEFAULT_MODEL


def read_labels(args: argparse.Namespace) -> Any:
    if args.labels is not None:
        return [label.strip() for label in args.labels.split(",")]
    if args.labels_file is None:
        return None
    try:
        content = args.labels_file.read_text(encoding="utf-8")
    except OSError as error:
        raise UsageError(f"cannot read --labels-file: {error}") from None
    if args.labels_file.suffix == ".json":
        try:
            return json.loads(content)
        except json.JSONDecodeError as error:
            raise UsageError(f"--labels-file {args.labels_file} is not valid JSON: {error}") from None
    return [line.strip() for line in content.splitlines() if line.strip()]


def read_records(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.input is not None and args.texts:
        raise UsageError("give texts as arguments or with --input, not both")
    if args.input is None:
        if not args.texts:
            raise UsageError("no texts: pass TEXT arguments or --input FILE.jsonl")
        return [{"text": text} for text in args.texts]
    try:
        lines = sys.stdin.read().splitlines() if str(args.input) == "-" else args.input.read_text("utf-8").splitlines()
    except OSError as error:
        raise UsageError(f"cannot read --input: {error}") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UsageError(f"{args.input} line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict) or "text" not in record:
            raise UsageError(f'{args.input} line {number}: expected an object with a "text" field')
        records.append(record)
    return records


def predict(args: argparse.Namespace, out: TextIO) -> None:
    labels = read_labels(args)
    records = read_records(args)
    if labels is None and not all("labels" in record for record in records):
        raise UsageError('no labels: pass --labels, --labels-file, or a "labels" field on every --input line')
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not records:
        return
    pipe = _load_pipeline(args)
    per_text = [record.get("labels", labels) for record in records]
    texts = [record["text"] for record in records]
    kwargs = {"multi_label": args.multi_label, "prompt": args.prompt}
    try:
        shared = labels if all("labels" not in record for record in records) else per_text
        predictions = pipe(texts, shared, threshold=args.threshold, **kwargs)
        scores = pipe.scores(texts, shared, **kwargs) if args.all_scores else None
    except (ValueError, TypeError) as error:  # input validation: the message names the problem
        raise UsageError(str(error)) from None
    for i, record in enumerate(records):
        result = {**record, "predictions": predictions[i]}
        if scores is not None:
            result["scores"] = scores[i]
        out.write(json.dumps(result, ensure_ascii=False) + "\n")


def _load_pipeline(args: argparse.Namespace) -> Any:
    from gliclass.pipeline import ZeroShotPipeline

    model = resolve_model(args.model)
    backend = "onnx" if args.onnx or args.int8 else "auto"
    try:
        return ZeroShotPipeline.from_pretrained(
            model,
            device=args.device,
            backend=backend,
            quantized=args.int8,
            max_length=args.max_length,
            batch_size=args.batch_size,
            multi_label=args.multi_label,
            threshold=args.threshold,
            aggregation=args.aggregation,
            long_text=args.long_text,
            compile=args.compile,
            precision=args.precision,
        )
    except (FileNotFoundError, ValueError) as error:  # e.g. --compile with --onnx
        raise UsageError(str(error)) from None


def export(args: argparse.Namespace, out: TextIO) -> None:
    from gliclass.modeling import GLiClassModel
    from gliclass.onnx import export_onnx
    from gliclass.onnx.quantize import describe, read_calibration
    from gliclass.processing import GLiClassProcessor

    if args.calibration is not None and args.quantize is None:
        raise UsageError("--calibration calibrates the int8 graphs: add --quantize int8")
    calibration = None
    if args.calibration is not None:
        try:
            calibration = read_calibration(args.calibration)
        except (FileNotFoundError, ValueError) as error:
            raise UsageError(str(error)) from None
    model_dir = resolve_model(args.model)
    model = GLiClassModel.from_pretrained(str(model_dir))
    processor = GLiClassProcessor.from_pretrained(str(model_dir))
    meta = export_onnx(
        model, processor, args.out, quantize=args.quantize, check=not args.no_check, calibration=calibration
    )
    if args.quantize:  # what int8 changes, measured at export (stdout stays one JSON object)
        print(f"gliclass export-onnx: {describe(meta['int8']['agreement'])}", file=sys.stderr)
    out.write(json.dumps({"out": str(args.out), **meta}) + "\n")


def _quiet() -> None:
    """Library progress bars and advice would mix with the JSONL on the terminal."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        _quiet()
        buffer = io.StringIO()  # written only on success, so a failed run leaves no half-written --output
        (predict if args.command == "predict" else export)(args, buffer)
        if args.command == "predict" and args.output is not None:
            args.output.write_text(buffer.getvalue(), encoding="utf-8")
        else:
            sys.stdout.write(buffer.getvalue())
    except UsageError as error:
        print(f"gliclass {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # noqa: BLE001 -- the CLI reports failures in one line; --debug shows the traceback
        if args.debug:
            raise
        print(f"gliclass {args.command}: failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
