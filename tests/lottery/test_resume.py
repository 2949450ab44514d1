"""kill -9 at any moment never corrupts the run dir; the resumed run ends with the same masks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch
import yaml
from tiny import tiny_recipe

from compress import paths
from compress.recipe import recipe_from_dict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _command(recipe_path, out):
    return [sys.executable, os.path.join(REPO, "tools", "find_ticket.py"), "--recipe", str(recipe_path),
            "--out", str(out), "--no-progress"]


def _all_masks(run_dir, rounds):
    return [torch.load(paths.round_dir(run_dir, r) / paths.MASK, weights_only=False) for r in range(rounds + 1)]


def test_kill_9_then_resume_gives_identical_masks(tmp_path):
    data = tiny_recipe(train={"iterations": 400, "eval_every": 50, "checkpoint_every": 25},
                       lottery={"rounds": 3, "controls": ["reinit"]})
    recipe_from_dict(data)  # valid
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(yaml.safe_dump(data))
    env = {**os.environ, "COMPRESS_THREADS": "1", "PYTHONPATH": REPO}

    reference = tmp_path / "reference"
    subprocess.run(_command(recipe_path, reference), check=True, env=env, capture_output=True)

    resumed = tmp_path / "resumed"
    kills = 0
    # Kill at staggered moments: mid-round, and after some rounds have finished.
    for delay in (4.0, 7.0, 9.0):
        process = subprocess.Popen(_command(recipe_path, resumed), env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(delay)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait()
    assert kills >= 1, "the run finished before it could be killed; raise the budget"
    final = subprocess.run(_command(recipe_path, resumed), env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr

    for ours, theirs in zip(_all_masks(resumed, 3), _all_masks(reference, 3), strict=True):
        for name in theirs:
            assert torch.equal(ours[name], theirs[name])
    ref_final = torch.load(paths.round_dir(reference, 3) / paths.FINAL, weights_only=False)
    res_final = torch.load(paths.round_dir(resumed, 3) / paths.FINAL, weights_only=False)
    assert all(torch.equal(ref_final[k], res_final[k]) for k in ref_final)
    assert not list(resumed.rglob("*.tmp")), "a temporary file was left behind"
