"""ONNX export and an onnxruntime backend for `ZeroShotPipeline` (needs the `onnx` extra)."""

from gliclass.onnx.common import has_onnx_export
from gliclass.onnx.export import export_onnx, quantize_int8
from gliclass.onnx.runtime import OnnxModel

__all__ = ["OnnxModel", "export_onnx", "has_onnx_export", "quantize_int8"]
