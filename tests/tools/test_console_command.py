"""``compress <command>`` and ``python -m compress <command>`` run the tools/ scripts, arguments and exit codes kept."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True, env=ENV, cwd=REPO, timeout=120)


def test_python_dash_m_lists_the_commands_and_runs_one():
    listed = _run(sys.executable, "-m", "compress", "--help")
    assert listed.returncode == 0
    for name in ("ticket", "export", "pack", "bench"):
        assert f"  {name} " in listed.stdout
    help_recipe = _run(sys.executable, "-m", "compress", "ticket", "--help-recipe")
    direct = _run(sys.executable, "tools/find_ticket.py", "--help-recipe")
    assert help_recipe.returncode == 0 and help_recipe.stdout == direct.stdout and "train.log" in direct.stdout


def test_errors_keep_the_tools_one_line_and_exit_code(tmp_path):
    missing = _run(sys.executable, "-m", "compress", "export", "--run", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr
    unknown = _run(sys.executable, "-m", "compress", "tickt")
    assert unknown.returncode == 2 and "unknown command 'tickt'" in unknown.stderr
    assert _run(sys.executable, "-m", "compress").returncode == 2  # no command: usage, non-zero


def test_console_script_is_installed_and_runs_the_same():
    script = shutil.which("compress", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the compress console script is not installed in this venv (pip install -e '.[dev]' adds it)")
    result = _run(script, "pack", "--help")
    assert result.returncode == 0 and "usage: compress pack" in result.stdout
