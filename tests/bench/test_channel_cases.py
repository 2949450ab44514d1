"""The channel-ticket benchmark cases (benchmarks/bench_cases.py) build, compact exactly and cut the MACs.

Fast: no timing here, only what the benchmark numbers rest on (``pytest benchmarks/ --benchmark-only``
measures the speed).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from compress.bench import make_backends, pinned_threads
from compress.bench.report import speed_limit, summary_table
from compress.pruning import count_macs, get_masks
from compress.pruning.plan import infer_output

BENCH_CASES = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_cases.py"
TOLERANCE = 1e-4


def _load_cases():
    # benchmarks/ is not a package (pytest puts it on sys.path for its own run); load the file by path
    spec = importlib.util.spec_from_file_location("bench_cases", BENCH_CASES)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_cases", module)
    spec.loader.exec_module(module)
    return module


bench_cases = _load_cases()
CHANNEL_CASES = [case for case in bench_cases.CASES if case.granularity == "channel"]


def test_case_labels_and_ids_are_unique_and_channel_cases_exist():
    labels = [case.label for case in bench_cases.CASES]
    slugs = [case.slug for case in bench_cases.CASES]
    assert len(set(labels)) == len(labels) and len(set(slugs)) == len(slugs)
    assert {case.model for case in CHANNEL_CASES} == {"lenet300_100", "conv4"}
    assert all("@" not in slug and "%" not in slug for slug in slugs)
    assert all({"ort_dense", "ort_compact"} <= set(case.backends) for case in CHANNEL_CASES)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # these tests check outputs, not speed; one torch thread keeps them quick on a busy shared machine
    with pinned_threads(1):
        yield


@pytest.fixture(scope="module", params=CHANNEL_CASES, ids=lambda case: case.slug)
def channel_case(request, one_thread):
    case = request.param
    model = bench_cases.build_ticket(case)
    example = torch.randn(1, *case.input_shape, generator=torch.Generator().manual_seed(0))
    remaining, compacted = bench_cases.compacted_macs_remaining(model, example)
    return case, model, example, remaining, compacted


def test_channel_ticket_prunes_whole_channels_and_keeps_the_output_layer(channel_case):
    case, model, *_ = channel_case
    masks = get_masks(model)
    (output,) = infer_output(model)
    assert output not in masks or bool(masks[output].bool().all()), "the output layer keeps every neuron"
    assert len(masks) == len(bench_cases.widths(model)) - 1, "every hidden layer is pruned"
    for name, mask in masks.items():
        rows = mask.flatten(1)
        assert bool(((rows == 0).all(1) | (rows == 1).all(1)).all()), f"{name}: whole channels only"
        if name != output:
            kept = int(rows.any(1).sum())
            assert kept == len(rows) - round((1 - case.remaining) * len(rows)), name


def test_compacted_ticket_on_ort_matches_torch_dense(channel_case):
    _, model, example, remaining, compacted = channel_case
    built, unavailable = make_backends(["ort_compact", "torch_dense"], model, example, threads=1)
    assert not unavailable
    x = torch.randn(8, *example.shape[1:], generator=torch.Generator().manual_seed(3))
    expected = built["torch_dense"](x)
    assert float((built["ort_compact"](x) - expected).abs().max()) <= TOLERANCE
    # ... and what ORT runs is the compacted model whose MACs the benchmark records
    assert built["ort_compact"].info["macs"] == count_macs(compacted, example)
    assert built["ort_compact"].info["macs"] == pytest.approx(remaining * count_macs(model, example))


def test_conv4_channel_tickets_leave_under_half_the_macs(channel_case):
    case, model, example, remaining, compacted = channel_case
    if case.model == "conv4":
        assert remaining < 0.5
        # compaction drops the inputs of dead channels too, which the masked model's nonzero count keeps
        assert remaining < count_macs(model, example, nonzero=True) / count_macs(model, example)
    assert 0 < remaining < 1
    assert sum(p.numel() for p in compacted.parameters()) < sum(p.numel() for p in model.parameters())


def _record(model: str, batch: int, backend: str, speedup: float, macs: float, granularity: str = "channel") -> dict:
    return {"model": model, "batch_size": batch, "backend": backend, "speedup_vs_dense_ort": speedup,
            "macs_remaining": macs, "weights_remaining": 0.5, "granularity": granularity, "median_ms": 1.0}


def test_goal_rows_check_each_batch_against_k_over_macs():
    records = [_record("conv4@50% channels", 1, "ort_compact", 2.5, 0.25),   # 0.625 >= 0.5: met
               _record("conv4@50% channels", 64, "ort_compact", 2.0, 0.25),  # 0.5 < 0.7: missed
               _record("conv4@50% channels", 64, "ort_dense", 1.0, 0.25),    # not the compacted backend
               _record("conv4@90% channels", 64, "ort_compact", 1.1, 0.8),   # over half the MACs: no goal
               _record("lenet300_100@50% channels", 64, "ort_compact", 9.0, 0.4),
               _record("conv4@10%", 64, "ort_compact", 9.0, 0.1, granularity="weight")]
    rows = bench_cases.goal_rows(records)
    assert [(r["batch_size"], r["met"]) for r in rows] == [(1, True), (64, False)]
    assert rows[1]["required"] == pytest.approx(2.8)


def test_channel_records_use_the_macs_limit():
    channel = _record("conv4@50% channels", 64, "ort_compact", 3.0, 0.25)
    assert speed_limit(channel) == (4.0, "1/MACs")
    assert speed_limit({**channel, "granularity": "weight"}) == (2.0, "1/(1−s)")
    assert "4× (1/MACs)" in summary_table([channel])


def test_channel_section_states_the_verdict_and_flags_close_calls():
    facts = {"granularity": "channel", "weights_remaining": 0.5, "macs_remaining": 0.25}
    built = {"conv4@50% channels": bench_cases.Built({}, {}, facts, compact_widths=[32, 32, 64, 64, 128, 128, 10],
                                                     load=(1.0, 1.0, 1.0)),
             "conv4@10%": bench_cases.Built({}, {}, {**facts, "granularity": "weight", "macs_remaining": 0.1})}
    records = [_record("conv4@50% channels", 1, "ort_compact", 3.6, 0.25),
               _record("conv4@50% channels", 64, "ort_compact", 2.85, 0.25),  # 0.7125: met, within 5 %
               _record("conv4@10%", 64, "ort_compact", 1.0, 0.1, granularity="weight")]
    machine = {"load_before": (1.0, 1.0, 1.0), "load_after": (1.2, 1.0, 1.0), "logical_cores": 2, "threads": 1}
    text = bench_cases.channel_section(records, built, machine)
    assert "| conv4@10% | weight |" in text, "the weight ticket of the same model sits next to it"
    assert "goal **met** on conv4@50% channels; **missed** on none" in text
    assert text.count("(within 5% of the bar)") == 1
    assert "32, 32, 64, 64, 128, 128, 10" in text and "load average (1 min) 1.00 before" in text
