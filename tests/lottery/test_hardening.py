"""A careless or hostile user against the run dir: planted pickles, two writers, mixed runs, cut files."""

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
from tiny import tiny_recipe

from compress import io, paths
from compress.errors import UserError
from compress.lottery import LotteryRun, choose_ticket, default_run_dir, find_ticket, read_ticket
from compress.lottery.rundir import IDENTITY, remove_stale_temp_files
from compress.recipe import recipe_from_dict

REPO = Path(__file__).resolve().parents[2]
SMALL = {"lottery": {"rounds": 2, "controls": []}}


class Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _plant(path: Path, marker: Path) -> None:
    torch.save({"weights": torch.ones(2), "trap": Payload(marker)}, path)


def _tool(tool: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / tool), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), "COMPRESS_THREADS": "1",
                                            **(env or {})})


def _recipe_file(tmp_path: Path, **sections) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(**{**SMALL, **sections})))
    return path


def _assert_one_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One finished tiny run, copied by the tests that damage it."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    find_ticket(recipe_from_dict(tiny_recipe(**SMALL)), run_dir, progress=False)
    return run_dir


def _copy(run_dir: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run_dir, to)
    return to


# -- 1. no code execution from any artifact --------------------------------------------------------
# (planted file, file removed so that the rerun must read the planted one)
@pytest.mark.parametrize(("artifact", "needs_it"), [("round_01/mask.pt", None), ("round_00/final.pt", "round_01/mask.pt"),
                                                    ("round_01/final.pt", "round_02/mask.pt")])
def test_a_planted_pickle_is_refused_in_every_round_artifact(tmp_path, finished, artifact, needs_it):
    run_dir = _copy(finished, tmp_path / "run")
    marker = tmp_path / "pwned"
    _plant(run_dir / artifact, marker)
    if needs_it:
        (run_dir / needs_it).unlink()
    with pytest.raises(UserError, match=f"{artifact}: refused"):
        find_ticket(recipe_from_dict(tiny_recipe(**SMALL)), run_dir, progress=False)
    assert not marker.exists(), f"loading {artifact} ran code"


def test_a_planted_ticket_is_refused(tmp_path, finished):
    marker = tmp_path / "pwned"
    _plant(tmp_path / "ticket.pt", marker)
    with pytest.raises(UserError, match="refused"):
        read_ticket(tmp_path / "ticket.pt")
    assert not marker.exists()


def test_a_planted_ticket_is_refused_by_the_export_tool(tmp_path, finished):
    run_dir = _copy(finished, tmp_path / "run")
    marker = tmp_path / "pwned"
    _plant(run_dir / paths.TICKET, marker)
    result = _tool("export_onnx.py", "--run", str(run_dir))
    _assert_one_line(result, "ticket.pt", "refused")
    assert not marker.exists()


def test_a_planted_rewind_point_is_refused(tmp_path):
    recipe = recipe_from_dict(tiny_recipe(lottery={"rounds": 1, "controls": [], "rewind_to": 5}))
    run_dir = tmp_path / "run"
    run = LotteryRun(recipe, run_dir, progress=False)
    try:
        run.run_round(0)
        marker = tmp_path / "pwned"
        _plant(run_dir / paths.REWIND, marker)
        with pytest.raises(UserError, match="rewind.pt.*refused"):
            run.run_round(1)
    finally:
        run.close()
    assert not marker.exists()


# -- truncated files are named, and recomputed where they can be -------------------------------------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize(("artifact", "needs_it"), [("round_01/mask.pt", None), ("round_01/final.pt", "round_02/mask.pt"),
                                                    ("round_02/mask.pt", None)])
def test_a_truncated_round_file_is_recomputed_to_the_same_result(tmp_path, finished, artifact, needs_it):
    run_dir = _copy(finished, tmp_path / "run")
    _truncate(run_dir / artifact)
    if needs_it:
        (run_dir / needs_it).unlink()
    find_ticket(recipe_from_dict(tiny_recipe(**SMALL)), run_dir, progress=False)
    for name in ("round_02/mask.pt", "round_02/final.pt", artifact):
        ours = torch.load(run_dir / name, weights_only=True)
        theirs = torch.load(finished / name, weights_only=True)
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    assert (run_dir / f"{artifact}.corrupt").exists()  # moved aside, not silently deleted


