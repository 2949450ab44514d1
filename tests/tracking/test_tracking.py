"""train.log: what each tracker wrote is read back with the tracker's own reader; a resume never repeats a step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from readback import mlflow_metrics, tensorboard_scalars, wandb_history
from tiny import tiny_recipe

from compress.errors import UserError
from compress.io import read_jsonl
from compress.lottery import find_ticket
from compress.recipe import RecipeError, recipe_from_dict
from compress.registry import LOGGERS
from compress.tracking import Logger, open_tracker, register_logger

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def _steps(series: list[tuple[int, float]]) -> list[int]:
    return [step for step, _ in series]


def _same(logged: list[tuple[int, float]], expected: list[tuple[int, float]]) -> bool:
    """Same steps, same values (TensorBoard keeps float32)."""
    logged = sorted(logged)
    return _steps(logged) == _steps(expected) and [v for _, v in logged] == pytest.approx([v for _, v in expected],
                                                                                          rel=1e-6)


def test_default_run_writes_tensorboard_per_iteration_per_evaluation_and_per_round(tmp_path):
    recipe = recipe_from_dict(tiny_recipe(lottery={"rounds": 1, "controls": ["reinit"], "executor": "inline"}))
    assert recipe.train.log == ("tensorboard",)  # the default
    summary = find_ticket(recipe, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for folder in (run / "round_00", run / "round_01", run / "round_01" / "reinit"):  # each its own run
        scalars = tensorboard_scalars(folder)
        iterations = recipe.train.iterations
        assert _steps(scalars["train/loss"]) == list(range(1, iterations + 1))
        assert _steps(scalars["train/lr"]) == list(range(1, iterations + 1))
        history = read_jsonl(folder / "metrics.jsonl")
        assert _same(scalars["eval/test_accuracy"], [(p["iteration"], p["test_accuracy"]) for p in history])
        assert len(scalars["result/weights_remaining"]) == 1
    rounds = tensorboard_scalars(run)  # the run dir's own run: one point per round
    remaining = [entry["weights_remaining"] for entry in summary["rounds"]]
    assert _same(rounds["round/weights_remaining"], list(enumerate(remaining)))
    assert remaining[1] < 1.0
    assert _steps(rounds["round/reinit/early_stop_test_accuracy"]) == [1]
    assert not list(run.rglob("metrics.csv")) and not (run / "mlruns").exists()  # only what was asked


def _interrupted_then_resumed(folder: Path, names: str, how: str) -> list[tuple[int, float]]:
    """Train, stopped by ``how`` at iteration 45, then again to the end; the test accuracies metrics.jsonl holds.

    Checkpoints at 25 and 50, evaluations (and tracker flushes) every 10: the resume redoes 26..45, of
    which 26..40 were logged already and must not appear twice.
    """
    env = {**os.environ, "COMPRESS_THREADS": "1", "PYTHONPATH": str(REPO), "WANDB_MODE": "offline",
           "WANDB_SILENT": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    script = str(HERE / "train_until.py")
    stopped = subprocess.run([sys.executable, script, str(folder), "45", names, how], env=env, capture_output=True,
                             text=True)
    assert stopped.returncode != 0, stopped.stderr[-2000:]
    done = subprocess.run([sys.executable, script, str(folder), "0", names], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    history = read_jsonl(folder / "metrics.jsonl")
    assert [p["iteration"] for p in history] == list(range(10, 61, 10))
    return [(p["iteration"], p["test_accuracy"]) for p in history]


def _check(name: str, logged: dict[str, list[tuple[int, float]]], accuracy: list[tuple[int, float]]) -> None:
    assert sorted(_steps(logged["train/loss"])) == list(range(1, 61)), name
    assert sorted(_steps(logged["train/lr"])) == list(range(1, 61)), name
    assert _same(logged["eval/test_accuracy"], accuracy), name


def test_killed_then_resumed_training_logs_every_step_once(tmp_path):
    folder = tmp_path / "run"
    accuracy = _interrupted_then_resumed(folder, "tensorboard,csv,mlflow", "KILL")  # kill -9
    tb = tensorboard_scalars(folder)
    mlflow, params = mlflow_metrics(folder, "train")
    csv: dict[str, list[tuple[int, float]]] = {}
    for row in (folder / "metrics.csv").read_text().splitlines()[1:]:
        step, key, value = row.split(",")
        csv.setdefault(key, []).append((int(step), float(value)))
    for name, logged in (("tensorboard", tb), ("mlflow", mlflow), ("csv", csv)):
        _check(name, logged, accuracy)
    rates = [value for _, value in sorted(tb["train/lr"])]  # warm-up, then cosine: rises, then falls
    assert rates[0] < rates[4] and rates[-1] < rates[10]
    assert float(params["train.optimizer.lr"]) == 1.2e-3 and params["train.iterations"] == "60"


def test_wandb_offline_run_reads_back_after_an_interrupted_resume(tmp_path):
    # Ctrl-C, not kill -9: W&B's own service holds what it has not written yet, and dies with the process
    folder = tmp_path / "run"
    accuracy = _interrupted_then_resumed(folder, "wandb", "INT")
    logged, config = wandb_history(folder)
    _check("wandb", logged, accuracy)
    assert config["train.iterations"] == 60 and config["train.optimizer.lr"] == 1.2e-3


def test_recipe_refuses_unknown_and_duplicate_loggers():
    with pytest.raises(RecipeError, match=r"train\.log.*'tensorbord' is not one of .*tensorboard"):
        recipe_from_dict(tiny_recipe(train={"log": ["tensorbord"]}))
    with pytest.raises(RecipeError, match="duplicate logger 'csv'"):
        recipe_from_dict(tiny_recipe(train={"log": ["csv", "csv"]}))
    assert recipe_from_dict(tiny_recipe(train={"log": []})).train.log == ()


def test_a_logger_whose_package_is_missing_fails_before_training(tmp_path):
    class Needy(Logger):
        requires = ("compress_no_such_package",)

    register_logger("needy", Needy)
    try:
        with pytest.raises(UserError, match="needy needs the compress_no_such_package package"):
            open_tracker(["needy"], tmp_path, run_dir=tmp_path, name="x")
    finally:
        LOGGERS.unregister("needy")  # the registry decides which names recipes accept: leave it as found
