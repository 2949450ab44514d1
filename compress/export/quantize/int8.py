"""int8 ONNX with ``onnxruntime.quantization``: static QDQ or dynamic, symmetric per-channel weights.

Weights are quantized per output channel, symmetric, zero point 0, so a pruned weight (exactly 0.0)
becomes exactly int8 0: ``check_int8_zeros`` counts it per parameter. A surviving weight smaller than half
a quantization step also becomes 0; those are reported as ``rounded_to_zero``, never hidden.

Choice for ``int8`` (automatic), measured in ``benchmarks/results/int8_inference.md`` (onnxruntime 1.32,
2-core AVX-512 VNNI EPYC): a graph with no Conv -- Linear-only nets such as LeNet-300-100 -- gets
**dynamic** quantization (weights int8 offline, activations quantized per batch at run time: no calibration,
MatMulInteger kernels); a graph with Conv gets **static QDQ** (activation ranges calibrated on training
images, so ONNX Runtime fuses QLinearConv and keeps activations int8 between layers, where dynamic
quantization would re-quantize every layer's input at run time and leaves Conv-heavy nets slower).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from compress.errors import UserError
from compress.export.onnx.preprocess import copy_metadata
from compress.registry import QUANTIZE_MODES

MODES = ("int8", "int8-static", "int8-dynamic")
for _mode, _what in zip(("none", *MODES), ("no int8 file", "static for Conv graphs, dynamic otherwise",
                                           "static QDQ, calibrated activations", "dynamic activations"), strict=True):
    QUANTIZE_MODES.register(_mode)(_what)
# what gets int8 weights: the layers pruning touches; Add / Mul / Sub / Div (embedded preprocessing,
# residual adds) stay float, which keeps the preprocessing exact
OP_TYPES = ["Conv", "Gemm", "MatMul"]


@dataclass
class Int8Result:
    """A quantized model and how it was made."""

    data: bytes
    mode: str  # int8-static | int8-dynamic (the one used)
    rule: str  # why this mode
    calibration_examples: int = 0
    zeros: dict[str, dict] = field(default_factory=dict)


def _quiet_onnxruntime(record: logging.LogRecord) -> bool:
    """A root-logger filter: False (drop) for onnxruntime.quantization's records below ERROR."""
    return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname.replace("\\", "/")


def choose_mode(proto: onnx.ModelProto, mode: str) -> tuple[str, str]:
    """The mode ``int8`` resolves to, with the documented rule (module docstring)."""
    if mode not in MODES:
        raise UserError(f"export.quantize: {mode!r} is not one of none, {', '.join(MODES)}")
    if mode != "int8":
        return mode, "asked for"
    if any(node.op_type == "Conv" for node in proto.graph.node):
        return "int8-static", "automatic: the graph has Conv layers -> static QDQ (calibrated activations)"
    return "int8-dynamic", "automatic: no Conv layer (Linear-only) -> dynamic (measured faster, no calibration)"


class _Reader:
    """``CalibrationDataReader``: the calibration inputs in batches of 32."""

    def __init__(self, name: str, inputs: np.ndarray, batch: int = 32) -> None:
        self.batches = iter([{name: inputs[i:i + batch]} for i in range(0, len(inputs), batch)])

    def get_next(self):
        return next(self.batches, None)

    def rewind(self) -> None:  # older onnxruntime versions never call it; kept for the protocol
        pass


