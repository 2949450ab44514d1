"""CI smoke of tools/reproduce.py: 2 seeds x 2 rounds on the synthetic set, aggregated from the run dirs."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import pytest

from compress import paths
from compress.reproduce import run_suite, suite
from compress.reproduce.aggregate import aggregate_rounds, bar_check, paired_gap, stats
from compress.reproduce.report import write_results

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    out, runs = root / "out", root / "runs"
    env = {**os.environ, "COMPRESS_THREADS": "1", "PYTHONPATH": REPO}
    command = [sys.executable, os.path.join(REPO, "tools", "reproduce.py"), "--suite", "smoke", "--jobs", "1",
               "--out", str(out), "--runs", str(runs)]
    subprocess.run(command, check=True, env=env, capture_output=True, cwd=root)
    return out, runs


def test_smoke_writes_json_plots_and_readme(smoke):
    out, _ = smoke
    result = json.loads((out / "smoke_lenet300.json").read_text())
    assert result["seeds"] == [0, 1]
    assert [row["round"] for row in result["rounds"]] == [0, 1, 2]
    assert set(result["rounds"][0]) >= {"weights_remaining", "dense"}
    for row in result["rounds"][1:]:
        for kind in ("ticket", "reinit", "random_prune"):
            assert set(row[kind]) >= {"mean", "std", "early_stop_iteration", "test_accuracy"}
    assert result["rounds"][2]["weights_remaining"] < result["rounds"][1]["weights_remaining"] < 1.0
    for name in ("README.md", "smoke_lenet300_accuracy.png", "smoke_lenet300_early_stop.png",
                 "summaries/smoke_lenet300-seed1.json"):
        assert (out / name).exists(), name
    readme = (out / "README.md").read_text()
    assert "| round |" in readme and "tools/reproduce.py" in readme


def test_smoke_numbers_come_from_the_run_dirs(smoke):
    out, runs = smoke
    result = json.loads((out / "smoke_lenet300.json").read_text())
    summaries = [json.loads((runs / "smoke_lenet300" / f"seed{seed}" / paths.SUMMARY).read_text()) for seed in (0, 1)]
    for index, row in enumerate(result["rounds"]):
        entries = [s["rounds"][index] for s in summaries]
        if index == 0:
            values = [e["early_stop_test_accuracy"] for e in entries]
            assert row["dense"]["mean"] == pytest.approx(statistics.fmean(values))
            continue
        for kind in ("ticket", "reinit", "random_prune"):
            sources = entries if kind == "ticket" else [e["controls"][kind] for e in entries]
            accuracies = [s["early_stop_test_accuracy"] for s in sources]
            assert row[kind]["values"] == accuracies
            assert row[kind]["mean"] == pytest.approx(statistics.fmean(accuracies))
            assert row[kind]["std"] == pytest.approx(statistics.stdev(accuracies))
            iterations = [s["early_stop_iteration"] for s in sources]
            assert row[kind]["early_stop_iteration"]["mean"] == pytest.approx(statistics.fmean(iterations))
            ends = [s["test_accuracy"] for s in sources]
            assert row[kind]["test_accuracy"]["mean"] == pytest.approx(statistics.fmean(ends))


def test_rerun_resumes_without_training(smoke, tmp_path):
    out, runs = smoke
    result = runs / "smoke_lenet300" / "seed0" / "round_02" / paths.RESULT
    before = (result.stat().st_mtime_ns, result.read_text())
    experiments = suite("smoke")
    run_suite(experiments, runs, jobs=1)  # in-process: the same code path as the CLI with --jobs 1
    write_results(experiments, runs, tmp_path / "again", "smoke")
    assert (result.stat().st_mtime_ns, result.read_text()) == before
    assert json.loads((tmp_path / "again" / "smoke_lenet300.json").read_text())["rounds"] == \
        json.loads((out / "smoke_lenet300.json").read_text())["rounds"]


def _entry(round_index, accuracy, reinit=None):
    entry = {"round": round_index, "weights_remaining": 0.8 ** round_index, "test_accuracy": accuracy,
             "early_stop_iteration": 100, "early_stop_test_accuracy": accuracy, "wall_s": 1.0}
    if reinit is not None:
        entry["controls"] = {"reinit": {**entry, "early_stop_test_accuracy": reinit}}
    return entry


def test_gap_and_bar_are_paired_by_seed():
    seeds = [[_entry(0, 0.80), *[_entry(r, 0.81, 0.78) for r in range(1, 14)]],
             [_entry(0, 0.82), *[_entry(r, 0.81, 0.80) for r in range(1, 14)]]]
    rounds = aggregate_rounds([{"rounds": s} for s in seeds])
    gap = paired_gap(rounds, "ticket", "reinit")[-1]
    assert gap["mean"] == pytest.approx(0.02) and gap["std"] == pytest.approx(statistics.stdev([0.03, 0.01]))
    bar = bar_check(rounds)
    assert [c["round"] for c in bar["rounds"]] == [12, 13]  # 0.8**12 = 6.9% <= 7%
    assert bar["met"]


def test_a_seed_still_running_contributes_the_rounds_it_has():
    done = [_entry(0, 0.80), _entry(1, 0.82, 0.79), _entry(2, 0.83, 0.78)]
    running = [_entry(0, 0.84), _entry(1, 0.86, 0.81)]
    rounds = aggregate_rounds([{"rounds": done}, {"rounds": running}], seeds=[3, 7])
    assert [row["seeds"] for row in rounds] == [[3, 7], [3, 7], [3]]
    assert rounds[1]["ticket"]["mean"] == pytest.approx(0.84) and rounds[2]["ticket"]["std"] is None
    assert [g["mean"] for g in paired_gap(rounds, "ticket", "dense")] == pytest.approx([0.02, 0.03])


def test_user_errors_are_one_line_value_errors():
    with pytest.raises(ValueError, match="unknown suite"):
        suite("everything")
    with pytest.raises(ValueError, match="no values"):
        stats([])


def test_a_new_machine_resumes_from_the_kept_summaries_alone(smoke, tmp_path, capsys):
    """Only the results folder travels (committed); the run dirs stay on the machine that trained them."""
    import dataclasses
    import shutil

    from compress.reproduce.report import SUMMARIES
    from compress.reproduce.suite import finished_elsewhere

    out, _ = smoke
    moved = tmp_path / "results"
    shutil.copytree(out, moved)
    fresh_runs = tmp_path / "runs"  # a new machine: no run dir at all
    experiments = suite("smoke")
    kept = moved / SUMMARIES
    record = run_suite(experiments, fresh_runs, jobs=1, kept=kept)
    assert record["runs"] == [] and not (fresh_runs / "smoke_lenet300").exists()
    assert "2 of 2 runs finished on another machine" in capsys.readouterr().err
    write_results(experiments, fresh_runs, moved, "smoke")
    assert json.loads((moved / "smoke_lenet300.json").read_text())["rounds"] == \
        json.loads((out / "smoke_lenet300.json").read_text())["rounds"]
    # the invocation that trained them is still told (kept beside the results), with this one after it
    commands = [line for line in (moved / "README.md").read_text().splitlines() if "thread(s) per job" in line]
    assert len(commands) == 2 and "smoke_lenet300/seed0" in commands[0]

    # another recipe (one more round) is not the run that finished: it trains
    longer = dataclasses.replace(experiments[0], overrides=(*experiments[0].overrides, "lottery.rounds=3"))
    assert not finished_elsewhere(longer, 0, fresh_runs, kept)
    # nor is a run that stopped early (its summary lacks the last round)
    partial = json.loads((kept / "smoke_lenet300-seed1.json").read_text())
    partial["rounds"] = partial["rounds"][:-1]
    (kept / "smoke_lenet300-seed1.json").write_text(json.dumps(partial))
    assert finished_elsewhere(experiments[0], 0, fresh_runs, kept)
    assert not finished_elsewhere(experiments[0], 1, fresh_runs, kept)
