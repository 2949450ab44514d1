"""find_ticket.py as a user meets it: dry runs of every shipped recipe, and one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def run_tool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "find_ticket.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_every_shipped_recipe_dry_runs():
    # one process for all recipes would be faster, but the contract is the command line itself
    for recipe in RECIPES:
        result = run_tool("--recipe", str(recipe), "--dry-run")
        assert result.returncode == 0, f"{recipe.name}: {result.stderr}"
        assert "# resolved recipe" in result.stdout
        assert "data:" in result.stdout and "total (" in result.stdout, recipe.name


def test_dry_run_plan_table_and_set_override():
    result = run_tool("--recipe", "recipes/lth_lenet300.yaml", "--dry-run", "--set", "lottery.rounds=3",
                      "--set", "train.optimizer.lr=3e-4")
    assert result.returncode == 0, result.stderr
    assert "lr: 0.0003" in result.stdout
    table = result.stdout.split("total (")[0]
    assert "1.weight" in table and "300x784" in table and "235,200" in table
    total_line = [line for line in result.stdout.splitlines() if line.startswith("total (")][0]
    assert total_line.split()[-1] == "51.28%"  # 265,200 hidden weights at 0.8^3, 1,000 output weights at 0.9^3


@pytest.mark.parametrize(("yaml_text", "fragments"), [
    ("name: x\ntrain:\n  iteratons: 5\n", ["bad.yaml:3", "train.iteratons", "did you mean 'iterations'"]),
    ("name: x\nprune:\n  rates: {linear: 1.5}\n", ["bad.yaml:3", "prune.rates.linear"]),
    ("name: x\ntrain:\n  iterations: 0\n", ["bad.yaml:3", "train.iterations"]),
    ("name: x\nprune:\n  scope: everywhere\n", ["bad.yaml:3", "prune.scope", "layerwise"]),
    ("name: x\nlottery:\n  rewind_to: 99999\n", ["bad.yaml:3", "lottery.rewind_to"]),
    ("name: x\nmodel:\n  name: lenet301\n", ["bad.yaml:3", "model.name", "lenet300_100"]),
    ("name: x\ndata:\n  name: fashion\n", ["bad.yaml:3", "data.name", "fashion_mnist"]),
    ("name: x\nmodel: {name: lenet300_100}\nprune:\n  exclude: [fc9]\n",
     ["bad.yaml:4", "prune.exclude[0]", "matches no"]),
])
def test_bad_recipes_give_one_line_and_exit_2(tmp_path, yaml_text, fragments):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml_text)
    assert_one_line_error(run_tool("--recipe", str(bad), "--dry-run"), *fragments)


def test_unknown_set_path_is_rejected():
    result = run_tool("--recipe", "recipes/lth_lenet300.yaml", "--dry-run", "--set", "train.iteration=5")
    assert_one_line_error(result, "train.iteration", "iterations")


def test_missing_recipe_file():
    assert_one_line_error(run_tool("--recipe", "recipes/nope.yaml", "--dry-run"), "nope.yaml")
