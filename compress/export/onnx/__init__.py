"""ONNX export of a torch model: the exporter, verification with onnxruntime, preprocessing metadata, sparse
storage, and accuracy measured from raw images through the exported file."""

from compress.export.onnx.accuracy import onnx_test_accuracy, raw_test_batches
from compress.export.onnx.export import OPSET_RANGE, CompactReport, ExportReport, export_onnx
from compress.export.onnx.exporter import EXPORTER
from compress.export.onnx.preprocess import Preprocess, apply_preprocess, read_metadata
from compress.export.onnx.storage import save_sparse_onnx, sparsify, storage_sizes

__all__ = [
    "EXPORTER", "OPSET_RANGE", "CompactReport", "ExportReport", "Preprocess", "apply_preprocess", "export_onnx",
    "onnx_test_accuracy", "raw_test_batches", "read_metadata", "save_sparse_onnx", "sparsify", "storage_sizes",
]
