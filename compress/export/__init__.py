"""ONNX export of pruned models and tickets, by job: ``onnx`` (export, verification, preprocessing metadata,
accuracy from raw images), ``quantize`` (int8 static/dynamic, QAT, dequantization), ``artifact`` (the compressed
``.cta`` ticket file, its coding and the size table).

    from compress.export import export_onnx, quantize_onnx
    report = export_onnx(model, "ticket.onnx", example_input, compact=True)
    onnx_test_accuracy("ticket.onnx", recipe)              # from raw test pixels, as the file's metadata says

A run directory's export (``export_run``) is application code: ``compress.pipeline``. Compaction (torch-to-torch
surgery) lives with pruning: ``compress.pruning.compact``.
"""

from compress.export.onnx import (
    EXPORTER,
    OPSET_RANGE,
    CompactReport,
    ExportReport,
    Preprocess,
    apply_preprocess,
    export_onnx,
    onnx_test_accuracy,
    raw_test_batches,
    read_metadata,
    save_sparse_onnx,
    sparsify,
    storage_sizes,
)
from compress.export.quantize.int8 import check_int8_zeros, quantize_onnx
from compress.pruning.macs import count_macs, count_params

__all__ = [
    "EXPORTER", "OPSET_RANGE", "CompactReport", "ExportReport", "count_macs", "count_params", "export_onnx",
    "save_sparse_onnx", "sparsify", "storage_sizes", "Preprocess", "apply_preprocess", "check_int8_zeros",
    "onnx_test_accuracy", "quantize_onnx", "raw_test_batches", "read_metadata",
]
