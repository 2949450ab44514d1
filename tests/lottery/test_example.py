"""The README's own-training-loop example runs as written (with a shorter loop)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests_paths import REPO


def test_own_loop_example_runs(tmp_path, fashion_mnist_root):
    env = {**os.environ, "OWN_LOOP_STEPS": "50", "OWN_LOOP_OUT": str(tmp_path / "ticket.onnx")}
    result = subprocess.run([sys.executable, "examples/own_loop.py"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "level 3: 51.3% weights" in result.stdout
    assert "verified" in result.stdout and (tmp_path / "ticket.onnx").exists()
