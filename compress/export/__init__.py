"""ONNX export of pruned models and tickets: verified, optionally compacted, with storage sizes.

    from compress.export import export_onnx, export_run, compact_model
    report = export_onnx(model, "ticket.onnx", example_input, compact=True)
    export_run("runs/lth_lenet300-1a2b3c", compact=True)   # -> ticket.onnx, ticket.compact.onnx, export.json
    export_run(run_dir, quantize="int8")                   # + ticket.int8.onnx, fp32 / int8 accuracy side by side
    onnx_test_accuracy("ticket.onnx", recipe)              # from raw test pixels, as the file's metadata says
"""

from compress.export.accuracy import onnx_test_accuracy, raw_test_batches
from compress.export.compact import Compaction, compact, compact_model
from compress.export.exporter import EXPORTER
from compress.export.onnx_export import OPSET_RANGE, CompactReport, ExportReport, export_onnx
from compress.export.preprocess import Preprocess, apply_preprocess, read_metadata
from compress.export.quantize import check_int8_zeros, quantize_onnx
from compress.export.run import export_run, format_report
from compress.export.storage import save_sparse_onnx, sparsify, storage_sizes
from compress.pruning.macs import count_macs, count_params

__all__ = [
    "EXPORTER", "OPSET_RANGE", "CompactReport", "Compaction", "ExportReport", "compact", "compact_model", "count_macs",
    "count_params", "export_onnx", "export_run", "format_report", "save_sparse_onnx", "sparsify", "storage_sizes",
    "Preprocess", "apply_preprocess", "check_int8_zeros", "onnx_test_accuracy", "quantize_onnx", "raw_test_batches",
    "read_metadata",
]
