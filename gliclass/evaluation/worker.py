"""One system in its own process, driven over JSON lines on stdin/stdout (see `gliclass.evaluation.workers`).

Run as a script, not a module: the official system runs it with the official package's own interpreter, where
`import gliclass` must find the official `gliclass`, never this repository. It therefore imports nothing from
this repository at the top, and for `--system official` strips every path inside the repository from sys.path.

Requests: {"cmd": "time", texts, labels, batch_size, passes, warmup, warmup_texts, max_seconds, multi_label, calls}
-> {"seconds": [...per pass], "labels_scored": k}, where a pass is `calls` (default 1) back-to-back calls on all the
texts and its entry is the mean seconds of one call (`warmup` counts calls too); "part": "forward" times the model
alone on the call's inputs, prepared once (the systems' `forward_fn`), "part": "pipeline" the whole call with the
model swapped for a stub that returns its output at once (the systems' `model_stub`); {"cmd": "scores", texts, labels, multi_label, batch_size} -> {"scores": [[...]]};
{"cmd": "memory"} -> {"maxrss_mb"}; {"cmd": "exit"}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
OFFICIAL_LABEL_TOKEN = "<<LABEL>>"
OFFICIAL_SEP_TOKEN = "<<SEP>>"
# our systems: name -> (backend, ZeroShotPipeline options)
OUR_SYSTEMS: dict[str, tuple[str, dict[str, Any]]] = {
    "ours": ("torch", {}),
    "ours-compiled": ("torch", {"compile": True}),
    "ours-nocache": ("torch", {"label_cache": False}),  # a bi-encoder's label tower on every call, as the official
    "ours-bf16": ("torch", {"precision": "bf16"}),
    "ours-fast": ("torch", {"compile": True, "precision": "bf16"}),
    "ours-fast-truncate": ("torch", {"compile": True, "precision": "bf16", "long_text": "truncate"}),
    "ours-bi-cached": ("torch", {}),
    "ours-onnx": ("onnx", {}),
    "ours-onnx-int8": ("onnx-int8", {}),
}


def _inside_repo(entry: str) -> bool:
    """A path of this repository's code; the running interpreter's own venv (e.g. <repo>/.venv-official) is not."""
    path = Path(entry or ".").resolve()
    return path.is_relative_to(REPO_ROOT) and not path.is_relative_to(Path(sys.prefix).resolve())


def maxrss_mb() -> float:
    """Peak resident memory of this process in MiB.

    /proc's VmHWM restarts at exec; ru_maxrss (the fallback off Linux) would include the coordinator's RSS at
    fork time."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class OfficialSystem:
    """The official `gliclass` pipeline on a checkpoint directory (official package only)."""

    def __init__(self, model_dir: str, max_length: int, precision: str = "fp32") -> None:
        import torch
        from transformers import AutoTokenizer

        from gliclass import GLiClassModel, ZeroShotClassificationPipeline

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = GLiClassModel.from_pretrained(model_dir).eval()
        self.max_length = max_length
        self.pipe = ZeroShotClassificationPipeline(
            self.model,
            self.tokenizer,
            classification_type="multi-label",
            device="cpu",
            max_length=max_length,
            progress_bar=False,
        )
        self.batch_size = 8
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision={precision!r}; choose 'fp32' or 'bf16'")
        self.autocast = (
            (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
        )
        config = getattr(self.model, "config", None)
        self.bi_encoder = getattr(config, "architecture_type", None) == "bi-encoder"

    def _call(self, texts: list[str], labels: list[str], multi_label: bool, **kwargs: Any) -> Any:
        kind = "multi-label" if multi_label else "single-label"
        with self.autocast():
            return self.pipe(texts, labels, batch_size=self.batch_size, classification_type=kind, **kwargs)

    def predict(self, texts: list[str], labels: list[str], multi_label: bool) -> Any:
        return self._call(texts, labels, multi_label, threshold=0.5)

    def scores(self, texts: list[str], labels: list[str], multi_label: bool) -> list[list[float]]:
        rows = self._call(texts, labels, multi_label, threshold=0.0, return_hierarchical=True)
        return [[float(row[label]) for label in labels] for row in rows]

    def forward_fn(self, texts: list[str], labels: list[str]) -> Any:
        """The model alone on the inputs the pipeline builds for (texts, labels), prepared once, called as it does."""
        inputs = self.pipe.pipe.prepare_inputs(texts, labels, same_labels=True)

        def call() -> Any:
            with self.autocast():
                return self.model(**inputs, max_num_classes=len(labels), adapter_ids=None)

        return call

    @contextlib.contextmanager
    def model_stub(self, texts: list[str], labels: list[str]) -> Any:
        """Within: the pipeline's model returns its output for (texts, labels) at once, whatever it is given."""
        output, model = self.forward_fn(texts, labels)(), self.pipe.pipe.model
        self.pipe.pipe.model = _Stub(model.config, output)
        try:
            yield
        finally:
            self.pipe.pipe.model = model

    def labels_scored(self, text: str, labels: list[str]) -> int:
        """How many <<LABEL>> tokens survive the official truncation (it cuts labels, not text). A bi-encoder's
        labels are not in the text sequence (the label tower reads them): every label is scored, the text is cut."""
        if self.bi_encoder:
            return len(labels)
        string = text + "".join(OFFICIAL_LABEL_TOKEN + label for label in labels) + OFFICIAL_SEP_TOKEN
        ids = self.tokenizer(string, truncation=True, max_length=self.max_length)["input_ids"]
        return ids.count(self.tokenizer.convert_tokens_to_ids(OFFICIAL_LABEL_TOKEN))

    def shapes(self, texts: list[str], labels: list[str]) -> dict[str, list[int]]:
        """Real (unpadded) tokens of the first text's encoder row and, for a bi-encoder, of each label in the label
        tower, which the official pipeline runs on every call."""
        inputs = self.pipe.pipe.prepare_inputs(texts[:1], labels, same_labels=True)
        out = {"rows": [int(inputs["attention_mask"][0].sum())], "label_rows": []}
        if self.bi_encoder:
            out["label_rows"] = [int(n) for n in inputs["class_attention_mask"][0].sum(-1)]
        return out


class _Stub:
    """A model that returns a fixed output (the official pipeline also reads its `config`)."""

    def __init__(self, config: Any, output: Any) -> None:
        self.config, self.output = config, output

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.output


def pipeline_shapes(system: Any, texts: list[str], labels: list[str]) -> dict[str, list[int]]:
    """Our pipeline's rows for the first text (tokens each, as planned) and the label-tower tokens it runs per call:
    each row's labels unless the bi-encoder label cache serves them (then none after the first call)."""
    pipe = getattr(system, "pipe", None)
    if pipe is None:
        raise ValueError(f"{type(system).__name__} has no pipeline to report shapes of")
    rows = pipe.plan(texts[:1], labels)[0]
    label_rows: list[int] = []
    if pipe.config.uses_label_encoder and not pipe.use_label_cache:
        for row in rows:
            label_rows += [len(ids) for ids in pipe.processor.label_ids(row["labels"])]
    return {"rows": [row["tokens"] for row in rows], "label_rows": label_rows}


def build_system(args: argparse.Namespace) -> Any:
    if args.system in ("official", "official-bf16"):
        return OfficialSystem(args.model, args.max_length, "bf16" if args.system == "official-bf16" else "fp32")
    from gliclass.evaluation.systems import GLiClassSystem, PairwiseCrossEncoder

    if args.system in OUR_SYSTEMS:
        backend, options = OUR_SYSTEMS[args.system]
        return GLiClassSystem.from_pretrained(
            args.model,
            batch_size=args.batch_size,
            name=args.system,
            backend=backend,
            threads=args.threads,
            max_length=args.max_length,
            **options,
        )
    if args.system == "cross-encoder":
        return PairwiseCrossEncoder.from_gliclass(args.model, pair_batch_size=args.pair_batch_size)
    raise SystemExit(f"unknown system {args.system!r}")


def set_batch_size(system: Any, batch_size: int) -> None:
    if hasattr(system, "set_batch_size"):
        system.set_batch_size(batch_size)
    elif hasattr(system, "batch_size"):
        system.batch_size = batch_size


def handle(system: Any, request: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    cmd = request["cmd"]
    if cmd == "memory":
        return {"maxrss_mb": maxrss_mb()}
    texts, labels, multi_label = request["texts"], request["labels"], bool(request.get("multi_label", True))
    set_batch_size(system, int(request.get("batch_size", 8)))
    if cmd == "scores":
        return {"scores": np.asarray(system.scores(texts, labels, multi_label), dtype=float).tolist()}
    if cmd == "shapes":
        return system.shapes(texts, labels) if hasattr(system, "shapes") else pipeline_shapes(system, texts, labels)
    if cmd == "time":
        # warm-up on the first `warmup_texts` texts only, so a batched warm-up does not cost a full pass
        warm = texts[: int(request.get("warmup_texts") or len(texts))]
        part = request.get("part", "call")
        if part == "forward":
            call = warm_call = system.forward_fn(texts, labels)
        else:
            call = lambda: system.predict(texts, labels, multi_label)  # noqa: E731
            warm_call = lambda: system.predict(warm, labels, multi_label)  # noqa: E731
        seconds: list[float] = []
        with system.model_stub(texts, labels) if part == "pipeline" else contextlib.nullcontext():
            for _ in range(int(request.get("warmup", 1))):
                warm_call()
            max_seconds = request.get("max_seconds")
            calls = int(request.get("calls", 1))
            for _ in range(int(request["passes"])):
                start = time.perf_counter()
                for _ in range(calls):
                    call()
                seconds.append((time.perf_counter() - start) / calls)
                if max_seconds is not None and sum(seconds) > max_seconds:
                    break  # a slow system's cell stops early; the reply says how many passes ran
        scored = system.labels_scored(texts[0], labels) if hasattr(system, "labels_scored") else len(labels)
        return {"seconds": seconds, "labels_scored": scored}
    raise ValueError(f"unknown command {cmd!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pair-batch-size", type=int, default=32)
    args = parser.parse_args()

    # the script's own folder holds data.py/metrics.py, which must not shadow top-level modules
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    official = args.system in ("official", "official-bf16")
    if official:
        sys.path[:] = [p for p in sys.path if not _inside_repo(p)]
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # library prints must not corrupt the protocol stream

    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    if official:
        import gliclass

        if _inside_repo(gliclass.__file__):
            raise SystemExit(f"refusing to run: imported this repository's gliclass ({gliclass.__file__})")
    start = time.perf_counter()
    with torch.inference_mode():
        system = build_system(args)
        ready = {"ready": True, "load_s": time.perf_counter() - start, "maxrss_mb": maxrss_mb()}
        ready["backend"] = getattr(system, "backend", args.system)
        protocol.write(json.dumps(ready) + "\n")
        for line in sys.stdin:
            request = json.loads(line)
            if request["cmd"] == "exit":
                break
            try:
                reply = handle(system, request)
            except Exception as err:  # reported to the coordinator, which decides; the worker stays up
                reply = {"error": f"{type(err).__name__}: {err}"}
            protocol.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