def quantize_onnx(model: bytes | str | Path | onnx.ModelProto, out: str | Path | None = None, *,
                  mode: str = "int8", calibration: np.ndarray | None = None) -> Int8Result:
    """Quantize an fp32 ONNX model to int8 (per-channel symmetric weights); writes ``out`` when given.

    ``calibration``: graph inputs (already preprocessed the way the model expects, float32 N x ...) for
    static quantization -- a few hundred training images; required for ``int8-static`` and for ``int8``
    on a graph with Conv. The fp32 file's ``metadata_props`` (its preprocessing) are carried over.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    proto = _proto(model)
    used, rule = choose_mode(proto, mode)
    if used == "int8-static" and (calibration is None or len(calibration) == 0):
        raise UserError("int8 static quantization needs calibration inputs (training images)")
    with tempfile.TemporaryDirectory(prefix="compress-int8-") as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        onnx.save(proto, str(source))
        # onnxruntime logs "consider pre-processing" advice on the root logger: our graphs are already
        # shape-inferred. Drop only its records below ERROR; the process's logging levels stay as they are.
        logger = logging.getLogger()
        logger.addFilter(_quiet_onnxruntime)
        try:
            if used == "int8-dynamic":
                quantize_dynamic(str(source), str(target), per_channel=True, weight_type=QuantType.QInt8,
                                 op_types_to_quantize=OP_TYPES, extra_options={"WeightSymmetric": True})
            else:
                name = proto.graph.input[0].name
                quantize_static(str(source), str(target), _Reader(name, calibration.astype(np.float32)),
                                quant_format=QuantFormat.QDQ, per_channel=True, op_types_to_quantize=OP_TYPES,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax,
                                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        finally:
            logger.removeFilter(_quiet_onnxruntime)
        quantized = onnx.load(str(target))
    copy_metadata(proto, quantized)
    prop = quantized.metadata_props.add()
    prop.key, prop.value = "compress.quantization", used
    data = quantized.SerializeToString()
    if out is not None:
        from compress.io import save_bytes

        save_bytes(data, Path(out))
    count = 0 if used == "int8-dynamic" or calibration is None else len(calibration)
    return Int8Result(data=data, mode=used, rule=rule, calibration_examples=count)


def check_int8_zeros(proto: onnx.ModelProto, fp32_zeros: dict[str, dict], weights: dict[str, np.ndarray],
                     what: str) -> dict[str, dict]:
    """Every exact zero of each fp32 weight is an exact int8 zero, with zero point 0.

    ``fp32_zeros``: the fp32 report's ``zeros`` (parameter -> its ``initializer`` name); ``weights``: the
    folded fp32 weights by parameter. The int8 initializer is ``<initializer>[_Transposed]_quantized``.
    """
    arrays = {init.name: init for init in proto.graph.initializer}
    result: dict[str, dict] = {}
    for param, entry in fp32_zeros.items():
        base = entry["initializer"]
        name = next((n for n in (f"{base}_quantized", f"{base}_Transposed_quantized") if n in arrays), None)
        if name is None:
            raise UserError(f"{what}: no int8 initializer for parameter {param!r} (looked for {base}_quantized)")
        q = numpy_helper.to_array(arrays[name])
        weight = weights[param]
        if name.endswith("_Transposed_quantized") and weight.ndim == 2:
            weight = weight.T  # a Linear as MatMul: the quantizer stores W^T (a square W looks the same)
        if q.shape != weight.shape:
            raise UserError(f"{what}: int8 initializer {name!r} {q.shape} does not fit parameter {param!r} "
                             f"{weight.shape}")
        zero_point = arrays.get(name.replace("_quantized", "_zero_point"))
        if zero_point is not None and np.any(numpy_helper.to_array(zero_point) != 0):
            raise UserError(f"{what}: parameter {param!r}: weight zero points are not all 0 (asymmetric weights)")
        lost = int(np.count_nonzero(q[weight == 0]))
        if lost:
            raise UserError(f"{what}: parameter {param!r}: {lost} weights that are exactly 0 in fp32 are not 0 in int8")
        zeros_fp32, zeros_int8 = int(np.sum(weight == 0)), int(np.sum(q == 0))
        result[param] = {"initializer": name, "dtype": str(q.dtype), "total": int(q.size),
                         "pruned": int(entry["pruned"]), "zeros_fp32": zeros_fp32, "zeros_int8": zeros_int8,
                         "rounded_to_zero": zeros_int8 - zeros_fp32}
    return result


def _proto(model: bytes | str | Path | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    path = Path(model)
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file")
    return onnx.load(str(path))
