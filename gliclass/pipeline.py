"""`ZeroShotPipeline`: zero-shot / few-shot classification of any number of texts against any number of labels.

Unlike the official pipeline, nothing is cut silently:
- a text longer than the room its label block leaves is split into overlapping token windows (chunks), each chunk is
  scored, and the chunk scores are aggregated (`aggregation`);
- labels that do not fit beside the text are split into groups that each fit; every label gets a score.
See docs/pipeline.md for what the scores mean in each case.

The pipeline is backend-agnostic: `model` is a `GLiClassModel` or anything with the same forward contract (the
onnxruntime-backed `gliclass.onnx.OnnxModel`).
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gliclass.config import LABEL_TOKEN
from gliclass.pipeline_inputs import (
    check_bool,
    check_threshold,
    flatten_labels,
    is_per_text,
    per_text,
    per_text_examples,
)

# the planning (label groups, text chunks, token counts) is gliclass.planning's; LONG_TEXT and CALL_CACHE_SIZE stay
# importable from here
from gliclass.planning import CALL_CACHE_SIZE, LONG_TEXT, Request, RowPlanner, Unit
from gliclass.processing import (
    GLiClassProcessor,
    check_labels,
    check_text,
    format_examples,
    pad_ids,
)

AGGREGATIONS = ("max", "mean", "logit-mean")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
Labels = Sequence[str] | Mapping[str, Any]


@dataclass
class _Result:
    """Per text: logits [chunks, labels], and embeddings when asked for."""

    labels: list[str]
    logits: torch.Tensor | None  # None until read: a text of one model row views its row of the batch logits
    text_embeddings: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)  # (chunk, group) -> vector
    class_embeddings: torch.Tensor | None = None  # [chunks, labels, D]


class _Planned:
    """A pipeline attribute kept by its `RowPlanner` (read and set through the pipeline, as before the split)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, pipeline: Any, owner: type | None = None) -> Any:
        return self if pipeline is None else getattr(pipeline.planner, self.name)

    def __set__(self, pipeline: Any, value: Any) -> None:
        setattr(pipeline.planner, self.name, value)


