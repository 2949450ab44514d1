"""Seeds interleaved round by round give the run dirs of seeds run one after the other, bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from run_compare import without_wall

from compress import paths
from compress.errors import UserError
from compress.reproduce import run_suite, suite

pytestmark = pytest.mark.usefixtures("one_thread_per_training")  # bit-for-bit needs equal threads


def test_interleaved_seeds_match_sequential_seeds(tmp_path):
    experiments = suite("smoke")
    record = run_suite(experiments, tmp_path / "interleaved", jobs=1, interleave=True)
    run_suite(experiments, tmp_path / "sequential", jobs=1)
    assert sorted(r["seed"] for r in record["runs"]) == [0, 1]
    for seed in (0, 1):
        ours = tmp_path / "interleaved" / "smoke_lenet300" / f"seed{seed}"
        theirs = tmp_path / "sequential" / "smoke_lenet300" / f"seed{seed}"
        assert without_wall(json.loads((ours / paths.SUMMARY).read_text())) == \
            without_wall(json.loads((theirs / paths.SUMMARY).read_text()))
        for name in (paths.FINAL,):
            for folder in ("round_02", "round_02/reinit"):
                left = torch.load(ours / folder / name, weights_only=True)
                right = torch.load(theirs / folder / name, weights_only=True)
                assert all(torch.equal(left[k], right[k]) for k in left), f"{folder} differs"
    # a rerun of the finished suite retrains nothing
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "interleaved").rglob("result.json")}
    run_suite(experiments, tmp_path / "interleaved", jobs=1, interleave=True)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "interleaved").rglob("result.json")} == before


def test_interleave_needs_one_job(tmp_path):
    with pytest.raises(UserError, match="--jobs must be 1"):
        run_suite(suite("smoke"), tmp_path, jobs=2, interleave=True)
