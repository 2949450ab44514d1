"""The documentation site builds with ``mkdocs build --strict`` and its generated pages are current."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_recipe_reference_is_generated_from_the_current_schema():
    check = subprocess.run([sys.executable, "scripts/gen_docs.py", "--check"], cwd=REPO, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stderr
    from compress.recipe.describe import schema_rows

    page = (REPO / "docs" / "recipes.md").read_text()
    assert all(f"`{path}`" in page for path, *_ in schema_rows())  # every key has its row


def test_mkdocs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(REPO)}
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                           cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert build.returncode == 0, build.stderr[-4000:]
    site = tmp_path / "site"
    assert (site / "index.html").is_file() and (site / "recipes" / "index.html").is_file()
    api = (site / "api" / "index.html").read_text()
    assert "LotterySearch" in api and "prune_and_rewind" in api  # rendered from the docstrings
    # the committed plots are served, not copied into docs/
    assert (site / "benchmarks" / "results" / "sparse_inference.png").is_file()
    assert "train.log" in (site / "recipes" / "index.html").read_text()
