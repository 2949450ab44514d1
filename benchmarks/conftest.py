"""Hooks for ``pytest benchmarks/ --benchmark-only``: the shared session and writing benchmarks/results/.

Not part of the default test run (pyproject: testpaths = ["tests"]). Tickets: layer-wise magnitude
pruning of randomly initialised weights (seed 0), see bench_cases.py.
"""

from __future__ import annotations

import time

import pytest
from bench_cases import BACKEND_ORDER, CASES, METHOD, RESULTS, Session, channel_section

from compress.bench import load_average, machine_info, write_results

_SESSION: Session | None = None


@pytest.fixture(scope="session")
def bench_session() -> Session:
    global _SESSION
    if _SESSION is None:
        _SESSION = Session()
    return _SESSION


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SESSION is None or not _SESSION.records:
        return
    machine = {**machine_info(_SESSION.threads), "load_before": _SESSION.load_before, "load_after": load_average()}
    notes = [f"Wall time of the benchmark session: {time.time() - _SESSION.started:.0f} s."]
    for label, built in _SESSION.built.items():
        if built.compact_widths is not None:
            notes.append(f"{label}: compact_model leaves layer widths {', '.join(map(str, built.compact_widths))}; "
                         f"MACs remaining {built.facts['macs_remaining']:.1%} (compacted / dense, count_macs) -- "
                         f"the masked model's nonzero-weight count says {built.facts['macs_remaining_nonzero']:.1%}")
        for name, why in built.unavailable.items():
            notes.append(f"{label}: {name} not run -- {why}")
        auto = built.backends.get("auto")
        if auto is not None:
            for batch, choice in auto.choices.items():
                layers = "; ".join(f"{variant} " + ", ".join(f"{n}:{c['pick']}" for n, c in picks.items())
                                   for variant, picks in choice["layers"].items())
                notes.append(f"{label} batch {batch}: auto picked {choice['backend']} ({choice['rule']}; "
                             "build-time medians ms: "
                             + ", ".join(f"{n} {ms:.4g}" for n, ms in choice["median_ms"].items())
                             + (f"; per-layer picks: {layers}" if layers else "") + ")")
    records = sorted(_SESSION.records, key=_order)
    sections = ([("Channel tickets", channel_section(records, _SESSION.built, machine))]
                if any(r.get("granularity") == "channel" for r in records) else [])
    write_results(records, RESULTS, machine, report_name="README.md",
                  title="Sparse inference on CPU: lottery tickets, dense vs CSR vs ONNX Runtime",
                  method=METHOD.format(threads=_SESSION.threads), notes=notes, extra_sections=sections)


def _order(record: dict) -> tuple:
    labels = [case.label for case in CASES]
    index = labels.index(record["model"]) if record["model"] in labels else len(labels)
    return index, record["batch_size"], BACKEND_ORDER.index(record["backend"])
