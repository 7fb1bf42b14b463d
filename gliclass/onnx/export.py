"""Export a GLiClass model to ONNX (dynamic batch, sequence and label axes), optionally int8-quantised.

Files written to the output directory:
- `model.onnx`: the text graph. Inputs `input_ids`, `attention_mask` [B, L] and `labels_mask` [B, C] (int64); for
  bi-encoders also `class_embeddings` [B, C, D], for encoder-decoders `class_input_ids`, `class_attention_mask`.
  Outputs `logits` [B, C], `text_embeddings`, `class_embeddings`.
- `label_encoder.onnx` (bi-encoders): `class_input_ids`, `class_attention_mask` [N, Lc] -> `label_embeddings` [N, D],
  so label vectors are computed once and cached, as with torch.
- `*.int8.onnx` with `quantize="int8"` (onnxruntime dynamic quantisation: int8 weights, activations quantised on
  the fly).
- `config.json`, the tokenizer files and `gliclass_onnx.json` (which files exist, and the parity check result).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gliclass.processing import GLiClassProcessor

META_FILE = "gliclass_onnx.json"
TEXT_GRAPH = "model.onnx"
LABEL_GRAPH = "label_encoder.onnx"
QUANTIZATIONS = ("int8",)
OPSET = 18


class TextGraph(nn.Module):
    """GLiClassModel.forward with tensor-only inputs/outputs (ONNX has no bool masks or dataclasses)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels_mask: torch.Tensor,
        class_embeddings: torch.Tensor | None = None,
        class_input_ids: torch.Tensor | None = None,
        class_attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels_mask=labels_mask.bool(),
            class_input_ids=class_input_ids,
            class_attention_mask=class_attention_mask,
            class_embeddings=class_embeddings,
        )
        return out.logits, out.text_embeddings, out.class_embeddings


