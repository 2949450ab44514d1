"""int8 for exported ONNX files: static / dynamic quantization, QAT fine-tuning, the int8 export of a ticket,
and dequantization (for the artifact's float view)."""

from compress.export.quantize.int8 import check_int8_zeros, quantize_onnx

__all__ = ["check_int8_zeros", "quantize_onnx"]
