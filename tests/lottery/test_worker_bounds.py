"""Workers: never more than the cores or the jobs left, spawned on demand, dead with their parent however it
dies, one line when one is killed; Ray addresses that do not answer are one line within the timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from tiny import tiny_recipe

from compress import paths
from compress.errors import UserError
from compress.lottery import LotteryRun
from compress.lottery.executors import choose_executor, open_executor
from compress.recipe import recipe_from_dict

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread_per_training")


def test_workers_are_capped_at_the_cores_with_a_warning_and_1_means_one_at_a_time(monkeypatch, capsys):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert str(choose_executor("local:64", has_parallel_work=True)) == "local:4"
    assert "4 core(s)" in capsys.readouterr().err
    assert str(choose_executor("local:1", has_parallel_work=True)) == "inline"  # this process is the one
    assert str(choose_executor("auto:1", has_parallel_work=True, iterations=5000)) == "inline"
    assert str(choose_executor("local:3", has_parallel_work=True)) == "local:3"
    assert capsys.readouterr().err == ""


def test_a_run_opens_no_more_workers_than_controls_left_and_spawns_them_on_demand(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)  # a big machine: the cap is the jobs, not the cores
    recipe = recipe_from_dict(tiny_recipe(lottery={"rounds": 1, "controls": ["reinit"], "executor": "local:8"}))
    run = LotteryRun(recipe, tmp_path / "run", progress=False)
    try:
        executor = run.open_executor()
        try:
            assert executor.name == "local" and executor.workers == 1  # one control, so one worker
            assert len(executor.pool._processes) == 0  # none spawned before a job needs one
        finally:
            executor.close()
    finally:
        run.close()


PARENT = textwrap.dedent("""
    import os, sys, time
    from compress.lottery.executors import open_executor
    executor = open_executor("local", 2, threads=1)
    futures = [executor.submit(time.sleep, 120) for _ in range(2)]
    while len(executor.pool._processes) < 2 or not all(p.pid for p in executor.pool._processes.values()):
        time.sleep(0.05)
    print(" ".join(str(pid) for pid in executor.pool._processes), flush=True)
    time.sleep(float(sys.argv[1]))  # 0: killed while the workers still import; else: while they train
    os.kill(os.getpid(), 9)
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("after", ["0", "3"])
def test_workers_die_with_a_parent_killed_by_sigkill(after):
    parent = subprocess.run([sys.executable, "-c", PARENT, after], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert parent.returncode == -signal.SIGKILL, parent.stderr
    pids = [int(pid) for pid in parent.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 60  # a bound on waiting, not a speed claim: they go within a second here
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids), "a worker outlived its killed parent"


def _worker_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()
            and "resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_text()]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_worker_is_one_line_and_a_rerun_resumes(tmp_path):
    data = tiny_recipe(train={"iterations": 300, "eval_every": 100, "checkpoint_every": 50},
                       lottery={"rounds": 1, "controls": ["reinit", "random_prune"]})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    command = [sys.executable, str(REPO / "tools" / "find_ticket.py"), "--recipe", str(tmp_path / "r.yaml"),
               "--out", str(tmp_path / "run"), "--no-progress", "--executor", "local", "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "COMPRESS_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    workers: list[int] = []
    while time.monotonic() < deadline and process.poll() is None and not workers:
        # this process takes one control, the worker the other: both started means the worker trains one
        if all((paths.experiment_dir(tmp_path / "run", 1, name) / paths.MASK).exists()
               for name in ("reinit", "random_prune")):
            workers = _worker_pids(process.pid)
        time.sleep(0.1)
    assert workers and process.poll() is None, "no worker to kill: the run finished first"
    os.kill(workers[0], signal.SIGKILL)
    _, err = process.communicate(timeout=240)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert process.returncode == 2 and "Traceback" not in err and len(lines) == 1, err
    assert "worker process died" in lines[0] and "round 1 " in lines[0]
    assert "run the same command again" in lines[0]
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert all((paths.experiment_dir(tmp_path / "run", 1, name) / paths.RESULT).exists()
               for name in ("reinit", "random_prune"))


@pytest.mark.parametrize("address", ["127.0.0.1:1", "not a host", "ray://127.0.0.1:10001", "auto", "ray://:5"])
def test_a_bad_ray_address_is_one_line_naming_it(address, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("COMPRESS_RAY_TIMEOUT", "3")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(UserError) as caught:
        open_executor("ray", 1, address=address)
    message = str(caught.value)
    assert "\n" not in message and repr(address) in message


def test_the_connect_timeout_is_checked(monkeypatch):
    from compress.lottery.ray_address import connect_timeout

    assert connect_timeout(2.5) == 2.5
    monkeypatch.setenv("COMPRESS_RAY_TIMEOUT", "soon")
    with pytest.raises(UserError, match="COMPRESS_RAY_TIMEOUT"):
        connect_timeout()
