"""The benchmark tickets and the state the benchmarks share (imported by conftest and the test module)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from compress.bench import BASELINE, describe, load_average, magnitude_ticket, make_backends
from compress.models import create_model
from compress.runtime import set_threads

RESULTS = Path(__file__).resolve().parent / "results"
BATCH_SIZES = (1, 64)
# baseline first in each (model, batch) group, so it runs right before what it is compared with
BACKEND_ORDER = (BASELINE, "ort_compact", "torch_dense", "torch_sparse", "torch_sparse_compact", "auto")
# wall seconds per benchmark (at least MIN_ROUNDS rounds); lower it for a quick smoke run
BUDGET_S = float(os.environ.get("COMPRESS_BENCH_BUDGET", "1.5"))
MIN_ROUNDS = 10
MAX_ROUNDS = 5000


@dataclass(frozen=True)
class Case:
    model: str
    remaining: float
    input_shape: tuple[int, ...]
    kwargs: dict = field(default_factory=dict, hash=False)

    @property
    def label(self) -> str:
        return f"{self.model}@{self.remaining:.0%}"

    @property
    def slug(self) -> str:  # for test ids: -k cannot parse '@' or '%'
        return f"{self.model.replace('/', '_')}-{self.remaining * 100:.0f}pct"


CASES = (
    Case("lenet300_100", 0.20, (1, 28, 28)),
    Case("lenet300_100", 0.05, (1, 28, 28)),
    Case("lenet300_100", 0.02, (1, 28, 28)),
    Case("conv4", 0.10, (3, 32, 32)),
    Case("timm/resnet18", 0.10, (3, 32, 32), {"in_channels": 3}),
)


@dataclass
class Built:
    backends: dict
    unavailable: dict
    facts: dict
    inputs: dict = field(default_factory=dict)


class Session:
    """Everything the benchmarks share: pinned threads, built backends per case, measured records."""

    def __init__(self) -> None:
        self.threads = set_threads()
        self.load_before = load_average()
        self.started = time.time()
        self.built: dict[str, Built] = {}
        self.records: list[dict] = []

    def case(self, case: Case) -> Built:
        if case.label not in self.built:
            torch.manual_seed(0)
            model = magnitude_ticket(create_model(case.model, num_classes=10, **case.kwargs), case.remaining)
            example = torch.randn(1, *case.input_shape, generator=torch.Generator().manual_seed(0))
            backends, unavailable = make_backends(list(BACKEND_ORDER), model, example, threads=self.threads,
                                                  batch_sizes=BATCH_SIZES)
            facts = {**describe(model, example), "model": case.label}
            inputs = {b: torch.randn(b, *case.input_shape, generator=torch.Generator().manual_seed(b))
                      for b in BATCH_SIZES}
            self.built[case.label] = Built(backends, unavailable, facts, inputs)
        return self.built[case.label]


METHOD = """\
Command: `COMPRESS_THREADS={threads} pytest benchmarks/test_sparse_inference.py --benchmark-only` (pytest-benchmark).

- Tickets: LeNet-300-100 (784-300-100-10) at 20 %, 5 % and 2 % of weights remaining, Conv-4 (CIFAR shape
  3x32x32) at 10 %, timm resnet18 (3x32x32 input, 10 classes) at 10 %. Masks come from layer-wise magnitude
  pruning of **randomly initialised** weights (`compress.bench.magnitude_ticket`, seed 0): every Conv2d and
  Linear keeps the same fraction of its largest-|w| weights -- the output layer too (Frankle & Carbin prune it
  at half the rate), which leaves many hidden units with no outgoing weight, so `ort_compact` gains more here
  than it would on a ticket with a denser output layer. Only the sparsity pattern's density matters for
  speed; these are not trained tickets.
- Backends (`compress.bench.make_backends`): `ort_dense` (export_onnx, ONNX Runtime CPU, the baseline),
  `ort_compact` (export of compact_model: dead units removed), `torch_dense` (masks folded,
  inference_mode), `torch_sparse` (all Linear weights as CSR with int32 indices in fused feature-major
  chains; convolutions dense), `torch_sparse_compact` (the same on compact_model), `auto` (when built, times all of these plus a per-layer dense/CSR mix, and
  with more than one thread pinned also the torch CSR variants on one thread, per batch size, and runs the
  fastest; the notes list what it measured and picked).
- Timing: pytest-benchmark `pedantic`, one timed call per round, about 1.5 s per benchmark (10 to 5000
  rounds); the table reports the median. One backend is timed at a time. Before every round,
  pytest-benchmark's `setup` hook runs dense ORT k+1 times, timing the last call (`dense_ort_paired_ms`,
  median), then the backend k times untimed, k = 3 (1 for calls over 1 ms): right after the other
  backend ran, a call was measured up to ~17 % slower (LeNet, batch 64) and took ~3 calls to recover,
  so each timed call follows calls of itself. Threads pinned for torch (compress.runtime.set_threads) and ORT
  (intra_op_num_threads, inter_op 1, `session.intra_op.allow_spinning=0`, so idle sessions do not spin).
- `speedup_vs_dense_ort` = `dense_ort_paired_ms` / backend median: the baseline is timed interleaved with
  each backend, call by call, so load drift on this shared machine cannot fake a ratio (timing dense ORT
  once per group and dividing would: the same ORT session measured minutes apart differed by up to 50 %
  while other jobs started and stopped). 1.00 for dense ORT itself by definition.
  `macs_remaining` = MACs with nonzero weights / dense MACs (compress.pruning.count_macs).
- Inputs: random normal, batch 1 (latency) and batch 64 (throughput = 64 / median).
"""
