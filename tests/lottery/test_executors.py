"""Where the controls train (inline, local processes, Ray) changes nothing in the run dir but wall times.

On a CPU, torch's results depend on its intra-op thread count (reductions split over threads round
differently), so bit-for-bit comparisons pin every training to one thread with ``COMPRESS_THREADS=1``,
as a parallel run on two cores does by itself (``cores // workers``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from run_compare import without_wall
from tiny import tiny_recipe

from compress import paths
from compress.errors import UserError
from compress.lottery import find_ticket
from compress.lottery.executors import EXECUTORS, choose_executor, open_executor, parse_executor
from compress.recipe import recipe_from_dict, recipe_hash

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROUNDS = 2

pytestmark = pytest.mark.usefixtures("one_thread_per_training")  # bit-for-bit needs equal threads


def _recipe(**lottery):
    return tiny_recipe(lottery={"rounds": ROUNDS, "controls": ["reinit", "random_prune"], **lottery})


def _experiments(run_dir, rounds, controls):
    yield paths.round_dir(run_dir, 0)
    for r in range(1, rounds + 1):
        yield paths.round_dir(run_dir, r)
        for name in controls:
            yield paths.experiment_dir(run_dir, r, name)


def assert_same_run(ours, theirs, rounds, controls=("reinit", "random_prune")):
    assert without_wall(json.loads((ours / paths.SUMMARY).read_text())) == \
        without_wall(json.loads((theirs / paths.SUMMARY).read_text()))
    for a, b in zip(_experiments(ours, rounds, controls), _experiments(theirs, rounds, controls), strict=True):
        for name in (paths.MASK, paths.FINAL):
            left, right = torch.load(a / name, weights_only=True), torch.load(b / name, weights_only=True)
            assert left.keys() == right.keys()
            assert all(torch.equal(left[k], right[k]) for k in left), f"{a / name} differs"
        assert without_wall(json.loads((a / paths.RESULT).read_text())) == \
            without_wall(json.loads((b / paths.RESULT).read_text()))
    assert not list(ours.rglob("*.tmp"))


@pytest.fixture
def inline_run(tmp_path_factory):
    out = tmp_path_factory.getbasetemp() / "inline-reference"
    if not (out / paths.SUMMARY).exists():  # shared by the tests that compare with it
        find_ticket(recipe_from_dict(_recipe()), out, progress=False, executor="inline")
    return out


def test_executor_spec_and_choice():
    assert parse_executor("local:3") == ("local", 3)
    assert parse_executor("auto") == ("auto", None)
    with pytest.raises(UserError, match="did you mean 'local'"):
        parse_executor("locl")
    with pytest.raises(UserError, match="NAME:WORKERS"):
        parse_executor("local:x")
    assert {"inline", "local", "ray"} <= set(EXECUTORS.list())
    cores = os.cpu_count() or 1
    assert str(choose_executor("local:3", has_parallel_work=True)) == ("local:3" if cores >= 3 else f"local:{cores}"
                                                                        if cores > 1 else "inline")
    assert str(choose_executor("auto", has_parallel_work=False)) == "inline"
    assert str(choose_executor("auto", has_parallel_work=True, device="cuda")) == "inline"
    if (os.cpu_count() or 1) >= 2:
        assert str(choose_executor("auto:3", has_parallel_work=True, iterations=2000)) == f"local:{min(3, cores)}"
        # the main process is one of the 2 workers: benchmarks/results/parallel_run.md
        assert str(choose_executor("auto", has_parallel_work=True, iterations=2000)) == "local:2"
    assert str(choose_executor("auto", has_parallel_work=True, iterations=300)) == "inline"
    assert str(choose_executor("auto:2", has_parallel_work=True, iterations=300)) == "inline"
    assert str(choose_executor("local", has_parallel_work=True, distributed_active=True)) == "inline"


def _hold(marker: str, seconds: float) -> int:
    """A stand-in training: records when it ran and where."""
    start = time.time()
    time.sleep(seconds)
    with open(marker, "w") as handle:
        json.dump({"pid": os.getpid(), "start": start, "end": time.time()}, handle)
    return os.getpid()


def test_slot_queue_keeps_jobs_until_a_slot_is_free_and_lets_this_process_take_them(tmp_path):
    from compress.lottery.schedule import SlotQueue

    with open_executor("local", 1, threads=1) as executor:
        queue = SlotQueue(executor, slots=1)
        futures = [queue.submit(_hold, str(tmp_path / f"{i}.json"), 0.4) for i in range(5)]
        ran_here = 0
        while queue.run_here():  # what the runner does once its ticket chain is done
            ran_here += 1
        assert sorted(f.result(timeout=120) for f in futures)  # every job ran, here or in the worker
        queue.close()
    runs = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(5)]
    assert ran_here >= 1 and {r["pid"] for r in runs} - {os.getpid()}, "both places should have trained"
    edges = sorted([(r["start"], 1) for r in runs] + [(r["end"], -1) for r in runs])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    assert peak <= 2, "more than one slot plus this process ran at once"


def test_slot_queue_close_with_cancel_drops_what_waits():
    from concurrent.futures import Future

    from compress.lottery.executors import Executor
    from compress.lottery.schedule import SlotQueue

    class Busy(Executor):  # its one slot stays taken: whatever comes next must wait in the queue
        def submit(self, fn, /, *args):
            return Future()

    queue = SlotQueue(Busy(1), slots=1)
    first, second, third = (queue.submit(pow, 2, n) for n in range(3))
    deadline = time.monotonic() + 10
    while queue.in_flight < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert queue.in_flight == 1 and len(queue.queue) == 2  # one slot: the others were never handed over
    queue.close(cancel=True)
    assert second.cancelled() and third.cancelled() and not first.done()


def test_executor_is_not_in_the_run_hash():
    assert recipe_hash(recipe_from_dict(_recipe(executor="local:2"))) == recipe_hash(recipe_from_dict(_recipe()))


def test_inline_executor_runs_at_once_and_delivers_errors():
    with open_executor("inline") as executor:
        assert executor.submit(pow, 2, 5).result() == 32
        failed = executor.submit(int, "x")
        assert failed.done() and isinstance(failed.exception(), ValueError)


def test_local_2_workers_gives_the_inline_run_bit_for_bit(inline_run, tmp_path):
    out = tmp_path / "local"
    summary = find_ticket(recipe_from_dict(_recipe()), out, progress=False, executor="local:2")
    assert summary["ticket"] == json.loads((inline_run / paths.SUMMARY).read_text())["ticket"]
    assert_same_run(out, inline_run, ROUNDS)
    assert (out / paths.TICKET).exists() and (out / paths.REPORT).exists()
    # a rerun of the finished run trains nothing and writes nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".compress.lock"}
    find_ticket(recipe_from_dict(_recipe()), out, progress=False, executor="local:2")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".compress.lock"} == before


def test_a_diverging_run_stops_with_its_error(tmp_path):
    data = _recipe()
    data["train"] = {**data["train"], "optimizer": {"name": "sgd", "lr": 1e12}}  # diverges at once
    with pytest.raises(UserError, match="non-finite|diverge"):
        find_ticket(recipe_from_dict(data), tmp_path / "run", progress=False, executor="local:2")


@pytest.mark.parametrize("name", ["inline", "local"])
def test_a_worker_error_reaches_the_caller_as_it_was(name):
    with open_executor(name, 1) as executor:
        assert executor.submit(pow, 3, 2).result() == 9
        with pytest.raises(UserError, match="unknown executor 'nope'"):
            executor.submit(parse_executor, "nope").result()


def _command(recipe_path, out, *extra):
    return [sys.executable, os.path.join(REPO, "tools", "find_ticket.py"), "--recipe", str(recipe_path),
            "--out", str(out), "--no-progress", *extra]


def _live_members(group: int) -> list[int]:
    """Processes of process group ``group`` that are not zombies."""
    live = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[2]) == group and fields[0] != "Z":
                live.append(int(entry))
    return live


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_during_a_local_parallel_run_then_resume(tmp_path):
    data = tiny_recipe(train={"iterations": 300, "eval_every": 50, "checkpoint_every": 25},
                       lottery={"rounds": 3, "controls": ["reinit", "random_prune"]})
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONPATH": REPO, "COMPRESS_THREADS": "1"}
    reference = tmp_path / "reference"
    subprocess.run(_command(recipe_path, reference, "--executor", "inline"), check=True, env=env,
                   capture_output=True)

    resumed = tmp_path / "resumed"
    process = subprocess.Popen(_command(recipe_path, resumed, "--executor", "local", "--workers", "2"), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # kill once a worker has finished a control (so the workers are busy) and the run is not done
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if list(resumed.glob("round_*/*/result.json")):
            break
        time.sleep(0.1)
    assert process.poll() is None, "the run finished before it could be killed; raise the budget"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 30
    while _live_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _live_members(process.pid), "a worker outlived its killed parent"
    assert not (resumed / paths.SUMMARY).exists() or \
        len(json.loads((resumed / paths.SUMMARY).read_text())["rounds"]) < 4

    final = subprocess.run(_command(recipe_path, resumed, "--executor", "local", "--workers", "2"), env=env,
                           capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert_same_run(resumed, reference, 3)


def test_ray_gives_the_inline_run(inline_run, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "ray"
        find_ticket(recipe_from_dict(_recipe()), out, progress=False, executor="ray:2")
        assert ray.is_initialized(), "a Ray the caller started is the caller's to stop"
    finally:
        ray.shutdown()
    assert_same_run(out, inline_run, ROUNDS)


def test_the_reproduction_suite_runs_its_pairs_on_the_local_executor(tmp_path):
    from compress.reproduce import run_suite, suite

    record = run_suite(suite("smoke"), tmp_path / "runs", jobs=2, executor="local")
    assert record["jobs"] == 2 and record["threads_per_job"] == 1
    assert sorted((r["experiment"], r["seed"]) for r in record["runs"]) == [("smoke_lenet300", 0),
                                                                           ("smoke_lenet300", 1)]
    for seed in (0, 1):
        assert (tmp_path / "runs" / "smoke_lenet300" / f"seed{seed}" / paths.SUMMARY).exists()
