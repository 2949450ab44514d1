"""examples/lightning_ticket.py and examples/hf_ticket.py run as written (with shorter levels)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("example", "needs"), [("lightning_ticket.py", "lightning"),
                                                ("hf_ticket.py", "transformers")])
def test_example_runs(example, needs, fashion_mnist_root):
    pytest.importorskip(needs)
    env = {**os.environ, "TICKET_ITERATIONS": "60"}
    result = subprocess.run([sys.executable, f"examples/{example}"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    # 3 rounds of 20% (hidden) / 10% (output); 60 + 3 x 50 steps (rewind_to = 10)
    assert "level 3: 51.3% weights" in result.stdout and "after 210 steps" in result.stdout, result.stdout


def test_package_imports_nothing_heavy():
    code = ("import sys, compress.integrations; "
            "print(sorted(m for m in ('lightning', 'transformers', 'accelerate') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
