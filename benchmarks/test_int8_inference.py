"""fp32 vs int8 onnxruntime latency (batch 1) and throughput (batch 64) of pruned tickets, dense for scale.

Per (model, batch): the dense fp32 export, the ticket's fp32 export and its int8 exports (dynamic and
static QDQ, both from ``compress.export.quantize_onnx``) are timed **interleaved** in this process with
``compress.bench.timing.measure_interleaved``, on sessions from ``compress.bench.runners.ort_session``
(threads pinned, spinning off). Tickets: magnitude pruning of randomly initialised weights
(``compress.bench.magnitude_ticket``) to a ticket's sparsity; inputs and calibration data are random
normal (values do not change int8 kernel times). Writes benchmarks/results/int8_inference.{md,json}.

    COMPRESS_THREADS=2 pytest benchmarks/test_int8_inference.py --benchmark-only -q
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from structured_cases import ALIGNED, AMOUNTS, Ticket, build

from compress.bench import magnitude_ticket
from compress.bench.report import cpu_model, session_machine
from compress.bench.runners import ort_session
from compress.bench.timing import load_average, measure_interleaved
from compress.export import export_onnx, quantize_onnx
from compress.export.quantize.int8 import choose_mode
from compress.io import save_json, save_text
from compress.models import create_model
from compress.runtime import set_threads

RESULTS = Path(os.environ.get("COMPRESS_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
BATCH_SIZES = (1, 64)
BUDGET_S = float(os.environ.get("COMPRESS_BENCH_BUDGET", "2.0"))  # per variant and (model, batch)
CASES = [  # (model, weights remaining, input shape, create_model kwargs)
    ("lenet300_100", 0.036, (1, 28, 28), {}),  # the default recipe's ticket: 15 rounds -> 3.6 %
    ("conv4", 0.10, (3, 32, 32), {}),
    ("timm/resnet18", 0.10, (3, 32, 32), {"in_channels": 3}),
]
# compacted structured tickets (benchmarks/structured_cases.py: aligned widths) at STRUCTURED_SIDE^2 inputs
STRUCTURED = [("timm/resnet18", 0.5), ("timm/mobilenetv3_small_100", 0.5)]
STRUCTURED_SIDE = 64
VARIANTS = ("dense_fp32", "ticket_fp32", "ticket_int8_dynamic", "ticket_int8_static")
_RECORDS: list[dict] = []
_STATE: dict = {}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """Per model: the four ONNX files and facts (built once)."""
    _STATE.setdefault("threads", set_threads())
    _STATE.setdefault("load_before", load_average())
    _STATE.setdefault("started", time.time())
    root = tmp_path_factory.mktemp("int8")
    built = {}
    for name, remaining, shape, kwargs in CASES:
        folder = root / name.replace("/", "_")
        example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
        torch.manual_seed(0)
        dense = create_model(name, num_classes=10, **kwargs).eval()
        torch.manual_seed(0)
        ticket = magnitude_ticket(create_model(name, num_classes=10, **kwargs), remaining)
        built[name] = _files(folder, dense, ticket, example, shape, remaining)
    for model, target in STRUCTURED:  # compacted structured tickets: smaller dense graphs, aligned widths
        case = Ticket(model, AMOUNTS[(model, target)][0], ALIGNED, target)
        dense, compacted, facts = build(case, STRUCTURED_SIDE)
        shape = (3, STRUCTURED_SIDE, STRUCTURED_SIDE)
        example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
        built[structured_name(model, target)] = _files(root / structured_name(model, target).replace("/", "_"),
                                                      dense, compacted, example, shape,
                                                      facts["macs_remaining"])
    return built


def structured_name(model: str, target: float) -> str:
    return f"{model} structured ~{target:.0%} MACs aligned"


def _files(folder: Path, dense: torch.nn.Module, ticket: torch.nn.Module, example: torch.Tensor,
           shape: tuple, remaining: float) -> dict:
    """The dense and ticket fp32 exports and the ticket's two int8 exports, with sizes and the auto choice."""
    export_onnx(dense, folder / "dense.onnx", example)
    export_onnx(ticket, folder / "ticket.onnx", example)
    calibration = torch.randn(128, *shape, generator=torch.Generator().manual_seed(1)).numpy()
    quantize_onnx(folder / "ticket.onnx", folder / "dynamic.onnx", mode="int8-dynamic")
    quantize_onnx(folder / "ticket.onnx", folder / "static.onnx", mode="int8-static", calibration=calibration)
    auto, rule = choose_mode(onnx.load(str(folder / "ticket.onnx")), "int8")
    paths = {"dense_fp32": folder / "dense.onnx", "ticket_fp32": folder / "ticket.onnx",
             "ticket_int8_dynamic": folder / "dynamic.onnx", "ticket_int8_static": folder / "static.onnx"}
    return {"paths": paths, "remaining": remaining, "shape": shape, "auto": auto, "rule": rule,
            "sizes": {k: p.stat().st_size for k, p in paths.items()}}