class LabelGraph(nn.Module):
    """The bi-encoder label tower: tokenised labels -> label vectors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, class_input_ids: torch.Tensor, class_attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_labels(class_input_ids, class_attention_mask)


def text_input_names(architecture: str) -> list[str]:
    names = ["input_ids", "attention_mask", "labels_mask"]
    if architecture in ("bi-encoder", "bi-encoder-fused"):
        names.append("class_embeddings")
    elif architecture == "encoder-decoder":
        names += ["class_input_ids", "class_attention_mask"]
    return names


def has_onnx_export(path: str | os.PathLike) -> bool:
    return (Path(path) / META_FILE).is_file() and (Path(path) / TEXT_GRAPH).is_file()


def _sample_inputs(model: nn.Module, processor: GLiClassProcessor) -> dict[str, torch.Tensor]:
    """Two rows of different lengths and label counts (> 1 each, so no axis is specialised to a constant)."""
    batch = processor(
        ["A short example text.", "Another, somewhat longer example text so that the batch needs padding."],
        [["sports", "politics", "science and technology"], ["positive", "negative"]],
    )
    batch["labels_mask"] = batch["labels_mask"].long()
    if model.config.uses_label_encoder:
        with torch.inference_mode():
            rows, cols = batch["labels_mask"].bool().nonzero(as_tuple=True)
            flat = model.encode_labels(batch["class_input_ids"][rows, cols], batch["class_attention_mask"][rows, cols])
        vectors = flat.new_zeros(*batch["labels_mask"].shape, flat.shape[-1])
        vectors[rows, cols] = flat
        batch["class_embeddings"] = vectors.clone()
    return batch


def _export(
    module: nn.Module,
    inputs: dict[str, torch.Tensor],
    names: list[str],
    outputs: list[str],
    axes: dict[str, dict[int, str]],
    path: Path,
    optimize: bool,
) -> None:
    kwargs = {name: inputs[name] for name in names}  # by name: the graphs take different optional inputs
    large = sum(p.numel() * p.element_size() for p in module.parameters()) > 1.8 * 2**30
    dims = {label: torch.export.Dim(label, min=1) for spec in axes.values() for label in spec.values()}
    shapes = {name: {axis: dims[label] for axis, label in axes[name].items()} for name in names}
    # the exporter prints progress on stdout, which would corrupt the CLI's JSON output
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _torch_export(module, kwargs, names, outputs, shapes, path, optimize, large)


def _torch_export(
    module: nn.Module,
    kwargs: dict[str, torch.Tensor],
    names: list[str],
    outputs: list[str],
    shapes: dict[str, Any],
    path: Path,
    optimize: bool,
    large: bool,
) -> None:
    torch.onnx.export(
        module,
        (),
        str(path),
        kwargs=kwargs,
        input_names=names,
        output_names=outputs,
        dynamic_shapes=shapes,
        opset_version=OPSET,
        dynamo=True,
        optimize=optimize,
        external_data=large,
    )


def export_onnx(
    model: nn.Module,
    processor: GLiClassProcessor,
    out_dir: str | os.PathLike,
    quantize: str | None = None,
    optimize: bool = True,
    check: bool = True,
) -> dict[str, Any]:
    """Write the ONNX graphs, tokenizer and config of `model` to `out_dir`; return the metadata written.

    optimize: let the exporter fold constants and fuse patterns (slower export, leaner graph).
    check: run the sample batch through onnxruntime and record the largest logit difference to torch.
    """
    architecture = model.config.architecture_type
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize={quantize!r} is not supported; choose one of {list(QUANTIZATIONS)} or None")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").eval()
    inputs = _sample_inputs(model, processor)
    seq = {0: "batch", 1: "sequence"}
    axes = {
        "input_ids": seq,
        "attention_mask": seq,
        "labels_mask": {0: "batch", 1: "num_labels"},
        "class_embeddings": {0: "batch", 1: "num_labels"},
        "class_input_ids": {0: "batch", 1: "label_sequence"},
        "class_attention_mask": {0: "batch", 1: "label_sequence"},
        "logits": {0: "batch", 1: "num_labels"},
        "class_embeddings_out": {0: "batch", 1: "num_labels"},
    }
    names = text_input_names(architecture)
    files = {"text": TEXT_GRAPH}
    with torch.no_grad():
        _export(
            TextGraph(model),
            inputs,
            names,
            ["logits", "text_embeddings", "class_embeddings_out"],
            axes,
            out / TEXT_GRAPH,
            optimize,
        )
        if model.config.uses_label_encoder:
            rows, cols = inputs["labels_mask"].bool().nonzero(as_tuple=True)
            label_inputs = {
                "class_input_ids": inputs["class_input_ids"][rows, cols],
                "class_attention_mask": inputs["class_attention_mask"][rows, cols],
            }
            label_axes = {
                "class_input_ids": {0: "num_labels", 1: "label_sequence"},
                "class_attention_mask": {0: "num_labels", 1: "label_sequence"},
                "label_embeddings": {0: "num_labels"},
            }
            _export(
                LabelGraph(model),
                label_inputs,
                ["class_input_ids", "class_attention_mask"],
                ["label_embeddings"],
                label_axes,
                out / LABEL_GRAPH,
                optimize,
            )
            files["labels"] = LABEL_GRAPH
    model.config.save_pretrained(out)
    processor.save_pretrained(out)
    meta: dict[str, Any] = {
        "architecture_type": architecture,
        "files": files,
        "inputs": names,
        "opset": OPSET,
    }
    if quantize == "int8":
        meta["int8_files"] = {role: quantize_int8(out / name) for role, name in files.items()}
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    if check:
        meta["max_abs_logit_diff"] = parity(model, out, inputs)
        (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return meta


def quantize_int8(path: Path) -> str:
    """Dynamic int8 quantisation of one graph; returns the new file name (beside the original)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = path.with_name(path.stem + ".int8.onnx")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / path.name
        try:  # shape inference + graph clean-up lets more MatMuls be quantised
            quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
            source = prepared
        except Exception:  # noqa: BLE001 -- pre-processing is an optimisation; quantise the raw graph instead
            source = path
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    return target.name


def parity(model: nn.Module, out_dir: Path, inputs: dict[str, torch.Tensor]) -> float:
    """Largest |logit| difference between torch and the exported fp32 graph on `inputs`."""
    from gliclass.onnx.runtime import OnnxModel

    onnx_model = OnnxModel.from_pretrained(out_dir)
    kwargs = {k: v for k, v in inputs.items() if k != "class_embeddings"}
    with torch.inference_mode():
        expected = model(**{**kwargs, "labels_mask": kwargs["labels_mask"].bool()}).logits
    got = onnx_model(**kwargs).logits
    mask = inputs["labels_mask"].bool()
    return float((expected[mask] - got[mask]).abs().max())
