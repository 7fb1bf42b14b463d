"""`OnnxModel`: onnxruntime sessions behind GLiClassModel's forward contract, so `ZeroShotPipeline` runs on it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gliclass.config import GLiClassConfig
from gliclass.modeling.architectures import GLiClassOutput
from gliclass.onnx.common import META_FILE, text_input_names

# per session run; at 512 tokens and 12 heads that is 5 rows (a batch of 32 would need 384 MiB)
ATTENTION_BYTES = 64 * 2**20


class OnnxModel:
    """An exported GLiClass model (see `export_onnx`); call it like `GLiClassModel` (torch tensors in and out)."""

    def __init__(self, config: GLiClassConfig, text_session: Any, label_session: Any | None = None) -> None:
        self.config = config
        self.text_session = text_session
        self.label_session = label_session
        self.input_names = [i.name for i in text_session.get_inputs()]
        expected = text_input_names(config.architecture_type)
        # the TorchScript exporter drops an input no op reads (a bi-encoder's scorer ignores labels_mask)
        missing = [name for name in expected if name not in self.input_names and name != "labels_mask"]
        if missing or not set(self.input_names) <= set(expected):
            raise ValueError(
                f"ONNX graph inputs {self.input_names} do not match {config.architecture_type}: {expected}"
            )
        if config.uses_label_encoder and label_session is None:
            raise ValueError(f"{config.architecture_type} needs the label-encoder graph")

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        quantized: bool = False,
        providers: list[str] | None = None,
        threads: int | None = None,
    ) -> OnnxModel:
        """Load an export directory; `quantized` picks the int8 graphs. `threads`: intra-op threads (None: torch's
        `torch.get_num_threads()`, so one setting governs both backends; 0: onnxruntime decides)."""
        import onnxruntime as ort

        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{path} holds no ONNX export ({META_FILE} missing); run `gliclass export-onnx`")
        meta = json.loads(meta_path.read_text())
        files = meta["files"]
        if quantized:
            if "int8_files" not in meta:
                raise FileNotFoundError(f"{path} has no int8 graphs; export with --quantize int8")
            files = meta["int8_files"]
        options = session_options(torch.get_num_threads() if threads is None else threads)
        providers = providers or ["CPUExecutionProvider"]

        def session(name: str) -> Any:
            return ort.InferenceSession(str(path / name), options, providers=providers)

        config = GLiClassConfig.from_pretrained(str(path))
        return cls(config, session(files["text"]), session(files["labels"]) if "labels" in files else None)

    # nn.Module-like no-ops so callers can treat both backends alike
    def eval(self) -> OnnxModel:
        return self

    def to(self, device: str | torch.device) -> OnnxModel:
        return self

    def encode_labels(self, class_input_ids: torch.Tensor, class_attention_mask: torch.Tensor) -> torch.Tensor:
        if self.label_session is None:
            raise ValueError(f"encode_labels needs a bi-encoder, not {self.config.architecture_type!r}")
        feed = {"class_input_ids": _np(class_input_ids), "class_attention_mask": _np(class_attention_mask)}
        return torch.from_numpy(self.label_session.run(None, feed)[0])

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels_mask: torch.Tensor | None = None,
        class_input_ids: torch.Tensor | None = None,
        class_attention_mask: torch.Tensor | None = None,
        class_embeddings: torch.Tensor | None = None,
        **unused: Any,
    ) -> GLiClassOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if labels_mask is None:
            raise ValueError("the ONNX model needs labels_mask (the processor always provides it)")
        labels_mask = labels_mask.bool()
        feed = {"input_ids": input_ids, "attention_mask": attention_mask, "labels_mask": labels_mask.long()}
        if self.config.uses_label_encoder:
            if class_embeddings is None:
                class_embeddings = self._gather_labels(labels_mask, class_input_ids, class_attention_mask)
            feed["class_embeddings"] = class_embeddings.float()
        elif self.config.architecture_type == "encoder-decoder":
            feed["class_input_ids"], feed["class_attention_mask"] = class_input_ids, class_attention_mask
        arrays = {name: _np(feed[name]) for name in self.input_names}
        rows = self.rows_per_run(*input_ids.shape)
        if rows >= input_ids.shape[0]:
            logits, text, classes = self.text_session.run(None, arrays)
        else:  # rows are independent: a big batch runs in slices, and its peak memory stays that of one slice
            parts = [
                self.text_session.run(None, {name: array[start : start + rows] for name, array in arrays.items()})
                for start in range(0, input_ids.shape[0], rows)
            ]
            logits, text, classes = (np.concatenate(outputs) for outputs in zip(*parts, strict=True))
        return GLiClassOutput(
            logits=torch.from_numpy(logits),
            labels_mask=labels_mask.cpu(),
            text_embeddings=torch.from_numpy(text),
            class_embeddings=torch.from_numpy(classes),
            token_mask=attention_mask.cpu(),
        )

    def rows_per_run(self, batch: int, length: int) -> int:
        """How many rows of a [batch, length] input one session run takes: as many as keep a layer's attention
        probabilities ([rows, heads, length, length] float32, which onnxruntime's CPU kernel materialises, where torch's
        SDPA streams them) within `ATTENTION_BYTES`; at least one."""
        encoder = self.config.encoder_config
        heads = getattr(encoder, "num_attention_heads", None) or getattr(encoder, "num_heads", 1)
        return max(1, ATTENTION_BYTES // (heads * length * length * 4))

    def _gather_labels(
        self, labels_mask: torch.Tensor, class_input_ids: torch.Tensor | None, class_attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Label vectors [B, C, D] for real slots (zeros elsewhere), as BiEncoder.gather_labels does."""
        if class_input_ids is None or class_attention_mask is None:
            raise ValueError("a bi-encoder needs class_input_ids/class_attention_mask or class_embeddings")
        rows, cols = labels_mask.cpu().nonzero(as_tuple=True)
        flat = self.encode_labels(class_input_ids.cpu()[rows, cols], class_attention_mask.cpu()[rows, cols])
        out = flat.new_zeros(*labels_mask.shape, flat.shape[-1])
        out[rows, cols] = flat
        return out


def _np(tensor: torch.Tensor) -> np.ndarray:
    array = tensor.detach().cpu().numpy()
    return array.astype(np.int64) if array.dtype.kind in "iub" else array.astype(np.float32)


def session_options(threads: int) -> Any:
    """Sessions for one request at a time with shapes that change every call (batch, length, label count)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # the graph is one chain of ops: parallel branches gain nothing
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # the arena keeps (and rounds up to powers of two) every block a large batch asked for, and memory patterns are
    # planned per input shape: with both off the peak at batch 32 drops by about a quarter, at no measured cost at
    # batch 1 (gliclass.onnx.bench)
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    return options
