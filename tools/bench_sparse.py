#!/usr/bin/env python
"""Benchmark sparse inference of your ticket: python tools/bench_sparse.py --run runs/<run> [--batch-sizes 1 64]

Times every backend (torch dense, torch CSR, ONNX Runtime dense and compacted, OpenVINO f32 and bf16, int8 in
both runtimes, auto) at each batch size,
dense ONNX Runtime in the same run as the baseline, and writes sparse_inference.json, report.md and
sparse_inference.png (speedup per backend and batch size, with the 1/(1-s) limit) to --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from compress.cli import run_cli
from compress.errors import UserError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run directory holding ticket.pt (or the ticket.pt file itself)")
    source.add_argument("--onnx", help="an ONNX file: runs it in ONNX Runtime as given (ort_dense only)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64], metavar="N")
    parser.add_argument("--backends", nargs="+", default=None, metavar="NAME",
                        help="subset of torch_dense torch_sparse torch_sparse_compact ort_dense ort_compact openvino "
                             "openvino_bf16 ort_int8 openvino_int8 auto (default: all)")
    parser.add_argument("--accuracy-examples", type=int, default=1000, metavar="N",
                        help="with --run: auto checks bf16 / int8 on the run's first N test examples and picks them "
                             "only within --accuracy-tolerance of fp32 (0: never a reduced precision)")
    parser.add_argument("--accuracy-tolerance", type=float, default=None, metavar="FRACTION",
                        help="accuracy a reduced precision may lose against fp32 (default 0.005: half a point)")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for torch and ORT (default: $COMPRESS_THREADS or all cores)")
    parser.add_argument("--budget", type=float, default=0.5, help="seconds of timed calls per backend and batch size")
    parser.add_argument("--out", help="output folder (default: <run>/bench, or <onnx stem>-bench next to the file)")
    args = parser.parse_args()

    from compress.bench import BACKENDS, benchmark, labelled_test_examples, onnx_source, write_results

    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if args.budget <= 0:
        raise UserError(f"--budget must be > 0 seconds, got {args.budget}")
    if args.accuracy_examples < 0:
        raise UserError(f"--accuracy-examples must be >= 0, got {args.accuracy_examples}")
    if any(b < 1 for b in args.batch_sizes):
        raise UserError(f"--batch-sizes must be >= 1, got {args.batch_sizes}")
    if args.onnx:
        path = Path(args.onnx)
        backends = args.backends or ["ort_dense"]
        if backends != ["ort_dense"]:
            raise UserError("--onnx runs the file as given: only the ort_dense backend (use --run for the others)")
        out = Path(args.out) if args.out else path.with_name(f"{path.stem}-bench")
        source = onnx_source(path)  # whatever its suffix; a file that is not ONNX is refused, named
    else:
        path = Path(args.run)
        backends = args.backends or list(BACKENDS)
        out = Path(args.out) if args.out else (path if path.is_dir() else path.parent) / "bench"
        source = path
    accuracy = None
    if args.run and args.accuracy_examples:
        accuracy = labelled_test_examples(path if path.is_dir() else path.parent, args.accuracy_examples)
    result = benchmark(source, backends=backends, batch_sizes=args.batch_sizes, threads=args.threads,
                       budget_s=args.budget, accuracy_data=accuracy, accuracy_tolerance=args.accuracy_tolerance)
    notes = [f"{name}: not run ({why})" for name, why in result.unavailable.items()]
    for batch, choice in result.auto_choices.items():
        notes.append(f"auto at batch {batch} ran {choice['backend']} ({choice['rule']}); medians (ms): "
                     + ", ".join(f"{n} {ms:.4g}" for n, ms in choice["median_ms"].items()))
    if "auto_accuracy" in result.machine:
        measured = result.machine["auto_accuracy"]
        notes.append(f"auto's precision rule: on {measured['examples']} labelled test examples, fp32 accuracy "
                     f"{measured['fp32']:.4f}; a reduced precision is admitted within {measured['tolerance']:g}: "
                     + ", ".join(f"{n} {a:.4f}" for n, a in measured.items()
                                 if n not in ("fp32", "tolerance", "examples")))
    if args.onnx:
        notes.append("ONNX file mode: the file itself is the dense-ORT baseline, so its ratio is 1 by definition.")
    method = (f"Each backend ran on random inputs of the ticket's shape at batch sizes {args.batch_sizes}: warm-up, "
              "then timed calls in 5 interleaved rounds across backends (about "
              f"{args.budget:g} s each); the median per-call latency is reported. Speedups are dense-ORT median / "
              "backend median in the same run.")
    paths = write_results(result.records, out, result.machine, method=method, notes=notes,
                          title=f"Sparse inference: {result.records[0]['model'] if result.records else path}")
    print(json.dumps({name: str(p) for name, p in paths.items()}, indent=2))
    return 0


if __name__ == "__main__":
    run_cli(main)
