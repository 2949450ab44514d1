"""kill -9 in the middle of an at_init (snip) run and of an early-bird run; the resumed runs end with the
masks, early-bird steps and trained weights of uninterrupted runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from compress import paths
from compress.io import load_json
from compress.recipe import recipe_from_dict

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "lottery"))
from tiny import tiny_recipe  # noqa: E402

CASES = {
    "at_init_snip": ({"iterations": 120, "eval_every": 40, "checkpoint_every": 10},
                     {"method": "snip", "rates": {"linear": 0.5, "output": 0.2}},
                     {"rounds": 2, "strategy": "at_init", "controls": [], "executor": "inline"}, 1),
    "early_bird": ({"iterations": 120, "eval_every": 40, "checkpoint_every": 10}, {},
                   {"rounds": 2, "early_bird": {"every": 10, "distance": 0.2, "patience": 2},
                    "executor": "inline", "controls": []}, 0),
}


def _command(recipe_path: Path, out: Path) -> list[str]:
    return [sys.executable, str(REPO / "tools" / "find_ticket.py"), "--recipe", str(recipe_path), "--out", str(out),
            "--no-progress"]


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_kill_9_mid_round_then_resume_is_identical(tmp_path: Path, case: str) -> None:
    train, prune, lottery, kill_round = CASES[case]
    data = tiny_recipe(train=train, prune=prune, lottery=lottery)
    recipe_from_dict(data)
    recipe_path = tmp_path / "r.yaml"
    recipe_path.write_text(yaml.safe_dump(data))
    env = {**os.environ, "COMPRESS_THREADS": "1", "PYTHONPATH": str(REPO)}
    reference = tmp_path / "reference"
    subprocess.run(_command(recipe_path, reference), check=True, env=env, capture_output=True)

    resumed = tmp_path / "resumed"
    process = subprocess.Popen(_command(recipe_path, resumed), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    checkpoint = paths.round_dir(resumed, kill_round) / paths.CHECKPOINT
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed = process.poll() is None
    if killed:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert killed, "the run finished before a checkpoint of the round appeared"
    assert not (paths.round_dir(resumed, 2) / paths.RESULT).exists()
    final = subprocess.run(_command(recipe_path, resumed), env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr

    for r in range(3):
        ours = torch.load(paths.round_dir(resumed, r) / paths.MASK, weights_only=True)
        theirs = torch.load(paths.round_dir(reference, r) / paths.MASK, weights_only=True)
        assert all(torch.equal(ours[name], theirs[name]) for name in theirs)
        a = load_json(paths.round_dir(resumed, r) / paths.RESULT)
        b = load_json(paths.round_dir(reference, r) / paths.RESULT)
        assert a.get("early_bird_step") == b.get("early_bird_step")
        assert a["train_flops"] == b["train_flops"] > 0
    ours = torch.load(paths.round_dir(resumed, 2) / paths.FINAL, weights_only=True)
    theirs = torch.load(paths.round_dir(reference, 2) / paths.FINAL, weights_only=True)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    summary = load_json(reference / paths.SUMMARY)
    if case == "early_bird":
        steps = [entry.get("early_bird_step") for entry in summary["rounds"]]
        assert steps[0] is not None, "the early-bird draws never converged; loosen distance"
        assert summary["rounds"][1]["compute_to_ticket"]["iterations"] == steps[0] + 120
    else:
        assert [e["compute_to_ticket"]["iterations"] for e in summary["rounds"]] == [120, 120, 120]
