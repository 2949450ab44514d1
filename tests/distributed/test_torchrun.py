"""A real 2-process gloo run through torchrun: it completes, ranks hold identical masks, it resumes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from compress import paths

REPO = Path(__file__).resolve().parents[2]
RECIPE = {
    "name": "tiny_ddp",
    "model": {"name": "lenet300_100"},
    "data": {"name": "synthetic", "validation_size": 100},
    "train": {"iterations": 40, "batch_size": 32, "eval_every": 20, "checkpoint_every": 20, "eval_batch_size": 500},
    "prune": {"rates": {"linear": 0.2, "output": 0.1}},
    "lottery": {"rounds": 2, "controls": ["random_prune"]},
    "export": {"onnx": False},
}


def _torchrun(recipe: Path, out: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(REPO / "tools" / "find_ticket.py"), "--recipe", str(recipe), "--out", str(out), "--no-progress"]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})


def test_two_process_gloo_run_has_identical_masks_and_resumes(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    out = tmp_path / "run"
    result = _torchrun(recipe, out)
    assert result.returncode == 0, result.stderr[-2000:]
    checksums: dict[tuple[str, str], set[str]] = {}
    for rank, world, round_index, checksum in re.findall(
            r"\[rank (\d)/(\d)\] round (\d+) masks verified identical, checksum ([\d.]+)", result.stderr):
        assert world == "2"
        checksums.setdefault(round_index, {})[rank] = checksum
    assert set(checksums) == {"0", "1", "2"}
    for round_index, by_rank in checksums.items():
        assert set(by_rank) == {"0", "1"} and len(set(by_rank.values())) == 1, (round_index, by_rank)
    summary = yaml.safe_load((out / paths.SUMMARY).read_text())
    assert [entry["round"] for entry in summary["rounds"]] == [0, 1, 2]
    masks = torch.load(paths.round_dir(out, 2) / paths.MASK, weights_only=False)
    assert 0.6 < sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values()) < 0.7

    mtime = (out / paths.SUMMARY).stat().st_mtime_ns
    again = _torchrun(recipe, out)  # everything is finished: skipped, same answer
    assert again.returncode == 0, again.stderr[-2000:]
    assert torch.equal(torch.load(paths.round_dir(out, 2) / paths.MASK, weights_only=False)["1"], masks["1"])
    assert (out / paths.SUMMARY).stat().st_mtime_ns >= mtime
