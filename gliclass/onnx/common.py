"""What the exporter writes and the runtime reads: the export's file names and the text graph's input names.

A leaf module (standard library only), so `gliclass.onnx.export` and `gliclass.onnx.runtime` share it without
importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path

META_FILE = "gliclass_onnx.json"
TEXT_GRAPH = "model.onnx"
LABEL_GRAPH = "label_encoder.onnx"


def text_input_names(architecture: str) -> list[str]:
    names = ["input_ids", "attention_mask", "labels_mask"]
    if architecture in ("bi-encoder", "bi-encoder-fused"):
        names.append("class_embeddings")
    elif architecture == "encoder-decoder":
        names += ["class_input_ids", "class_attention_mask"]
    return names


def has_onnx_export(path: str | os.PathLike) -> bool:
    return (Path(path) / META_FILE).is_file() and (Path(path) / TEXT_GRAPH).is_file()