def test_a_truncated_ticket_is_named_in_one_line(tmp_path, finished):
    run_dir = _copy(finished, tmp_path / "run")
    _truncate(run_dir / paths.TICKET)
    _assert_one_line(_tool("export_onnx.py", "--run", str(run_dir)), "ticket.pt", "truncated or corrupt")


# -- 2. the run dir: one writer, and only our own temporary files ------------------------------------
def test_out_into_a_folder_leaves_unrelated_hidden_tmp_files_alone(tmp_path):
    out = tmp_path / "work"
    theirs = [out / ".notes.tmp", out / "round_00" / ".x.tmp", out / "other" / ".mask.pt.abcdefgh.tmp",
              out / ".thesis.tex.abcdefgh.tmp"]
    for path in theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("keep me")
    ours = out / "round_00" / ".final.pt.a1b2c3d4.tmp"  # what a killed atomic write of ours leaves
    ours.write_text("stale")
    assert remove_stale_temp_files(out) == [ours]
    assert all(path.read_text() == "keep me" for path in theirs)


def test_a_second_process_on_the_same_run_dir_is_refused(tmp_path):
    recipe = _recipe_file(tmp_path, train={"iterations": 400, "eval_every": 100, "checkpoint_every": 100})
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "COMPRESS_THREADS": "1"}
    first = subprocess.Popen([sys.executable, str(REPO / "tools" / "find_ticket.py"), "--recipe", str(recipe),
                              "--out", str(out), "--no-progress"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "round_00" / IDENTITY).exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    first.send_signal(signal.SIGSTOP)  # alive and holding the lock while the second starts, however slow its start
    try:
        second = _tool("find_ticket.py", "--recipe", str(recipe), "--out", str(out), "--no-progress")
    finally:
        first.send_signal(signal.SIGCONT)
    _assert_one_line(second, str(out), "in use by pid")
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    summary = io.load_json(out / paths.SUMMARY)
    assert [entry["round"] for entry in summary["rounds"]] == [0, 1, 2]


# -- 3. resume never mixes runs ----------------------------------------------------------------------
def test_resume_refuses_rounds_of_another_recipe_even_without_recipe_yaml(tmp_path, finished):
    run_dir = _copy(finished, tmp_path / "run")
    (run_dir / paths.RECIPE).unlink()
    other = recipe_from_dict(tiny_recipe(**SMALL, train={"optimizer": {"name": "adam", "lr": 3e-3}}))
    with pytest.raises(UserError, match="round 0 was made by a different recipe"):
        find_ticket(other, run_dir, progress=False)


def test_resume_refuses_another_data_source(tmp_path, finished, monkeypatch):
    run_dir = _copy(finished, tmp_path / "run")
    (paths.round_dir(run_dir, 2) / paths.RESULT).unlink()
    from compress.lottery import runner

    real = runner.load_dataset

    def other_source(*args, **kwargs):
        data = real(*args, **kwargs)
        data.identity = {**data.identity, "content": "another copy"}  # as if COMPRESS_DATA had changed
        return data

    monkeypatch.setattr(runner, "load_dataset", other_source)
    with pytest.raises(UserError, match="different data"):
        find_ticket(recipe_from_dict(tiny_recipe(**SMALL)), run_dir, progress=False)


def test_settings_that_do_not_change_results_keep_the_run_dir(tmp_path, finished, monkeypatch):
    run_dir = _copy(finished, tmp_path / "run")
    writes = []
    monkeypatch.setattr(io, "_atomic", lambda path, write: writes.append(path))
    recipe = recipe_from_dict(tiny_recipe(**SMALL, train={"device": "cpu", "checkpoint_every": 7}))
    find_ticket(recipe, run_dir, progress=False)
    assert writes == [run_dir / paths.RECIPE]  # nothing retrained; only the recorded recipe follows


# -- 4. the run dir stays under runs/ ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["/abs/path", "../..", "a/b"])
def test_a_name_cannot_leave_runs(name):
    with pytest.raises(UserError, match="name"):
        recipe = recipe_from_dict(tiny_recipe(**SMALL) | {"name": name})
        default_run_dir(recipe)


# -- 5. the ticket is chosen on validation, reported on test -----------------------------------------
def test_the_ticket_is_chosen_on_validation_accuracy():
    rounds = [{"round": 0, "weights_remaining": 1.0, "early_stop_val_accuracy": 0.90, "early_stop_test_accuracy": 0.80},
              {"round": 1, "weights_remaining": 0.5, "early_stop_val_accuracy": 0.80, "early_stop_test_accuracy": 0.85},
              {"round": 2, "weights_remaining": 0.2, "early_stop_val_accuracy": 0.899, "early_stop_test_accuracy": 0.70}]
    assert choose_ticket(rounds, 0.005)["round"] == 2  # test accuracy alone would have picked round 1
    for entry in rounds:
        entry["early_stop_val_accuracy"] = float("nan")  # no validation split: test is all there is
    assert choose_ticket(rounds, 0.005)["round"] == 1


# -- the whole command: a finished rerun writes nothing; a short human summary -----------------------
def test_rerunning_a_finished_run_writes_nothing(tmp_path, finished, monkeypatch):
    run_dir = _copy(finished, tmp_path / "run")
    writes = []
    monkeypatch.setattr(io, "_atomic", lambda path, write: writes.append(path))
    summary = find_ticket(recipe_from_dict(tiny_recipe(**SMALL)), run_dir, progress=False)
    assert writes == [] and summary["ticket"]["round"] in (0, 1, 2)


def test_find_ticket_prints_a_short_summary_and_json_on_request(tmp_path):
    recipe = _recipe_file(tmp_path, lottery={"rounds": 1, "controls": ["reinit"]})
    result = _tool("find_ticket.py", "--recipe", str(recipe), "--out", str(tmp_path / "run"), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "winning ticket: round" in result.stdout and "control reinit" in result.stdout
    assert len(result.stdout.strip().splitlines()) <= 8
    again = _tool("find_ticket.py", "--recipe", str(recipe), "--out", str(tmp_path / "run"), "--json")
    assert '"rounds"' in again.stdout


def test_model_with_fewer_outputs_than_classes_fails_before_training(tmp_path):
    recipe = _recipe_file(tmp_path, model={"name": "lenet300_100", "num_classes": 5})
    _assert_one_line(_tool("find_ticket.py", "--recipe", str(recipe), "--out", str(tmp_path / "run")),
                     "model.num_classes")
    assert not (tmp_path / "run" / "round_00" / paths.RESULT).exists()


def test_divergence_stops_the_run_naming_the_step(tmp_path):
    recipe = _recipe_file(tmp_path, train={"optimizer": {"name": "sgd", "lr": 1e30}})
    line = _assert_one_line(_tool("find_ticket.py", "--recipe", str(recipe), "--out", str(tmp_path / "run")),
                            "iteration")
    assert "nan" in line.lower() or "inf" in line.lower()
    assert not (tmp_path / "run" / "round_00" / paths.RESULT).exists()  # no NaN round recorded as valid


def test_a_run_pins_no_threads_unless_asked(tmp_path, monkeypatch):
    monkeypatch.delenv("COMPRESS_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # what reproduce.py --jobs 2 does in each worker
    try:
        run = LotteryRun(recipe_from_dict(tiny_recipe(**SMALL)), tmp_path / "run", progress=False)
        run.close()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_importing_and_reporting_leaves_the_matplotlib_backend_alone(tmp_path):
    code = ("import matplotlib; matplotlib.use('svg'); import compress.lottery, compress.reproduce.report; "
            "from compress.lottery.report import plot_accuracy; "
            "plot_accuracy([{'round': 0, 'weights_remaining': 1.0, 'early_stop_test_accuracy': 0.9, "
            f"'test_accuracy': 0.9}}], __import__('pathlib').Path({str(tmp_path / 'a.png')!r}), 't'); "
            "print(matplotlib.get_backend())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={
        **os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert result.stdout.strip() == "svg", result.stderr
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_refuses_rounds_aligned_for_another_cpu(tmp_path, monkeypatch):
    """channel_multiple 'auto' resolves per CPU (16 / 8 / 1): a run resumed on another machine must not mix widths."""
    recipe = recipe_from_dict(tiny_recipe(**{**SMALL, "lottery": {"rounds": 1, "controls": []}},
                                          prune={"channel_multiple": "auto"}))
    run_dir = tmp_path / "run"
    find_ticket(recipe, run_dir, progress=False)
    (paths.round_dir(run_dir, 1) / paths.RESULT).unlink()
    from compress.lottery import runner

    here = runner.resolve_multiple("auto")
    monkeypatch.setattr(runner, "resolve_multiple", lambda value: 24 if here != 24 else 8)
    with pytest.raises(UserError, match="different channel_multiple"):
        find_ticket(recipe, run_dir, progress=False)
