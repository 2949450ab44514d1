"""The timing harness, the report writer and tools/bench_sparse.py as a user meets it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compress.bench import (
    add_speedups,
    benchmark,
    magnitude_ticket,
    measure,
    measure_interleaved,
    pinned_threads,
)
from compress.bench.report import write_results
from compress.models import create_model
from compress.pruning import folded_state_dict, get_masks
from compress.ticket import save_ticket

REPO = Path(__file__).resolve().parents[2]


# How well the harness times (medians against a direct timing, the budget kept, fast < slow) is
# measured in benchmarks/test_timing_harness.py; here only what it returns.


def test_measure_reports_the_median_of_its_repeats():
    calls = []
    timing = measure(lambda: calls.append(1), warmup=2, min_repeats=5, max_repeats=7, budget_s=0.05)
    assert 5 <= timing.repeats <= 7 and len(calls) >= 1 + timing.repeats
    assert 0 <= timing.min_ms <= timing.median_ms and timing.iqr_ms >= 0
    with pytest.raises(ValueError, match="min_repeats"):
        measure(lambda: None, min_repeats=0)


def test_measure_interleaved_times_every_candidate():
    calls = {"a": 0, "b": 0}

    def bump(name: str) -> None:
        calls[name] += 1

    timings = measure_interleaved({"a": lambda: bump("a"), "b": lambda: bump("b")}, rounds=3,
                                  warmup=1, min_repeats=3, budget_s=0.02)
    assert set(timings) == {"a", "b"} and all(t.repeats >= 3 and t.median_ms >= 0 for t in timings.values())
    assert all(count >= 1 + 3 + timings[name].repeats for name, count in calls.items())  # warm-up, untimed, timed
    with pytest.raises(ValueError, match="rounds"):
        measure_interleaved({"x": lambda: None}, rounds=0)


def test_pinned_threads_restores_the_count():
    before = torch.get_num_threads()
    with pinned_threads(1) as threads:
        assert threads == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_speedups_only_where_the_baseline_was_measured():
    records = [{"model": "m", "batch_size": 1, "backend": "ort_dense", "median_ms": 2.0},
               {"model": "m", "batch_size": 1, "backend": "torch_sparse", "median_ms": 0.5},
               {"model": "m", "batch_size": 64, "backend": "torch_sparse", "median_ms": 1.0}]
    add_speedups(records)
    assert [r["speedup_vs_dense_ort"] for r in records] == [1.0, 4.0, None]


def _write_run(run_dir: Path) -> None:
    torch.manual_seed(0)
    model = magnitude_ticket(create_model("lenet300_100"), 0.05)
    state = folded_state_dict(model)
    save_ticket(run_dir / "ticket.pt", model_config={"name": "lenet300_100"},
                shape={"num_classes": 10, "in_channels": 1, "image_size": 28},
                masks=get_masks(model), rewind_state=state, trained_state=state, info={})


def test_benchmark_records_and_report(tmp_path):
    _write_run(tmp_path)
    result = benchmark(tmp_path, backends=["torch_dense", "torch_sparse", "ort_dense"], batch_sizes=[1, 8],
                       budget_s=0.02, rounds=2, threads=1)
    assert len(result.records) == 6
    for row in result.records:
        assert row["model"] == tmp_path.name and row["granularity"] == "weight"
        assert row["weights_remaining"] == pytest.approx(0.05, abs=0.002)
        assert row["macs_remaining"] == pytest.approx(0.05, abs=0.002)
        assert row["median_ms"] > 0 and row["speedup_vs_dense_ort"] > 0
    paths = write_results(result.records, tmp_path / "out", result.machine)
    assert json.loads(paths["json"].read_text()) == result.records
    assert paths["chart"].read_bytes()[:4] == b"\x89PNG"
    assert "torch_sparse" in paths["report"].read_text() and "logical cores" in paths["report"].read_text()


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "bench_sparse.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_tool_on_a_run_dir_and_on_its_onnx(tmp_path):
    _write_run(tmp_path / "run")
    result = run_tool("--run", str(tmp_path / "run"), "--batch-sizes", "1", "4", "--budget", "0.02",
                      "--backends", "ort_dense", "torch_sparse", "auto", "--threads", "1")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "run" / "bench"
    records = json.loads((out / "sparse_inference.json").read_text())
    assert {(r["backend"], r["batch_size"]) for r in records} == {(b, n) for b in ("ort_dense", "torch_sparse", "auto")
                                                                  for n in (1, 4)}
    assert (out / "sparse_inference.png").is_file() and "auto at batch 4 ran" in (out / "report.md").read_text()

    from compress.export import export_onnx

    export_onnx(tmp_path / "run" / "ticket.pt", tmp_path / "ticket.onnx")
    result = run_tool("--onnx", str(tmp_path / "ticket.onnx"), "--batch-sizes", "2", "--budget", "0.02",
                      "--threads", "1")
    assert result.returncode == 0, result.stderr
    records = json.loads((tmp_path / "ticket-bench" / "sparse_inference.json").read_text())
    assert [(r["backend"], r["speedup_vs_dense_ort"]) for r in records] == [("ort_dense", 1.0)]
    assert records[0]["weights_remaining"] == pytest.approx(0.05, abs=0.002)


@pytest.mark.parametrize(("args", "fragment"), [
    (["--run", "/nonexistent/run"], "no ticket here"),
    (["--onnx", "/nonexistent/x.onnx"], "no such ONNX file"),
    (["--onnx", "x.onnx", "--backends", "torch_sparse"], "only the ort_dense backend"),
    (["--run", "r", "--batch-sizes", "0"], "--batch-sizes must be >= 1"),
])
def test_tool_user_errors_are_one_line(args, fragment):
    result = run_tool(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr


@pytest.mark.parametrize("content", [b"this is a text file, not a model\n", None, b""],
                         ids=["text", "torch-pt", "empty"])
@pytest.mark.parametrize("name", ["model.onnx", "model.pt"])
def test_tool_refuses_a_file_that_is_not_onnx(tmp_path, content, name):
    path = tmp_path / name
    if content is None:
        torch.save({"weight": torch.ones(3)}, path)
    else:
        path.write_bytes(content)
    result = run_tool("--onnx", str(path), "--batch-sizes", "1", "--budget", "0.01", "--threads", "1")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "not an ONNX model" in lines[0], result.stderr
