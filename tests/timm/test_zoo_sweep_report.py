"""The zoo sweep's bookkeeping (benchmarks/structured_zoo.py): a record's own status, and the machines named."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SWEEP = Path(__file__).resolve().parents[2] / "benchmarks" / "structured_zoo.py"


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("structured_zoo", SWEEP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(status: str, reason: str = "", peak: float = 100.0) -> dict:
    return {"status": status, "reason": reason, "peak_rss_mb": peak, "wall_s": 1.0}


def _record(model: str, channel: dict, weight: dict, machine: dict | None) -> dict:
    record = {"model": model, "family": model, "channel": channel, "weight": weight, "wall_s": 2.0,
              "peak_rss_mb": max(channel["peak_rss_mb"], weight["peak_rss_mb"]), "commit": "abc1234"}
    if machine is not None:
        record["machine"] = machine
    return record


def test_a_record_passes_only_when_both_granularities_pass(sweep):
    both = sweep.overall(_record("a", _row("pass"), _row("pass"), None))
    assert (both["status"], both["reason"]) == ("pass", "")
    weight_fails = sweep.overall(_record("b", _row("pass"), _row("failed", "killed: over the cap"), None))
    assert (weight_fails["status"], weight_fails["reason"]) == ("failed", "weight: killed: over the cap")
    refused = sweep.overall(_record("c", _row("refused", "no group"), _row("pass"), None))
    assert (refused["status"], refused["reason"]) == ("refused", "channel: no group")


def test_the_table_names_the_machine_of_each_record(sweep, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "MARKDOWN", tmp_path / "zoo.md")
    old = {"cpu": "Old CPU", "cores": 2, "vector_extensions": ["avx2"], "memory_gb": 8.0, "load_average": [1, 1, 1]}
    new = {**old, "cpu": "New CPU", "vector_extensions": ["avx2", "avx512f"]}
    records = [_record("a", _row("pass"), _row("pass"), None), _record("b", _row("pass"), _row("pass"), new)]
    sweep.write_markdown({"machine": old, "records": records})
    text = (tmp_path / "zoo.md").read_text()
    assert "Old CPU, 2 cores (avx2), 8.0 GB: 1 models (a)" in text  # without its own: the file's machine
    assert "New CPU, 2 cores (avx2, avx512f), 8.0 GB: 1 models (b)" in text
