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
from gliclass.onnx.export import META_FILE, text_input_names


class OnnxModel:
    """An exported GLiClass model (see `export_onnx`); call it like `GLiClassModel` (torch tensors in and out)."""

    def __init__(self, config: GLiClassConfig, text_session: Any, label_session: Any | None = None) -> None:
        self.config = config
        self.text_session = text_session
        self.label_session = label_session
        self.input_names = [i.name for i in text_session.get_inputs()]
        expected = text_input_names(config.architecture_type)
        if self.input_names != expected:
            raise ValueError(
                f"ONNX graph inputs {self.input_names} do not match {config.architecture_type}: {expected}"
            )
        if config.uses_label_encoder and label_session is None:
            raise ValueError(f"{config.architecture_type} needs the label-encoder graph")

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, quantized: bool = False, providers: list[str] | None = None, threads: int = 0
    ) -> OnnxModel:
        """Load an export directory; `quantized` picks the int8 graphs; `threads`=0 lets onnxruntime decide."""
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
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
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
        logits, text, classes = self.text_session.run(None, {name: _np(feed[name]) for name in self.input_names})
        return GLiClassOutput(
            logits=torch.from_numpy(logits),
            labels_mask=labels_mask.cpu(),
            text_embeddings=torch.from_numpy(text),
            class_embeddings=torch.from_numpy(classes),
            token_mask=attention_mask.cpu(),
        )

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
