"""Compacted structured tickets vs their dense model in onnxruntime: aligned vs unaligned widths.

Per (model, batch): the dense model's export and the compacted export of each of its tickets
(``structured_cases.tickets``: ~50 % and ~25 % of the MACs, channel_multiple 16 and 1) are timed
**interleaved** in this process (``measure_cpu_interleaved``: CPU time and wall time per call) on sessions from
``compress.bench.runners.ort_session`` (threads pinned, spinning off), so load drift hits all alike.
An aligned ticket with at most half the MACs that misses the bar at batch 64 or clears it by less than
``PROFILE_NEAR``, and any batch-64 ticket
below ``PROFILE_BELOW``, is profiled with onnxruntime's profiler (per-op times, dense vs compacted); the
profiles go into the results.
Writes benchmarks/results/structured_inference.{md,json} (records of earlier sessions that this one did
not re-measure are kept, each with its session's start time).

    COMPRESS_THREADS=1 pytest benchmarks/test_structured_inference.py --benchmark-only -q
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from structured_cases import (
    GOAL_BATCH,
    GOAL_K,
    GOAL_MAX_MACS,
    GOAL_MODELS,
    RESULTS,
    STEM,
    Ticket,
    build,
    models,
    shapes_for,
    tickets,
)
from structured_report import markdown, merge, ort_profile

from compress.bench.report import session_machine
from compress.bench.runners import ort_session
from compress.bench.timing import load_average
from compress.export import export_onnx
from compress.io import load_json, save_json, save_text
from compress.runtime import set_threads

BUDGET_S = float(os.environ.get("COMPRESS_BENCH_BUDGET", "1.0"))  # per file and (model, batch), at least MIN_CALLS
MIN_CALLS = {1: 20, 64: 6}
MAX_CALLS = 400
ROUNDS = 3
PROFILE_BELOW = 0.5  # speedup x MACs under which a batch-64 ticket is profiled too
PROFILE_NEAR = 0.15  # goal tickets this close above the bar are profiled as well: the next run may miss
_RECORDS: list[dict] = []
_PROFILES: list[dict] = []
_FILES: dict = {}
_STATE: dict = {}


def _export(model: torch.nn.Module, path: Path, side: int) -> Path:
    example = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))
    export_onnx(model, path, example, verify_inputs=example)
    return path


def files(model: str, side: int, root: Path) -> dict:
    """{"dense": (path, facts), ticket label: (path, facts)} for ``model`` at input ``side``, built once."""
    key = (model, side)
    if key not in _FILES:
        folder = root / f"{model.replace('/', '_')}-{side}"
        folder.mkdir(parents=True, exist_ok=True)
        built = {}
        for i, ticket in enumerate(t for t in tickets() if t.model == model):
            dense, compacted, facts = build(ticket, side)
            if i == 0:
                built["dense"] = (_export(dense, folder / "dense.onnx", side), {"macs": facts["dense_macs"]})
            built[ticket.label] = (_export(compacted, folder / f"ticket{i}.onnx", side), {**facts, "ticket": ticket})
        _FILES[key] = built
    return _FILES[key]


def measure_cpu_interleaved(calls: dict, min_calls: int, budget_s: float, rounds: int = ROUNDS) -> dict:
    """Per call: CPU seconds of this process (``time.process_time``) and wall seconds, the candidates in
    turn, ``rounds`` bursts each (one untimed call first), at least ``min_calls`` per candidate, ``budget_s``
    of wall per candidate. CPU time is the primary measure: with the machine loaded far past its cores a
    call's wall time is mostly time spent preempted (a 36 ms resnet18 call took 100-115 ms of wall), and
    how much depends on the call's length, not on its kernels."""
    samples = {name: {"cpu": [], "wall": []} for name in calls}
    per_round = -(-min_calls // rounds)
    for fn in calls.values():
        fn()
    for _ in range(rounds):
        for name, fn in calls.items():
            fn()
            began, count = time.perf_counter(), 0
            while count < MAX_CALLS and (count < per_round or time.perf_counter() - began < budget_s / rounds):
                wall, cpu = time.perf_counter(), time.process_time()
                fn()
                samples[name]["cpu"].append(time.process_time() - cpu)
                samples[name]["wall"].append(time.perf_counter() - wall)
                count += 1
    return {name: {"cpu_median_ms": statistics.median(s["cpu"]) * 1e3, "cpu_min_ms": min(s["cpu"]) * 1e3,
                   "wall_median_ms": statistics.median(s["wall"]) * 1e3, "wall_min_ms": min(s["wall"]) * 1e3,
                   "calls": len(s["cpu"])} for name, s in samples.items()}


def _goal(ticket: Ticket, batch: int, macs: float) -> bool:
    return ticket.aligned and batch == GOAL_BATCH and macs <= GOAL_MAX_MACS + 0.02 and ticket.model in GOAL_MODELS


PARAMS = [pytest.param(model, batch, side, id=f"{model.replace('timm/', '')}-b{batch}-{side}px")
          for model in models() for batch, side in shapes_for(model)]


@pytest.mark.parametrize(("model", "batch", "side"), PARAMS)
def test_structured_inference(benchmark, tmp_path_factory, model, batch, side):
    threads = _STATE.setdefault("threads", set_threads())
    _STATE.setdefault("load_before", load_average())
    _STATE.setdefault("started", time.time())
    built = files(model, side, _STATE.setdefault("root", tmp_path_factory.mktemp("structured")))
    sessions = {name: ort_session(path, threads) for name, (path, _) in built.items()}
    x = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(batch)).numpy()
    calls = {name: (lambda s=s: s.run(None, {"input": x})) for name, s in sessions.items()}
    classes = sessions["dense"].get_outputs()[0].shape[-1]
    for call in calls.values():  # every compacted file keeps the classifier whole
        out = call()[0]
        assert out.shape == (batch, classes) and np.isfinite(out).all()
    load = load_average()
    timings = measure_cpu_interleaved(calls, MIN_CALLS[batch], BUDGET_S)
    dense = timings["dense"]
    for name, timing in timings.items():
        facts = built[name][1]
        ticket = facts.get("ticket")
        macs = facts.get("macs_remaining", 1.0)
        speedup = dense["cpu_median_ms"] / timing["cpu_median_ms"]
        row = {"model": model, "ticket": name, "batch_size": batch, "side": side,
               **{k: round(v, 4) for k, v in timing.items()}, "speedup_vs_dense_ort": round(speedup, 3),
               "speedup_wall_median": round(dense["wall_median_ms"] / timing["wall_median_ms"], 3),
               "speedup_wall_min": round(dense["wall_min_ms"] / timing["wall_min_ms"], 3),
               "macs_remaining": round(macs, 4),
               "speedup_x_macs": round(speedup * macs, 3), "threads": threads, "session": _STATE["started"],
               "load_1min": None if load is None else round(load[0], 2)}
        if ticket is not None:
            row.update({"aligned": ticket.aligned, "channel_multiple": ticket.multiple, "amount": ticket.amount,
                        "target_macs": ticket.target, "params_remaining": round(facts["params_remaining"], 4),
                        "widths": facts["widths"], "off_block": round(facts["off_block"], 3)})
            if _goal(ticket, batch, macs):
                row["goal_met"] = speedup * macs >= GOAL_K
            # why: the misses, and unaligned tickets far below the bar (off onnxruntime's fast kernels?)
            near = row.get("goal_met") is not None and speedup * macs < GOAL_K * (1 + PROFILE_NEAR)
            if near or (batch == GOAL_BATCH and speedup * macs < PROFILE_BELOW):
                _PROFILES.append({"model": model, "ticket": name, "batch_size": batch, "side": side,
                                  "dense": ort_profile(built["dense"][0], x, threads),
                                  "compacted": ort_profile(built[name][0], x, threads)})
        _RECORDS.append(row)
    benchmark.group = f"{model} batch={batch} {side}px"
    benchmark.extra_info.update({"cpu_median_ms": {k: t["cpu_median_ms"] for k, t in timings.items()}})
    # pytest-benchmark's own view of the dense file; the ratios above come from the interleaved timings
    benchmark.pedantic(calls["dense"], rounds=3 if batch > 1 else 10, iterations=1, warmup_rounds=1)


def teardown_module() -> None:
    if not _RECORDS:
        return
    threads = _STATE["threads"]
    machine = session_machine(threads, _STATE["load_before"], _STATE["started"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{STEM}.json"
    previous = load_json(path) if path.exists() else {}
    records, profiles = merge(previous, _RECORDS, _PROFILES)
    machines = {**previous.get("machines", {}), str(_STATE["started"]): machine}
    # every session's goal rows, kept: how far a verdict moves between runs on this shared machine
    history = [*previous.get("history", []),
               *({k: r[k] for k in ("session", "model", "ticket", "batch_size", "speedup_x_macs", "goal_met")}
                 for r in _RECORDS if "goal_met" in r)]
    save_json({"machine": machine, "machines": machines, "records": records, "profiles": profiles,
               "history": history}, path)
    save_text(markdown(machine, machines, records, profiles, history), RESULTS / f"{STEM}.md")