@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("name", [case[0] for case in CASES] + [structured_name(*case) for case in STRUCTURED])
def test_int8_inference(benchmark, files, name, batch):
    built = files[name]
    threads = _STATE["threads"]
    sessions = {k: ort_session(p, threads) for k, p in built["paths"].items()}
    x = torch.randn(batch, *built["shape"], generator=torch.Generator().manual_seed(batch)).numpy()
    calls = {k: (lambda s=s: s.run(None, {"input": x})) for k, s in sessions.items()}
    for call in calls.values():
        out = call()[0]
        assert out.shape[0] == batch and np.isfinite(out).all()
    timings = measure_interleaved(calls, rounds=5, warmup=5, min_repeats=10, budget_s=BUDGET_S)
    base = timings["ticket_fp32"].median_ms
    dense = timings["dense_fp32"].median_ms
    for variant, timing in timings.items():
        _RECORDS.append({"model": f"{name}@{built['remaining']:.1%}", "batch_size": batch, "variant": variant,
                         **timing.to_dict(), "speedup_vs_ticket_fp32": round(base / timing.median_ms, 3),
                         "speedup_vs_dense_fp32": round(dense / timing.median_ms, 3),
                         "file_bytes": built["sizes"][variant], "auto_choice": built["auto"],
                         "auto_rule": built["rule"], "threads": threads})
    chosen = f"ticket_int8_{built['auto'].split('-')[1]}"
    benchmark.group = f"{name} batch={batch}"
    benchmark.extra_info.update({"variant": chosen, "interleaved_ms": {k: t.median_ms for k, t in timings.items()}})
    benchmark.pedantic(calls[chosen], rounds=20, iterations=1, warmup_rounds=2)  # pytest-benchmark's own view


def teardown_module() -> None:
    if not _RECORDS:
        return
    threads = _STATE["threads"]
    machine = session_machine(threads, _STATE["load_before"], _STATE["started"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    save_json({"machine": machine, "records": _RECORDS}, RESULTS / "int8_inference.json")
    save_text(_markdown(machine, _RECORDS), RESULTS / "int8_inference.md")


def _markdown(machine: dict, records: list[dict]) -> str:
    by = {(r["model"], r["batch_size"], r["variant"]): r for r in records}
    models = list(dict.fromkeys(r["model"] for r in records))
    lines = ["# int8 vs fp32 inference with ONNX Runtime (pruned tickets)", "",
             f"CPU: {cpu_model()} ({machine['logical_cores']} logical cores), vector extensions: "
             f"{', '.join(machine['cpu_flags']) or 'unknown'}; onnxruntime {machine['onnxruntime']}, "
             f"torch {machine['torch']}; {machine['threads']} intra-op thread(s). Load average (1 min) "
             f"{_load(machine['load_before'])} before, {_load(machine['load_after'])} after; session "
             f"{machine['wall_s']:.0f} s.", "",
             "Command: `COMPRESS_THREADS=2 pytest benchmarks/test_int8_inference.py --benchmark-only -q`. "
             "Medians of individually timed calls, all four files of a (model, batch) timed interleaved "
             "(`compress.bench.timing.measure_interleaved`, 5 rounds). Tickets: layer-wise magnitude pruning of "
             "random weights (`compress.bench.magnitude_ticket`); int8 via `compress.export.quantize_onnx` "
             "(per-channel symmetric int8 weights; static = QDQ with uint8 activations calibrated on 128 random "
             "inputs). Structured rows: compacted structured tickets (`benchmarks/structured_cases.py`, aligned "
             f"widths, {STRUCTURED_SIDE}x{STRUCTURED_SIDE} inputs; the % is of the dense MACs), 1000 classes, "
             "compared with their dense model. × = ticket fp32 median / this median (> 1: faster than the fp32 ticket).", "",
             "| ticket | batch | dense fp32 ms | ticket fp32 ms | int8 dynamic ms (×) | int8 static ms (×) "
             "| `int8` picks | file fp32 → int8 (picked) |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    for model in models:
        for batch in BATCH_SIZES:
            row = [by.get((model, batch, v)) for v in VARIANTS]
            if None in row:
                continue
            dense, fp32, dynamic, static = row
            picked = dynamic if dynamic["auto_choice"] == "int8-dynamic" else static
            lines.append(f"| {model} | {batch} | {dense['median_ms']:.4g} | {fp32['median_ms']:.4g} | "
                         f"{dynamic['median_ms']:.4g} ({dynamic['speedup_vs_ticket_fp32']:.2f}×) | "
                         f"{static['median_ms']:.4g} ({static['speedup_vs_ticket_fp32']:.2f}×) | "
                         f"{picked['auto_choice'].removeprefix('int8-')} | "
                         f"{fp32['file_bytes'] / 1e6:.2f} MB → {picked['file_bytes'] / 1e6:.2f} MB |")
    slower = [f"{r['model']} batch {r['batch_size']} {r['variant'].removeprefix('ticket_int8_')} "
              f"({r['speedup_vs_ticket_fp32']:.2f}×)" for r in records
              if r["variant"].startswith("ticket_int8") and r["speedup_vs_ticket_fp32"] < 1.0]
    lines += ["", "**Where int8 is slower than the fp32 ticket:** " + ("; ".join(slower) or "nowhere") + ".", "",
              "Rule of `export.quantize: int8` (`compress.export.quantize.int8.choose_mode`): no Conv in the graph "
              "→ dynamic, else static QDQ.", ""]
    return "\n".join(lines)


def _load(value) -> str:
    return "n/a" if not value else f"{value[0]:.2f}"
