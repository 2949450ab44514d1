"""ONNX export of pruned models and tickets: verified, optionally compacted, with storage sizes.

    from compress.export import export_onnx, export_run, compact_model
    report = export_onnx(model, "ticket.onnx", example_input, compact=True)
    export_run("runs/lth_lenet300-1a2b3c", compact=True)   # -> ticket.onnx, ticket.compact.onnx, export.json
"""

from compress.export.compact import Compaction, compact, compact_model
from compress.export.exporter import EXPORTER
from compress.export.onnx_export import OPSET_RANGE, CompactReport, ExportReport, export_onnx
from compress.export.run import export_run, format_report
from compress.export.storage import save_sparse_onnx, sparsify, storage_sizes
from compress.pruning.macs import count_macs, count_params

__all__ = [
    "EXPORTER", "OPSET_RANGE", "CompactReport", "Compaction", "ExportReport", "compact", "compact_model", "count_macs",
    "count_params", "export_onnx", "export_run", "format_report", "save_sparse_onnx", "sparsify", "storage_sizes",
]
