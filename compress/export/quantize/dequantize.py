"""int8 initializers back to float: QDQ ``DequantizeLinear`` inputs and onnxruntime's dynamic-quantization
triples (``<w>[_Transposed]_quantized`` / ``_scale`` / ``_zero_point``), for ``artifact_state_dict``."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper


def _dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int) -> np.ndarray:
    shift = q.astype(np.float32) - (0 if zero is None else zero.astype(np.float32).reshape(
        [-1 if i == axis % q.ndim else 1 for i in range(q.ndim)] if zero.ndim else []))
    shape = [-1 if i == axis % q.ndim else 1 for i in range(q.ndim)] if scale.ndim else []
    return (shift * scale.astype(np.float32).reshape(shape)).astype(np.float32)


def dequantized_arrays(proto: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` with int8 weights as float32 under their torch names; scales and zero points dropped."""
    out = dict(arrays)
    for node in proto.graph.node:  # QDQ: DequantizeLinear(x_init, scale_init, zero_init?, axis)
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for name in node.input[1:]:  # scales and zero points: folded into the float weights, or activations'
            out.pop(name, None)
        source = node.input[0]
        if node.op_type != "DequantizeLinear" or source not in arrays:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        zero = arrays.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        name = source[:-len("_quantized")] if source.endswith("_quantized") else node.output[0]
        out[name] = _dequantize(arrays[source], arrays[node.input[1]], zero, attrs.get("axis", 1))
        out.pop(source, None)
    for name in [n for n in arrays if n.endswith("_quantized")]:  # onnxruntime quantize_dynamic
        stem = name[:-len("_quantized")]
        if f"{stem}_scale" not in arrays or name not in out:
            continue
        q, scale, zero = arrays[name], arrays[f"{stem}_scale"], arrays.get(f"{stem}_zero_point")
        transposed = stem.endswith("_Transposed")
        axis = (q.ndim - 1 if transposed else 0) if scale.ndim else 0
        weight = _dequantize(q, scale, zero, axis)
        torch_name = stem[:-len("_Transposed")] if transposed else stem
        out[torch_name] = weight.T.copy() if transposed else weight
        for suffix in ("_quantized", "_scale", "_zero_point"):
            out.pop(f"{stem}{suffix}", None)
    return out