class ZeroShotPipeline:
    """Score texts against candidate labels with a GLiClass model.

    Args:
        model: a `GLiClassModel` (or an `OnnxModel`); put in eval mode and moved to `device`.
        processor: the `GLiClassProcessor` saved with the model; its `budget` bounds every sequence.
        batch_size: model rows (text chunk x label group) per forward pass.
        multi_label: default decision rule; True: sigmoid per label + threshold, False: softmax over the labels.
        threshold: default multi-label threshold in [0, 1].
        aggregation: how chunk scores of a long text combine: "max", "mean" (of chunk probabilities) or
            "logit-mean" (activation of the mean chunk logit). None: "max" for multi-label, "mean" for single-label.
        chunk_overlap: tokens shared by consecutive chunks (at most half a chunk).
        min_chunk_tokens: when labels must be grouped, the smallest text window a model row may get (or the whole
            text if shorter). Within that bound the window minimising the number of rows (chunks x groups) is used.
        max_labels_per_group: an upper bound on labels per model row (None: as many as fit).
        label_separator: joins the keys of a hierarchical label dict ("sentiment.positive").
        label_cache: bi-encoders encode each label once and reuse its vector across calls (see `clear_label_cache`).
        long_text: what to do with a text that does not fit beside its labels: "chunk" (default) scores every
            window of it and aggregates; "truncate" keeps its head only (one row per label group, as fast as a
            cut-off pipeline, but every label is still scored).
        compile: run the model through `torch.compile(dynamic=True)` with inductor weight freezing. Exact (same
            logits to float rounding) and ~1.2-1.5x faster per forward on CPU, after a one-off compile of roughly
            30 s per new input rank/specialisation (batch 1 vs >1, 1 label vs many). The weights are frozen at the
            first call: build a new pipeline after changing them. torch models only.
        precision: "fp32" (default) or "bf16": the forward runs under bfloat16 autocast (matmuls in bf16, norms and
            softmax in fp32). ~1.5x faster on CPUs with AVX512-BF16/AMX and on GPUs; logits move by ~1e-2, so a
            few near-tie predictions can change (measure on your data). torch models only.
    """

    # the planning settings (`gliclass.planning.RowPlanner`)
    processor = _Planned()
    chunk_overlap = _Planned()
    min_chunk_tokens = _Planned()
    max_labels_per_group = _Planned()
    long_text = _Planned()

    def __init__(
        self,
        model: Any,
        processor: GLiClassProcessor,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        multi_label: bool = True,
        threshold: float = 0.5,
        aggregation: str | None = None,
        chunk_overlap: int = 32,
        min_chunk_tokens: int = 64,
        max_labels_per_group: int | None = None,
        label_separator: str = ".",
        label_cache: bool = True,
        label_cache_size: int = 100_000,
        long_text: str = "chunk",
        compile: bool = False,
        precision: str = "fp32",
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if aggregation is not None and aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation={aggregation!r} is not supported; choose one of {list(AGGREGATIONS)}")
        if chunk_overlap < 0:
            raise ValueError(f"chunk_overlap must be >= 0, got {chunk_overlap}")
        if min_chunk_tokens < 1:
            raise ValueError(f"min_chunk_tokens must be >= 1, got {min_chunk_tokens}")
        if max_labels_per_group is not None and max_labels_per_group < 1:
            raise ValueError(f"max_labels_per_group must be >= 1, got {max_labels_per_group}")
        if long_text not in LONG_TEXT:
            raise ValueError(f"long_text={long_text!r} is not supported; choose one of {list(LONG_TEXT)}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} is not supported; choose one of {list(PRECISIONS)}")
        for flag, value in (("compile=True", compile), (f"precision={precision!r}", precision != "fp32")):
            if value and not isinstance(model, torch.nn.Module):
                raise ValueError(f"{flag} needs a torch model, got {type(model).__name__}")
        self.planner = RowPlanner(processor, chunk_overlap, min_chunk_tokens, max_labels_per_group, long_text)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval() if isinstance(model, torch.nn.Module) else model
        self.compiled = compile
        self.precision = precision
        self._runner = _Compiled(self.model, self.device) if compile else self.model
        self.config = processor.config
        self.batch_size = batch_size
        self.multi_label = check_bool(multi_label, "multi_label")
        self.threshold = check_threshold(threshold)
        self.aggregation = aggregation
        self.label_separator = label_separator
        self.use_label_cache = label_cache and self.config.uses_label_encoder
        self.label_cache_size = label_cache_size
        self._label_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._label_vectors: dict[str, torch.Tensor] = {}  # set by `set_label_vectors`: used instead of encoding
        # per-call work done once: config lookups, validated label sets, token ids of the part after the text
        self._arch = self.config.architecture_type
        self._class_token = self.config.class_token_index
        self._pad = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0
        # rows whose ids fit the budget need no processor work but tensors (label vectors come from the cache)
        self._direct_items = self._arch != "encoder-decoder" and (
            self.use_label_cache or not self.config.uses_label_encoder
        )
        self._checked_labels: OrderedDict[tuple[str, ...], tuple[str, ...]] = OrderedDict()

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "cpu",
        backend: str = "auto",
        quantized: bool = False,
        max_length: int | None = None,
        **kwargs: Any,
    ) -> ZeroShotPipeline:
        """Load a saved model directory: torch weights (`model.safetensors`) or an ONNX export (`model.onnx`).

        backend: "torch", "onnx", or "auto" (torch weights when present, else the ONNX export).
        quantized: with the ONNX backend, use the int8 files written by `export_onnx(..., quantize="int8")`.
        """
        from gliclass.onnx.common import has_onnx_export
        from gliclass.onnx.runtime import OnnxModel  # not the package: its int8 check imports this module

        path = str(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"model directory {path!r} does not exist")
        if backend not in ("auto", "torch", "onnx"):
            raise ValueError(f"backend={backend!r}; choose 'auto', 'torch' or 'onnx'")
        has_torch = any(name.startswith("model") and name.endswith(".safetensors") for name in os.listdir(path))
        if backend == "auto":
            backend = "torch" if has_torch and not quantized else "onnx" if has_onnx_export(path) else "torch"
        processor_kwargs = {"max_length": max_length} if max_length is not None else {}
        processor = GLiClassProcessor.from_pretrained(path, **processor_kwargs)
        model = OnnxModel.from_pretrained(path, quantized=quantized) if backend == "onnx" else _load_torch_model(path)
        return cls(model, processor, device=device, **kwargs)

    # ----------------------------------------------------------------- public API
    def __call__(
        self,
        texts: str | Sequence[str],
        labels: Labels | Sequence[Labels],
        threshold: float | Sequence[float] | None = None,
        multi_label: bool | None = None,
        prompt: str | Sequence[str | None] | None = None,
        examples: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]] | None] | None = None,
        return_hierarchy: bool = False,
    ) -> list[Any]:
        """Predicted labels per text, as `[{"label", "score"}, ...]` sorted by descending score (ties: input order).

        Multi-label: every label with score >= threshold. Single-label: the one best label (softmax over the text's
        labels; threshold ignored). A str input returns one list instead of a list of lists. With
        `return_hierarchy=True` every label's score is returned, nested like the input label dict.
        """
        single = isinstance(texts, str)
        requests, multi = self._requests(texts, labels, threshold, multi_label, prompt, examples)
        outputs: list[Any] = []
        for request, result in zip(requests, self._run(requests), strict=True):
            scores = self._scores(result, multi)
            if return_hierarchy:
                outputs.append(_nest(request.structure, dict(zip(request.labels, scores, strict=True)), self))
                continue
            # stable sorts: ties keep input order; multi-label ranks only the labels over the threshold
            if multi:
                chosen = sorted(
                    (i for i in range(len(scores)) if scores[i] >= request.threshold), key=lambda i: -scores[i]
                )
            else:
                chosen = sorted(range(len(scores)), key=lambda i: -scores[i])[:1]
            outputs.append([{"label": request.labels[i], "score": scores[i]} for i in chosen])
        return outputs[0] if single else outputs

    def scores(
        self,
        texts: str | Sequence[str],
        labels: Labels | Sequence[Labels],
        multi_label: bool | None = None,
        prompt: str | Sequence[str | None] | None = None,
        examples: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]] | None] | None = None,
    ) -> list[dict[str, float]]:
        """Every label's score per text, in input label order (hierarchical labels: flattened names)."""
        requests, multi = self._requests(texts, labels, None, multi_label, prompt, examples)
        return [
            dict(zip(request.labels, self._scores(result, multi), strict=True))
            for request, result in zip(requests, self._run(requests), strict=True)
        ]

    def logits(
        self,
        texts: str | Sequence[str],
        labels: Labels | Sequence[Labels],
        prompt: str | Sequence[str | None] | None = None,
        examples: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]] | None] | None = None,
    ) -> list[dict[str, Any]]:
        """Raw logits and embeddings per text.

        Returns `{"logits": {label: float}, "text_embedding": tensor, "class_embeddings": {label: tensor}}`. When a
        text was chunked or its labels grouped, a label's logit is its max over chunks (aggregation "max") or its mean
        (otherwise); the text embedding is the mean over all model rows of the text, and a label's embedding the
        mean over its chunks. Pooling "pass" returns the token matrix of the first chunk and label group.
        """
        requests, _ = self._requests(texts, labels, None, None, prompt, examples)
        outputs = []
        for request, result in zip(requests, self._run(requests, embeddings=True), strict=True):
            logits = result.logits.max(0).values if self._aggregation(True) == "max" else result.logits.mean(0)
            rows = [result.text_embeddings[key] for key in sorted(result.text_embeddings)]
            text_embedding = torch.stack(rows).mean(0) if rows[0].dim() == 1 else rows[0]
            classes = result.class_embeddings.mean(0)
            outputs.append(
                {
                    "logits": dict(zip(request.labels, logits.tolist(), strict=True)),
                    "text_embedding": text_embedding,
                    "class_embeddings": {label: classes[i] for i, label in enumerate(request.labels)},
                }
            )
        return outputs

    def plan(
        self,
        texts: str | Sequence[str],
        labels: Labels | Sequence[Labels],
        prompt: str | Sequence[str | None] | None = None,
        examples: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]] | None] | None = None,
    ) -> list[list[dict[str, Any]]]:
        """The model rows each text becomes: `{"chunk", "group", "text", "labels", "tokens"}` (no model call).

        One row when text and labels fit the budget; otherwise one row per (text chunk, label group).
        """
        return self.planner.rows(self._requests(texts, labels, None, None, prompt, examples)[0])

    def set_label_vectors(self, vectors: Mapping[str, torch.Tensor] | None) -> None:
        """Score these labels with the given vectors instead of encoding their names (bi-encoders with the label
        cache): e.g. few-shot prototypes, a label's vector mixed with the mean embedding of its examples. Each vector
        is `[encoder hidden size]`, in the space of `logits(...)["class_embeddings"]`; labels not given are encoded as usual.
        The vectors replace any set before; None or `{}` drops them. `clear_label_cache` keeps them."""
        self._require_label_cache("set_label_vectors")
        width = self.config.encoder_config.get_text_config().hidden_size  # the projectors' output width
        pinned = {}
        for label, vector in (vectors or {}).items():
            if not isinstance(label, str) or not label:
                raise ValueError(f"label vectors are keyed by non-empty label names, got {label!r}")
            vector = torch.as_tensor(vector).detach()
            if vector.shape != (width,):
                raise ValueError(
                    f"the vector of label {label!r} has shape {tuple(vector.shape)}; the model needs ({width},)"
                )
            if not torch.isfinite(vector).all():
                raise ValueError(f"the vector of label {label!r} is not finite")
            pinned[label] = vector.to(self.device, torch.float32)
        self._label_vectors = pinned

    def label_prototypes(self, examples: Mapping[str, Sequence[str]], weight: float = 0.5) -> dict[str, torch.Tensor]:
        """Few-shot label vectors for `set_label_vectors`, with no training: each label's own vector moved towards its
        prototype, the mean unit-length embedding of its example texts, as `(1 - weight) * label + weight *
        prototype` (the prototype rescaled to the label vector's norm, and the mix rescaled to it too: for unit-norm
        features, the normalised mix). `examples` maps each label to texts where it applies; weight 0 gives the
        label's own vector, 1 the prototype alone. Bi-encoders with the dot scorer (`check_prototype_model`).

            pipe.set_label_vectors(pipe.label_prototypes({"refund": ["I want my money back", ...], ...}))
        """
        check_prototype_model(self.config)
        self._require_label_cache("label_prototypes")  # its vectors are served from the cache
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must be a number in [0, 1], got {weight!r}")
        if not isinstance(examples, Mapping):
            raise TypeError(f"examples must map each label to its example texts, got {type(examples).__name__}")
        labels = check_labels(list(examples))
        texts: list[str] = []
        for label in labels:
            rows = examples[label]
            if isinstance(rows, str) or not isinstance(rows, Sequence) or not rows:
                raise ValueError(f"label {label!r} needs a non-empty list of example texts, got {rows!r}")
            texts += [check_text(text, f"an example text of label {label!r}") for text in rows]
        unique = list(dict.fromkeys(texts))
        embedded = self.logits(unique, [labels[0]])  # a bi-encoder's text vector does not depend on the labels
        vectors = torch.stack([out["text_embedding"].float() for out in embedded])
        vectors = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        row_of = {text: i for i, text in enumerate(unique)}
        own = self._encode_labels(labels)
        prototypes = {}
        for label, vector in zip(labels, own, strict=True):
            norm = vector.norm()
            prototype = vectors[[row_of[text] for text in examples[label]]].mean(0)
            mixed = (1 - weight) * vector + weight * prototype * (norm / prototype.norm().clamp_min(1e-12))
            prototypes[label] = mixed * (norm / mixed.norm().clamp_min(1e-12))
        return prototypes

    def _require_label_cache(self, what: str) -> None:
        if not self.use_label_cache:
            why = "label_cache=False" if self.config.uses_label_encoder else f"a {self._arch} has no label encoder"
            raise ValueError(f"{what} needs a bi-encoder with the label cache on ({why})")

    def clear_label_cache(self) -> None:
        """Forget cached bi-encoder label vectors (call after changing the model's weights), and the label sets and
        label-block token ids remembered across calls (call after changing the processor's tokenizer). Vectors given
        to `set_label_vectors` stay."""
        self._label_cache.clear()
        self._checked_labels.clear()
        self.planner.reset()

    # ----------------------------------------------------------------- input checking
    def _requests(
        self,
        texts: Any,
        labels: Any,
        threshold: Any,
        multi_label: Any,
        prompt: Any,
        examples: Any,
    ) -> tuple[list[Request], bool]:
        multi = self.multi_label if multi_label is None else check_bool(multi_label, "multi_label")
        if isinstance(texts, str):
            texts = [texts]
        if texts is None or isinstance(texts, Mapping) or not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a str or a list of str, got {type(texts).__name__}")
        texts = [check_text(text, f"text {i}") for i, text in enumerate(texts)]
        n = len(texts)
        structures = self._per_text_labels(labels, n)
        flat = []
        for i, structure in enumerate(structures):
            try:
                flat.append(self._checked(structure))
            except (TypeError, ValueError) as error:
                where = f"labels of text {i}" if is_per_text(labels) else "labels"
                raise type(error)(f"{where}: {error}") from None
        thresholds = per_text(threshold, n, "threshold", self.threshold)
        thresholds = [check_threshold(value) for value in thresholds]
        prompts = per_text(prompt, n, "prompt", None)
        for i, value in enumerate(prompts):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"prompt {i} must be a str or None, got {type(value).__name__}")
        shots = per_text_examples(examples, n)
        for value in shots:
            format_examples(value)  # raises a ValueError naming a malformed example
        requests = [
            Request(texts[i], flat[i], structures[i], prompts[i] or None, shots[i], thresholds[i]) for i in range(n)
        ]
        return requests, multi

    def _checked(self, structure: Any) -> list[str]:
        """The flat, validated labels of one text; a plain list of str is validated once per distinct label set."""
        key = None
        if isinstance(structure, list | tuple) and all(type(label) is str for label in structure):
            key = tuple(structure)
            if key in self._checked_labels:
                self._checked_labels.move_to_end(key)
                return list(key)
        labels = check_labels(flatten_labels(structure, self.label_separator))
        if key is not None:
            self._checked_labels[key] = key
            if len(self._checked_labels) > CALL_CACHE_SIZE:
                self._checked_labels.popitem(last=False)
        return labels

    def _per_text_labels(self, labels: Any, n: int) -> list[Any]:
        if labels is None:
            raise TypeError("labels must be a list of str, a list per text, or a dict; got None")
        if isinstance(labels, str):
            raise TypeError(f"labels must be a list of str, not a str ({labels!r}); pass [{labels!r}]")
        if isinstance(labels, Mapping):
            return [labels] * n
        if not isinstance(labels, Sequence):
            raise TypeError(f"labels must be a list of str, a list per text, or a dict; got {type(labels).__name__}")
        if len(labels) == 0:
            raise ValueError("the label list is empty")
        if not is_per_text(labels):
            return [labels] * n
        if len(labels) != n:
            raise ValueError(f"got {n} texts but {len(labels)} label lists (one list per text, or one for all)")
        return list(labels)

    # ----------------------------------------------------------------- planning (gliclass.planning)
    def _plan(self, requests: list[Request]) -> list[Unit]:
        return self.planner.plan(requests)

    # ----------------------------------------------------------------- running
    def _run(self, requests: list[Request], embeddings: bool = False) -> list[_Result]:
        if not requests:
            return []
        units = self._plan(requests)
        rows_of = [0] * len(requests)
        numtext_chunks = [0] * len(requests)
        for unit in units:
            rows_of[unit.request] += 1
            numtext_chunks[unit.request] = max(numtext_chunks[unit.request], unit.chunk + 1)
        # a text that is one model row reads its logits straight from the batch; split texts gather theirs
        results = [
            _Result(r.labels, torch.zeros(numtext_chunks[i], len(r.labels)) if rows_of[i] > 1 else None)
            for i, r in enumerate(requests)
        ]
        order = sorted(range(len(units)), key=lambda u: -units[u].length)  # similar lengths share a batch
        if self.use_label_cache:
            self._cache_labels({label for unit in units for label in unit.labels})
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch_units = [units[u] for u in order[start : start + self.batch_size]]
                out = self._forward(batch_units, [requests[u.request] for u in batch_units])
                logits = out.logits.float().cpu()
                for row, unit in enumerate(batch_units):
                    result = results[unit.request]
                    span = slice(unit.label_start, unit.label_start + len(unit.labels))
                    if result.logits is None:
                        result.logits = logits[row : row + 1, : len(unit.labels)]
                    else:
                        result.logits[unit.chunk, span] = logits[row, : len(unit.labels)]
                    if embeddings:
                        self._keep_embeddings(result, unit, out, row, span)
        return results

    def _keep_embeddings(self, result: _Result, unit: Unit, out: Any, row: int, span: slice) -> None:
        text = out.text_embeddings[row].float().cpu()
        if text.dim() == 2:  # pooling "pass": the real tokens only
            text = text[: int(out.token_mask[row].sum())] if out.token_mask is not None else text
        result.text_embeddings[(unit.chunk, unit.group)] = text
        classes = out.class_embeddings[row, : len(unit.labels)].float().cpu()
        if result.class_embeddings is None:
            result.class_embeddings = torch.zeros(result.logits.shape[0], len(result.labels), classes.shape[-1])
        result.class_embeddings[unit.chunk, span] = classes

    def _forward(self, units: list[Unit], requests: list[Request]) -> Any:
        batch = self._batch(units, requests)
        if self.use_label_cache:
            given, cache = self._label_vectors, self._label_cache
            vectors = [torch.stack([given[x] if x in given else cache[x] for x in u.labels]) for u in units]
            batch["class_embeddings"] = torch.nn.utils.rnn.pad_sequence(vectors, batch_first=True)
        if self.device.type != "cpu":
            batch = {key: value.to(self.device) for key, value in batch.items()}
        dtype = PRECISIONS[self.precision]
        with torch.autocast(device_type=self.device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            return self._runner(**batch)

    def _batch(self, units: list[Unit], requests: list[Request]) -> dict[str, torch.Tensor]:
        """The processor's `collate(encode_batch(...))` for the rows (without label-encoder ids when label vectors
        come from the cache). Rows whose planned ids fit the budget and need nothing else are padded as they are:
        their texts and labels were checked when the call came in."""
        if not (self._direct_items and all(len(u.ids) <= self.processor.budget for u in units)):
            items = self.processor.encode_batch(
                [u.text for u in units],
                [u.labels for u in units],
                [r.prompt for r in requests],
                [r.examples for r in requests],
                label_ids=not self.use_label_cache,
                token_ids=[u.ids for u in units],
            )
            return self.processor.collate(items, label_ids=not self.use_label_cache)
        if self._arch != "bi-encoder":  # the processor's guard: one <<LABEL>> per label
            for u in units:
                found = u.ids.count(self._class_token)
                if found != len(u.labels):
                    raise ValueError(f"built {found} {LABEL_TOKEN} tokens for {len(u.labels)} labels")
        batch = pad_ids([u.ids for u in units], self._pad)
        counts = np.array([len(u.labels) for u in units])
        batch["labels_mask"] = torch.from_numpy(np.arange(counts.max()) < counts[:, None])
        return batch

    def _cache_labels(self, labels: set[str]) -> None:
        """Encode labels missing from the cache (bi-encoders: a label's vector does not depend on the text)."""
        labels = labels - self._label_vectors.keys()
        missing = sorted(label for label in labels if label not in self._label_cache)
        for label in labels & self._label_cache.keys():
            self._label_cache.move_to_end(label)
        for name, vector in zip(missing, self._encode_labels(missing), strict=True):
            self._label_cache[name] = vector
        while len(self._label_cache) > max(self.label_cache_size, len(labels)):
            self._label_cache.popitem(last=False)

    def _encode_labels(self, names: list[str]) -> list[torch.Tensor]:
        """The label tower's vector of each name (bi-encoders), in chunks."""
        out: list[torch.Tensor] = []
        step = max(64, self.batch_size * 8)
        with torch.inference_mode():
            for start in range(0, len(names), step):
                ids = self.processor.label_ids(names[start : start + step])
                padded = pad_ids(ids, self.processor.label_tokenizer.pad_token_id or 0)
                out += list(
                    self.model.encode_labels(
                        padded["input_ids"].to(self.device), padded["attention_mask"].to(self.device)
                    )
                )
        return out

    # ----------------------------------------------------------------- scores
    def _aggregation(self, multi: bool) -> str:
        return self.aggregation or ("max" if multi else "mean")

    def _scores(self, result: _Result, multi: bool) -> list[float]:
        """Chunk logits [K, C] -> one score per label (softmax over all the text's labels in single-label mode)."""
        logits = result.logits
        activation = torch.sigmoid if multi else lambda x: torch.softmax(x, dim=-1)
        how = self._aggregation(multi)
        if how == "logit-mean":
            return activation(logits.mean(0)).tolist()
        probs = activation(logits)
        if len(probs) == 1:  # one chunk: its max and its mean are itself
            return probs[0].tolist()
        return (probs.max(0).values if how == "max" else probs.mean(0)).tolist()


# --------------------------------------------------------------------- helpers
def missing_cpp_compiler() -> str | None:
    """Why torch.compile cannot build CPU kernels here (no C++ compiler found), or None when it can."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as error:
        return str(error)
    return None


class _Compiled:
    """`torch.compile(model, dynamic=True)` run with inductor weight freezing (constant-folded, prepacked weights).

    Freezing is an inductor config flag read while the graph is lowered (lazily, at a new input specialisation),
    so it is patched in around every call instead of being set process-wide; `torch.compile(options=...)` did not
    turn it on here (torch 2.13: measured no speed-up)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        missing = missing_cpp_compiler() if device.type == "cpu" else None
        if missing is not None:  # inductor's CPU kernels are C++: fail now, with the reason, not at the first call
            raise RuntimeError(
                f"compile=True on CPU needs a C++ compiler (g++ or $CXX) for torch.compile: {missing}; install one "
                "or leave compile off"
            )
        self.compiled = torch.compile(model, dynamic=True)

    def __call__(self, **batch: Any) -> Any:
        from torch._inductor import config as inductor_config

        if inductor_config.freezing:  # already on (set by the caller)
            return self.compiled(**batch)
        # set and restored by hand: `inductor_config.patch(...)` costs ~30-80 us a call, more than a tiny forward's
        # guard checks
        inductor_config.freezing = True
        try:
            return self.compiled(**batch)
        finally:
            inductor_config.freezing = False


def check_prototype_model(config: Any) -> None:
    """Label prototypes mix label and text vectors, which is sound where a label's score for a text is the dot
    product of the two: a bi-encoder (not the fused one, whose label vectors enter the text encoder) with the dot
    scorer."""
    if config.architecture_type != "bi-encoder" or config.scorer_type != "simple":
        raise ValueError(
            f"label prototypes need a bi-encoder with the dot scorer (scorer_type 'simple'); this model is a "
            f"{config.architecture_type} with scorer {config.scorer_type!r}"
        )


def _load_torch_model(path: str) -> torch.nn.Module:
    from gliclass.modeling import GLiClassModel

    try:  # SDPA where the backbone has it; backbones without it keep their default attention
        return GLiClassModel.from_pretrained(path, attn_implementation="sdpa")
    except (ValueError, ImportError):
        return GLiClassModel.from_pretrained(path)


def _nest(structure: Any, scores: dict[str, float], pipe: ZeroShotPipeline, prefix: str = "") -> Any:
    """Scores arranged like the input labels: nested dicts of {name: score}."""
    join = (lambda name: f"{prefix}{pipe.label_separator}{name}") if prefix else (lambda name: name)
    if isinstance(structure, Mapping):
        return {key: _nest(value, scores, pipe, join(key)) for key, value in structure.items()}
    if isinstance(structure, str):
        return {structure: scores[join(structure)]}
    return {label: scores[join(label)] for label in structure}
