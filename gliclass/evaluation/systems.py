"""The systems we evaluate and time: our GLiClass pipeline, and two baselines on the same MiniLM backbone.

Every system has `scores(texts, labels, multi_label) -> [N, C] np.ndarray` (softmax over the labels for
single-label, independent per-label probabilities for multi-label) and `predict(texts, labels, multi_label)`,
the user-facing call that the speed benchmark times.

- `GLiClassSystem`: `gliclass.pipeline.ZeroShotPipeline` (torch or ONNX model).
- `EmbeddingSimilarity`: sentence-transformers-style cosine between mean-pooled, L2-normalised embeddings.
- `PairwiseCrossEncoder`: NLI-style, one forward per (text, "This example is {label}.") pair, a linear head on
  [CLS]; untrained unless `train_nli` is run on SNLI.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from gliclass.modeling import GLiClassModel, resolve_backbone
from gliclass.pipeline import PRECISIONS, ZeroShotPipeline
from gliclass.processing import GLiClassProcessor, backbone_position_limit

NLI_CLASSES = ("entailment", "neutral", "contradiction")


class System(Protocol):
    name: str

    def scores(self, texts: Sequence[str], labels: Sequence[str], multi_label: bool) -> np.ndarray: ...

    def predict(self, texts: Sequence[str], labels: Sequence[str], multi_label: bool) -> Any: ...


def _activate(logits: torch.Tensor, multi_label: bool) -> np.ndarray:
    probs = torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)
    return probs.float().numpy()


class GLiClassSystem:
    """Our model through `gliclass.pipeline.ZeroShotPipeline` (label groups, chunking, bi-encoder label cache)."""

    def __init__(
        self, model: Any, processor: GLiClassProcessor, batch_size: int = 8, name: str = "ours", **pipeline_kwargs: Any
    ) -> None:
        self.name = name
        self.model = model
        self.processor = processor
        self.pipe = ZeroShotPipeline(model, processor, device="cpu", batch_size=batch_size, **pipeline_kwargs)
        self.backend = "torch" if isinstance(model, nn.Module) else type(model).__name__
        if self.pipe.compiled:
            self.backend += "+compile"

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        batch_size: int = 8,
        name: str = "ours",
        backend: str = "torch",
        threads: int | None = None,
        max_length: int | None = None,
        **pipeline_kwargs: Any,
    ) -> GLiClassSystem:
        """backend "torch": our weights (SDPA attention, the transformers default); "onnx" / "onnx-int8": an
        `export_onnx` dir (fp32 / its dynamic-int8 graphs) run by onnxruntime with `threads` intra-op threads
        (None: torch's current thread count). max_length overrides the saved processor's length budget;
        pipeline_kwargs (e.g. compile=True, long_text="truncate") go to `ZeroShotPipeline`."""
        processor = GLiClassProcessor.from_pretrained(path, **({"max_length": max_length} if max_length else {}))
        if backend in ("onnx", "onnx-int8"):
            from gliclass.onnx import OnnxModel

            threads = threads or torch.get_num_threads()
            model = OnnxModel.from_pretrained(path, quantized=backend == "onnx-int8", threads=threads)
            return cls(model, processor, batch_size, name, **pipeline_kwargs)
        model = GLiClassModel.from_pretrained(str(path), attn_implementation="sdpa")
        return cls(model, processor, batch_size, name, **pipeline_kwargs)

    @property
    def batch_size(self) -> int:
        return self.pipe.batch_size

    def set_batch_size(self, batch_size: int) -> None:
        """Changes the batch size in place, so the bi-encoder label cache and a compiled model survive."""
        self.pipe.batch_size = batch_size

    def scores(self, texts: Sequence[str], labels: Sequence[str], multi_label: bool) -> np.ndarray:
        rows = self.pipe.scores(list(texts), list(labels), multi_label=multi_label)
        return np.array([[row[label] for label in labels] for row in rows], dtype=np.float32)

    def predict(self, texts: Sequence[str], labels: Sequence[str], multi_label: bool) -> Any:
        return self.pipe(list(texts), list(labels), multi_label=multi_label)

    def forward_fn(self, texts: Sequence[str], labels: Sequence[str]) -> Callable[[], Any]:
        """The model alone (compiled / autocast as the pipeline runs it) on the tensors of one unsplit row per text,
        prepared once: the part of a call the pipeline's own work cannot remove."""
        batch = self.processor(list(texts), [list(labels)] * len(texts))
        batch = {key: value.to(self.pipe.device) for key, value in batch.items()}
        dtype = PRECISIONS[self.pipe.precision]

        def call() -> Any:
            with torch.autocast(device_type=self.pipe.device.type, dtype=dtype) if dtype else nullcontext():
                return self.pipe._runner(**batch)

        return call

    @contextmanager
    def model_stub(self, texts: Sequence[str], labels: Sequence[str]) -> Iterator[None]:
        """Within: the pipeline's model returns its output for (texts, labels) at once, whatever it is given, so a
        call times the pipeline's own work alone."""
        output, runner = self.forward_fn(texts, labels)(), self.pipe._runner
        self.pipe._runner = lambda **batch: output
        try:
            yield
        finally:
            self.pipe._runner = runner

    def labels_scored(self, text: str, labels: Sequence[str]) -> int:
        """How many of `labels` get a score for `text` (all of them, by the pipeline's contract; checked)."""
        return len(self.pipe.scores([text], list(labels))[0])


def mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens (sentence-transformers' pooling for all-MiniLM-L6-v2)."""
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class EmbeddingSimilarity:
    """Cosine similarity of sentence embeddings; scores = softmax(scale * cos) or sigmoid(scale * (cos - cutoff))."""

    def __init__(
        self,
        path: str | None = None,
        batch_size: int = 32,
        scale: float = 20.0,
        multi_label_cutoff: float = 0.3,
        max_length: int = 256,
        name: str = "embed-sim",
        device: str | torch.device = "cpu",
    ) -> None:
        """`device`: where the encoder runs (a run on the GPU passes its trainer's device); scores come back on
        the CPU as numpy arrays either way."""
        path = path or resolve_backbone("minilm")
        self.name = name
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.encoder = AutoModel.from_pretrained(path).eval().to(self.device)
        self.batch_size = batch_size
        self.scale = scale
        self.cutoff = multi_label_cutoff
        self.max_length = max_length  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2
        self._label_cache: dict[tuple[str, ...], torch.Tensor] = {}

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                list(texts[i : i + self.batch_size]),
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            ).to(self.device)
            states = self.encoder(**enc).last_hidden_state
            out.append(F.normalize(mean_pool(states, enc["attention_mask"]), dim=-1))
        return torch.cat(out)

    def cosine(self, texts: Sequence[str], labels: Sequence[str]) -> torch.Tensor:
        key = tuple(labels)
        if key not in self._label_cache:
            self._label_cache[key] = self.embed(labels)
        return self.embed(texts) @ self._label_cache[key].T

    def scores(self, texts: Sequence[str], labels: Sequence[str], multi_label: bool) -> np.ndarray:
        cos = self.cosine(texts, labels).float().cpu()
        logits = self.scale * (cos - self.cutoff) if multi_label else self.scale * cos
        return _activate(logits, multi_label)

    def predict(self, texts: Sequence[str], labels: Sequence[str], multi_label: bool) -> np.ndarray:
        return self.scores(texts, labels, multi_label)


class PairwiseCrossEncoder(nn.Module):
    """`[CLS] text [SEP] This example is {label}. [SEP]` -> linear head over NLI classes, one pair per row."""

    template = "This example is {}."

    def __init__(
        self, backbone: nn.Module, tokenizer: PreTrainedTokenizerBase, pair_batch_size: int = 32, max_length: int = 512
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.head = nn.Linear(backbone.config.hidden_size, len(NLI_CLASSES))
        self.pair_batch_size = pair_batch_size
        self.max_length = min(max_length, backbone_position_limit(backbone.config) or max_length)
        self.name = "cross-encoder"
        self.trained_on: str | None = None

    @classmethod
    def from_gliclass(cls, path: str | os.PathLike, pair_batch_size: int = 32) -> PairwiseCrossEncoder:
        """The backbone weights of a GLiClass checkpoint (the same encoder GLiClass runs), a fresh head."""
        model = GLiClassModel.from_pretrained(str(path))
        return cls(model.backbone, AutoTokenizer.from_pretrained(str(path)), pair_batch_size).eval()

    def forward(self, texts: Sequence[str], hypotheses: Sequence[str]) -> torch.Tensor:
        enc = self.tokenizer(
            list(texts),
            list(hypotheses),
            truncation="only_first",
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        )
        return self.head(self.backbone(**enc).last_hidden_state[:, 0])

    @torch.inference_mode()
    def pair_logits(self, texts: Sequence[str], labels: Sequence[str]) -> torch.Tensor:
        """[N, C, 3] NLI logits, `pair_batch_size` pairs per forward."""
        premises = [text for text in texts for _ in labels]
        hypotheses = [self.template.format(label) for _ in texts for label in labels]
        size = self.pair_batch_size
        parts = [self(premises[i : i + size], hypotheses[i : i + size]) for i in range(0, len(premises), size)]
        return torch.cat(parts).view(len(texts), len(labels), len(NLI_CLASSES))

    def scores(self, texts: Sequence[str], labels: Sequence[str], multi_label: bool) -> np.ndarray:
        """The zero-shot NLI reading: entailment vs contradiction per label, or softmax of entailment over labels."""
        logits = self.pair_logits(texts, labels)
        if multi_label:
            pair = logits[..., [NLI_CLASSES.index("entailment"), NLI_CLASSES.index("contradiction")]]
            return torch.softmax(pair, dim=-1)[..., 0].float().numpy()
        return _activate(logits[..., NLI_CLASSES.index("entailment")], multi_label=False)

    def predict(self, texts: Sequence[str], labels: Sequence[str], multi_label: bool) -> np.ndarray:
        return self.scores(texts, labels, multi_label)

    def train_nli(
        self,
        premises: Sequence[str],
        hypotheses: Sequence[str],
        labels: Sequence[str],
        epochs: int = 1,
        batch_size: int = 16,
        lr: float = 3e-5,
        seed: int = 0,
    ) -> list[float]:
        """Brief NLI fine-tuning (cross-entropy over the three classes); returns the loss per step."""
        generator = torch.Generator().manual_seed(seed)
        targets = torch.tensor([NLI_CLASSES.index(label) for label in labels])
        optimizer = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=0.01)
        losses = []
        self.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(premises), generator=generator).split(batch_size):
                logits = self([premises[i] for i in idx], [hypotheses[i] for i in idx])
                loss = F.cross_entropy(logits, targets[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
        self.eval()
        self.trained_on = f"SNLI, {len(premises)} pairs x {epochs} epoch(s)"
        return losses
