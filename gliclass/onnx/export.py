"""Export a GLiClass model to ONNX (dynamic batch, sequence and label axes), optionally int8-quantised.

Files written to the output directory:
- `model.onnx`: the text graph. Inputs `input_ids`, `attention_mask` [B, L] and `labels_mask` [B, C] (int64); for
  bi-encoders also `class_embeddings` [B, C, D], for encoder-decoders `class_input_ids`, `class_attention_mask`.
  Outputs `logits` [B, C], `text_embeddings`, `class_embeddings`.
- `label_encoder.onnx` (bi-encoders): `class_input_ids`, `class_attention_mask` [N, Lc] -> `label_embeddings` [N, D],
  so label vectors are computed once and cached, as with torch.
- `*.int8.onnx` with `quantize="int8"` (onnxruntime dynamic quantisation: int8 weights, activations quantised on
  the fly; per-channel, SmoothQuant-calibrated, embedding tables and a bi-encoder's label tower left in fp32: see
  `gliclass.onnx.quantize`). The top-1 agreement of the int8 export with the fp32 one on probe texts is measured
  and recorded under `int8.agreement`.
- `config.json`, the tokenizer files and `gliclass_onnx.json` (which files exist, the fusions, the parity check).

Speed: the graphs are traced with the backbones' plain ("eager") attention, which onnxruntime's transformer optimizer
fuses, for BERT-family encoders, into its `Attention`, `SkipLayerNormalization`, `EmbedLayerNormalization` and
`BiasGelu` kernels (the SDPA trace, with its NaN guard, matches no fusion pattern). Those are onnxruntime contrib ops
(CPU and CUDA providers); `optimize=False` writes plain ONNX ops for other runtimes.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from gliclass.onnx import quantize as int8
from gliclass.onnx.common import LABEL_GRAPH, META_FILE, TEXT_GRAPH, text_input_names
from gliclass.onnx.common import has_onnx_export as has_onnx_export  # re-exported: it was defined here
from gliclass.processing import GLiClassProcessor

QUANTIZATIONS = ("int8",)
EXPORTERS = ("torchscript", "dynamo")
OPSET = 17  # the TorchScript exporter's opset 18 graphs (e.g. ReduceMean with axes as an input) defeat the fusions
# encoders with BERT's layer layout, which onnxruntime's "bert" fusions match
FUSED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra")


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


def _sample_inputs(model: nn.Module, processor: GLiClassProcessor) -> dict[str, torch.Tensor]:
    """Two rows of different lengths and label counts (> 1 each, so no axis is specialised to a constant)."""
    return int8.model_inputs(
        model,
        processor,
        ["A short example text.", "Another, somewhat longer example text so that the batch needs padding."],
        [["sports", "politics", "science and technology"], ["positive", "negative"]],
    )


class _Positional(nn.Module):
    """`module` called with its inputs by position, in `names` order (the TorchScript exporter takes no kwargs)."""

    def __init__(self, module: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.module, self.names = module, names
        # the TorchScript exporter restores the wrapper's training flag onto every child when it is done: a fresh
        # module's True would leave the model's dropout on
        self.eval()

    def forward(self, *args: torch.Tensor) -> Any:
        return self.module(**dict(zip(self.names, args, strict=True)))


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Within: every backbone of `model` runs the plain attention (matmul, mask add, softmax), the pattern that
    onnxruntime fuses; the previous implementation is restored on exit."""
    configs = {id(m.config): m.config for m in model.modules() if isinstance(m, PreTrainedModel) and m is not model}
    saved = {key: config._attn_implementation for key, config in configs.items()}
    try:
        for config in configs.values():
            config._attn_implementation = "eager"
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation = saved[key]


def _export(
    module: nn.Module,
    inputs: dict[str, torch.Tensor],
    names: list[str],
    outputs: list[str],
    axes: dict[str, dict[int, str]],
    path: Path,
    exporter: str,
) -> None:
    args = tuple(inputs[name] for name in names)  # the graphs take different optional inputs
    if exporter == "torchscript":
        options = {"dynamic_axes": {name: axes[name] for name in names + outputs if name in axes}, "dynamo": False}
    else:
        dims = {label: torch.export.Dim(label, min=1) for spec in axes.values() for label in spec.values()}
        options = {
            "dynamic_shapes": [{axis: dims[label] for axis, label in axes[name].items()} for name in names],
            "dynamo": True,
            "optimize": True,
            "external_data": sum(p.numel() * p.element_size() for p in module.parameters()) > 1.8 * 2**30,
        }
    # the exporters print progress on stdout, which would corrupt the CLI's JSON output
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Positional(module, names),
            args,
            str(path),
            input_names=names,
            output_names=outputs,
            opset_version=OPSET,
            **options,
        )


