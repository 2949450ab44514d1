"""A run dir someone else prepared: a linked or FIFO lock, linked round folders, cut summary / result files,
read-only media, and a resume under another torch thread count."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tiny import tiny_recipe

from compress import io, paths
from compress.errors import UserError
from compress.lottery import find_ticket
from compress.lottery.rundir import LOCK, RunDirLock
from compress.recipe import recipe_from_dict

REPO = Path(__file__).resolve().parents[2]
SMALL = {"lottery": {"rounds": 2, "controls": ["reinit"]}, "train": {"iterations": 40}}


def _recipe():
    return recipe_from_dict(tiny_recipe(**SMALL))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("links") / "run"
    before = torch.get_num_threads()
    os.environ["COMPRESS_THREADS"] = "1"
    try:
        find_ticket(_recipe(), run_dir, progress=False, executor="inline")
    finally:
        del os.environ["COMPRESS_THREADS"]
        torch.set_num_threads(before)
    return run_dir


def _copy(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to, symlinks=True)
    return to


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_lock_that_is_a_link_is_refused_and_its_target_untouched(tmp_path, finished):
    run_dir = _copy(finished, tmp_path / "run")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (run_dir / LOCK).unlink(missing_ok=True)
    (run_dir / LOCK).symlink_to(victim)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(**SMALL)))
    done = subprocess.run([sys.executable, str(REPO / "tools" / "find_ticket.py"), "--recipe", str(recipe), "--out",
                           str(run_dir), "--no-progress"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "COMPRESS_THREADS": "1"})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("error:") == 1 and "symbolic link" in done.stderr and LOCK in done.stderr
    assert victim.read_text() == "precious"


def test_a_lock_that_is_a_fifo_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    os.mkfifo(tmp_path / "run" / LOCK)
    with pytest.raises(UserError, match="not a regular file"):
        RunDirLock(tmp_path / "run").acquire()


@pytest.mark.parametrize("linked", ["round_01", "round_01/reinit", "round_01/final.pt", "summary.json"])
def test_links_inside_a_run_dir_are_refused(tmp_path, finished, linked):
    run_dir = _copy(finished, tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    (run_dir / linked).rename(elsewhere)
    (run_dir / linked).symlink_to(elsewhere)
    (paths.round_dir(run_dir, 2) / paths.RESULT).unlink()  # something left to write
    before = {path: _digest(path) for path in ([elsewhere] if elsewhere.is_file() else elsewhere.rglob("*.*"))}
    with pytest.raises(UserError, match="symbolic link inside the run dir"):
        find_ticket(_recipe(), run_dir, progress=False, executor="inline")
    assert before == {path: _digest(path) for path in before}


@pytest.mark.parametrize("cut", [paths.SUMMARY, f"round_01/{paths.RESULT}", f"round_01/reinit/{paths.RESULT}"])
@pytest.mark.parametrize("size", [0, 7])
def test_cut_summary_and_result_files_are_recomputed(tmp_path, finished, cut, size, monkeypatch):
    monkeypatch.setenv("COMPRESS_THREADS", "1")
    run_dir = _copy(finished, tmp_path / "run")
    original = (run_dir / cut).read_bytes()
    weights = (run_dir / cut).with_name(paths.FINAL)
    trained = _digest(weights) if weights.exists() else None
    (run_dir / cut).write_bytes(original[:size])
    summary = find_ticket(_recipe(), run_dir, progress=False, executor="inline")
    # the same training again: the same weights bit for bit, the same file but for its wall time
    assert _timeless(io.load_json(run_dir / cut)) == _timeless(io.load_json(finished / cut))
    assert trained is None or _digest(weights) == trained
    assert _timeless(summary["rounds"]) == _timeless(io.load_json(finished / paths.SUMMARY)["rounds"])


def _timeless(value):
    if isinstance(value, dict):
        return {key: _timeless(item) for key, item in value.items() if key != "wall_s"}
    return [_timeless(item) for item in value] if isinstance(value, list) else value


def test_a_finished_run_on_read_only_media_writes_nothing_for_other_settings(tmp_path, finished, monkeypatch):
    run_dir = _copy(finished, tmp_path / "run")

    def read_only(self):  # what acquire() finds on a read-only mount (EROFS), without needing one
        self.read_only = True
        return self

    monkeypatch.setattr(RunDirLock, "acquire", read_only)
    writes = []
    monkeypatch.setattr(io, "_atomic", lambda path, write: writes.append(path))
    recipe = recipe_from_dict(tiny_recipe(**{**SMALL, "lottery": {**SMALL["lottery"], "executor": "local:2"}},
                                          export={"opset": 13}))
    summary = find_ticket(recipe, run_dir, progress=False)
    assert writes == [] and summary["ticket"]["round"] in (0, 1, 2)


def test_a_resume_under_another_thread_count_is_refused(tmp_path, finished, monkeypatch):
    run_dir = _copy(finished, tmp_path / "run")
    monkeypatch.setenv("COMPRESS_THREADS", "2")
    before = torch.get_num_threads()
    try:
        find_ticket(_recipe(), _copy(finished, tmp_path / "done"), progress=False, executor="inline")  # read only
        shutil.rmtree(paths.round_dir(run_dir, 2))
        (paths.round_dir(run_dir, 1) / "reinit" / paths.RESULT).unlink()
        with pytest.raises(UserError, match="COMPRESS_THREADS=1"):
            find_ticket(_recipe(), run_dir, progress=False, executor="inline")
    finally:
        torch.set_num_threads(before)
    assert io.load_json(paths.round_dir(run_dir, 1) / "identity.json")["threads"] == 1
