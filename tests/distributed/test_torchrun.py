"""Real 2-process gloo runs through torchrun (CPU), compared with the same work in one process.

What holds, and what these tests assert:

* MLP (LeNet-300-100, Adam), the whole find_ticket pipeline in float32: masks equal exactly, accuracies
  equal, losses within 1e-4, every weight within atol 1e-5 (measured: 1.3e-6 after 30 steps). Not bit
  for bit: each rank's weight gradient sums its half of the batch and DDP adds the halves, another
  order of float32 additions than one process's sum over the whole batch; Adam then turns the rounding
  of near-zero gradients into steps of up to ~lr, so the gap grows with the number of steps.
* BatchNorm (ResNet-20, SGD+momentum, 30% of every conv/linear pruned), ``train()`` in float64: weights,
  masks, running statistics and metrics within 1e-9 (measured 4e-14) with ``train.sync_batchnorm`` on;
  off, they differ by ~4 -- two processes are then another training run. In float32 the synchronised
  run also starts within rounding of one process, but rounding in the batch statistics flips the odd
  ReLU whose input is within ~1e-7 of 0, and SGD amplifies that like any perturbation (weights 5e-2
  apart after 30 steps of this recipe): float32 BatchNorm runs are equivalent runs, not within 1e-5.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from compress import paths
from compress.io import load_torch, read_jsonl

REPO = Path(__file__).resolve().parents[2]
MLP = {
    "name": "tiny_ddp",
    "model": {"name": "lenet300_100"},
    "data": {"name": "synthetic", "validation_size": 100},
    "train": {"iterations": 30, "batch_size": 32, "eval_every": 15, "checkpoint_every": 15, "eval_batch_size": 500},
    "prune": {"rates": {"linear": 0.2, "output": 0.1}},
    "lottery": {"rounds": 1, "controls": ["random_prune"]},
    "export": {"onnx": False},
}
# ResNet-20 (BatchNorm after every conv) on 8x8 synthetic images, for ddp_train.py: a few seconds
BATCHNORM = {
    "model": {"name": "resnet20"},
    "data": {"name": "synthetic", "validation_size": 100, "image_size": 8},
    "train": {"iterations": 30, "batch_size": 32, "eval_every": 15, "eval_batch_size": 500,
              "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
}
ENV = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}


def _run(recipe: dict, tmp_path: Path, name: str, processes: int) -> tuple[Path, subprocess.CompletedProcess]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / name
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    command = [sys.executable, *launcher, str(REPO / "tools" / "find_ticket.py"), "--recipe", str(path),
               "--out", str(out), "--no-progress"]
    return out, subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=ENV)


def _experiments(out: Path) -> list[Path]:
    return sorted(folder.parent for folder in out.rglob(paths.RESULT))


def _assert_same_run(one: Path, two: Path, weights_atol: float = 1e-5) -> None:
    folders = _experiments(one)
    assert [f.relative_to(one) for f in folders] == [f.relative_to(two) for f in _experiments(two)]
    assert len(folders) >= 2
    for folder in folders:
        other = two / folder.relative_to(one)
        masks, other_masks = load_torch(folder / paths.MASK), load_torch(other / paths.MASK)
        assert masks.keys() == other_masks.keys()
        for name in masks:
            assert torch.equal(masks[name], other_masks[name]), (folder, name)
        final, other_final = load_torch(folder / paths.FINAL), load_torch(other / paths.FINAL)
        assert final.keys() == other_final.keys()
        for key, value in final.items():
            if value.is_floating_point():
                torch.testing.assert_close(other_final[key], value, atol=weights_atol, rtol=0, msg=f"{folder} {key}")
            else:
                assert torch.equal(other_final[key], value), (folder, key)
        history, other_history = read_jsonl(folder / paths.METRICS), read_jsonl(other / paths.METRICS)
        assert [p["iteration"] for p in history] == [p["iteration"] for p in other_history]
        for point, other_point in zip(history, other_history, strict=True):
            for key in ("train_loss", "val_loss", "test_loss"):
                assert other_point[key] == pytest.approx(point[key], abs=1e-4), (folder, point["iteration"], key)
            for key in ("val_accuracy", "test_accuracy"):
                assert other_point[key] == point[key], (folder, point["iteration"], key)


def _checksums_agree(stderr: str, rounds: int) -> None:
    checksums: dict[str, dict[str, str]] = {}
    for rank, world, round_index, checksum in re.findall(
            r"\[rank (\d)/(\d)\] round (\d+) masks verified identical, checksum ([\d.]+)", stderr):
        assert world == "2"
        checksums.setdefault(round_index, {})[rank] = checksum
    assert set(checksums) == {str(r) for r in range(rounds + 1)}, stderr[-2000:]
    for round_index, by_rank in checksums.items():
        assert set(by_rank) == {"0", "1"} and len(set(by_rank.values())) == 1, (round_index, by_rank)


def test_two_processes_match_one_mlp_and_a_finished_run_is_skipped(tmp_path):
    one, single = _run(MLP, tmp_path, "one", 1)
    assert single.returncode == 0, single.stderr[-2000:]
    two, ddp = _run(MLP, tmp_path, "two", 2)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    _checksums_agree(ddp.stderr, rounds=1)
    _assert_same_run(one, two)
    masks = load_torch(paths.round_dir(two, 1) / paths.MASK)
    kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    assert 0.75 < kept < 0.85

    finals = {folder: (folder / paths.FINAL).stat().st_mtime_ns for folder in _experiments(two)}
    again = _run(MLP, tmp_path, "two", 2)[1]  # everything is finished: no experiment is trained again
    assert again.returncode == 0, again.stderr[-2000:]
    assert {folder: (folder / paths.FINAL).stat().st_mtime_ns for folder in _experiments(two)} == finals
    _assert_same_run(one, two)


def _train(recipe: dict, tmp_path: Path, name: str, processes: int, dtype: str = "float64") -> dict:
    (tmp_path / f"{name}.json").write_text(json.dumps(recipe))
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    command = [sys.executable, *launcher, str(REPO / "tests" / "distributed" / "ddp_train.py"),
               str(tmp_path / f"{name}.json"), str(tmp_path / f"{name}.pt"), dtype]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_torch(tmp_path / f"{name}.pt")


def _max_difference(one: dict, two: dict) -> float:
    assert one["state"].keys() == two["state"].keys()
    return max(float((one["state"][key].double() - two["state"][key].double()).abs().max()) for key in one["state"])


def test_two_processes_match_one_with_batchnorm(tmp_path):
    """In float64 two processes take one process's steps (see the module docstring for float32)."""
    one = _train(BATCHNORM, tmp_path, "one", 1)
    two = _train(BATCHNORM, tmp_path, "two", 2)
    assert _max_difference(one, two) < 1e-9  # weights, masks, running mean/var, num_batches_tracked
    assert [p["iteration"] for p in one["history"]] == [p["iteration"] for p in two["history"]] == [15, 30]
    for point, other in zip(one["history"], two["history"], strict=True):
        for key, value in point.items():
            assert other[key] == pytest.approx(value, abs=1e-9), key

    unsynced = _train({**BATCHNORM, "train": {**BATCHNORM["train"], "sync_batchnorm": False}}, tmp_path, "unsynced", 2)
    assert _max_difference(one, unsynced) > 1e-3  # the control: per-process statistics are another run


def test_uneven_batch_split_is_refused_before_training(tmp_path):
    recipe = {**MLP, "train": {**MLP["train"], "batch_size": 33}}
    out, result = _run(recipe, tmp_path, "uneven", 2)
    assert result.returncode != 0
    # each rank refuses in one line; the two ranks write stderr at once, so their lines may run together,
    # and torchrun may stop the second rank before it writes
    refusals = result.stderr.count("error: train.batch_size=33 does not split evenly over 2 processes")
    assert 1 <= refusals <= 2, result.stderr[-3000:]
    # the CLI's code for a user's mistake; torchrun may stop the second rank once the first has exited,
    # so it reports one or two failures
    assert 1 <= len(re.findall(r"exitcode\s*: 2 ", result.stderr)) <= 2
    assert not list(out.rglob(paths.METRICS)) and not list(out.rglob(paths.CHECKPOINT))