def graph_inputs(path: Path) -> list[str]:
    import onnx

    return [value.name for value in onnx.load(str(path), load_external_data=False).graph.input]


def fuse(path: Path, encoder: PretrainedConfig) -> dict[str, int]:
    """Rewrite the graph at `path` with onnxruntime's transformer fusions for `encoder` (BERT-family only; others are
    left as traced); returns how many of each fused op it holds."""
    if encoder.model_type not in FUSED_MODEL_TYPES:
        return {}
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)  # "symbolic shape inference failed" etc.
    with contextlib.redirect_stdout(io.StringIO()):
        fused = optimize_model(
            str(path),
            model_type="bert",
            num_heads=encoder.num_attention_heads,
            hidden_size=encoder.hidden_size,
            opt_level=0,  # fusions only: onnxruntime applies its own graph optimisations when it loads the file
        )
        fused.save_model_to_file(str(path), use_external_data_format=path.stat().st_size > 1.8 * 2**30)
    return {op: count for op, count in fused.get_fused_operator_statistics().items() if count}


def export_onnx(
    model: nn.Module,
    processor: GLiClassProcessor,
    out_dir: str | os.PathLike,
    quantize: str | None = None,
    optimize: bool = True,
    check: bool = True,
    exporter: str = "torchscript",
    calibration: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write the ONNX graphs, tokenizer and config of `model` to `out_dir`; return the metadata written.

    optimize: fuse attention, LayerNorm and GELU into onnxruntime's kernels (see the module docstring).
    check: run the sample batch through onnxruntime and record the largest logit difference to torch.
    exporter: "torchscript" (the traced graph the fusions match) or "dynamo" (`torch.export`; fewer fusions match).
    calibration: with `quantize="int8"`, rows `{"text", "labels"?}` (`gliclass.onnx.quantize.read_calibration`) to
    calibrate the quantisation on and to measure its agreement with fp32 on; None: the built-in probe texts.
    """
    architecture = model.config.architecture_type
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize={quantize!r} is not supported; choose one of {list(QUANTIZATIONS)} or None")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter={exporter!r}; choose one of {list(EXPORTERS)}")
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
        "text_embeddings": {0: "batch"},
        "class_embeddings_out": {0: "batch", 1: "num_labels"},
    }
    names = text_input_names(architecture)
    files = {"text": TEXT_GRAPH}
    fusions = {}
    config = model.config
    text_encoder = config.encoder_config if architecture != "encoder-decoder" else None
    with torch.no_grad(), eager_attention(model) if optimize else contextlib.nullcontext():
        _export(
            TextGraph(model),
            inputs,
            names,
            ["logits", "text_embeddings", "class_embeddings_out"],
            axes,
            out / TEXT_GRAPH,
            exporter,
        )
        if optimize and text_encoder is not None:
            fusions["text"] = fuse(out / TEXT_GRAPH, text_encoder)
        if config.uses_label_encoder:
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
                exporter,
            )
            files["labels"] = LABEL_GRAPH
            if optimize:
                fusions["labels"] = fuse(out / LABEL_GRAPH, config.label_model_config)
    config.save_pretrained(out)
    processor.save_pretrained(out)
    meta: dict[str, Any] = {
        "architecture_type": architecture,
        "files": files,
        "inputs": graph_inputs(out / TEXT_GRAPH),
        "opset": OPSET,
        "exporter": exporter,
        "fusions": fusions,
    }
    if quantize == "int8":
        decisions = int8.probe_rows(calibration)
        feeds = int8.calibration_feeds(model, processor, decisions, meta["inputs"])
        text_int8, settings = int8.quantize_graph(out / TEXT_GRAPH, feeds)
        # a bi-encoder's label tower stays fp32: its vectors are cached per label, and each one decides every text
        meta["int8_files"] = {"text": text_int8, **({"labels": files["labels"]} if "labels" in files else {})}
        meta["int8"] = {**settings, "label_tower": "fp32" if "labels" in files else None}
    (out / META_FILE).write_text(json.dumps(meta, indent=2))
    if quantize == "int8":
        report = int8.agreement(out, decisions)
        meta["int8"]["agreement"] = {**report, "source": "calibration" if calibration is not None else "probe"}
        (out / META_FILE).write_text(json.dumps(meta, indent=2))
    if check:
        meta["max_abs_logit_diff"] = parity(model, out, inputs)
        (out / META_FILE).write_text(json.dumps(meta, indent=2))
    return meta


def quantize_int8(path: Path, calibration: Any = None, **settings: Any) -> str:
    """Dynamic int8 quantisation of one graph (`gliclass.onnx.quantize.quantize_graph`: per-channel weights, fp32
    embedding tables, SmoothQuant when `calibration` feeds are given); returns the new file name (beside `path`)."""
    return int8.quantize_graph(Path(path), calibration, **settings)[0]


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
