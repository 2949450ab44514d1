"""Honest sparse-inference benchmarks of tickets: backends, an ``auto`` picker, a timing harness, reports.

    from compress.bench import make_backend, benchmark
    backend = make_backend("torch_sparse", "runs/lth_lenet300-1a2b3c")   # a run dir, ticket.pt or module
    y = backend(x)
    result = benchmark("runs/lth_lenet300-1a2b3c", batch_sizes=(1, 64))  # -> records, machine
"""

from compress.bench.auto import AutoBackend, calibrate_layers
from compress.bench.backends import (
    BACKENDS,
    BASELINE,
    REDUCED_PRECISION,
    make_backend,
    make_backends,
    register_backend,
)
from compress.bench.report import add_speedups, machine_info, markdown_table, plot_speedups, write_results
from compress.bench.runners import Backend, OrtBackend, TorchBackend, ort_session
from compress.bench.source import (
    Source,
    batch_of,
    macs_remaining,
    magnitude_ticket,
    onnx_source,
    onnx_weights_remaining,
    resolve_source,
    weights_remaining,
)
from compress.bench.sparse import LinearChain, linear_chains, to_csr
from compress.bench.suite import BenchResult, benchmark, describe, labelled_test_examples
from compress.bench.timing import Timing, load_average, measure, measure_interleaved, pinned_threads

__all__ = [
    "BACKENDS", "BASELINE", "REDUCED_PRECISION", "AutoBackend", "Backend", "BenchResult", "LinearChain", "OrtBackend", "Source",
    "Timing", "TorchBackend", "add_speedups", "batch_of", "benchmark", "calibrate_layers", "describe", "labelled_test_examples",
    "linear_chains", "load_average", "machine_info", "macs_remaining", "magnitude_ticket", "make_backend",
    "make_backends", "markdown_table", "measure", "measure_interleaved", "onnx_source", "onnx_weights_remaining",
    "ort_session", "pinned_threads", "plot_speedups", "register_backend", "resolve_source", "to_csr", "weights_remaining", "write_results",
]
