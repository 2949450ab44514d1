"""Every ```python and ```bash block of the documentation runs as written.

Blocks run one by one from a scratch folder that mirrors the repository root (so `recipes/...`, `tools/...`
and `examples/...` resolve, while whatever a block writes, such as `runs/`, stays out of the checkout), with
this interpreter's folder first on PATH (`python` is the project's). A block that must not run is preceded
by ``<!-- not-run: <reason> -->``; a block preceded by ``<!-- continues -->`` runs after the page's previous
python block, in the same process (for pages that build an example step by step).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted((REPO / "docs").glob("**/*.md")) + [REPO / "README.md"]
RUNNABLE = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(\S.*?)\s*-->$")
CONTINUES = re.compile(r"^<!--\s*continues\s*-->$")
TIMEOUT_S = 300


@dataclass(frozen=True)
class Snippet:
    page: Path
    line: int
    language: str
    source: str
    not_run: str | None
    continues: bool

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def snippets(page: Path) -> list[Snippet]:
    """The fenced blocks of one page, with the marker on the last non-blank line above each."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, language = match.group(1), match.group(2).lower()
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = [line[len(indent):] if line.startswith(indent) else line for line in lines[i + 1:end]]
        above = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        not_run = NOT_RUN.match(above)
        found.append(Snippet(page, i + 1, language, "\n".join(body) + "\n",
                             not_run.group(1) if not_run else None, bool(CONTINUES.match(above))))
        i = end + 1
    return found


ALL = [s for page in PAGES if page.is_file() for s in snippets(page)]
RUN = [s for s in ALL if s.language in RUNNABLE]


def _source(snippet: Snippet) -> str:
    """The block's code, after the page's previous python blocks it continues."""
    if not snippet.continues:
        return snippet.source
    page_blocks = [s for s in RUN if s.page == snippet.page and s.language in ("python", "py")]
    index = page_blocks.index(snippet)
    if index == 0:
        raise ValueError(f"{snippet.id}: '<!-- continues -->' but no python block before it")
    return _source(page_blocks[index - 1]) + snippet.source


def _mirror(scratch: Path) -> Path:
    """A folder whose entries link to the repository's, except what snippets create (runs/)."""
    scratch.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in {".git", "runs"}:
            (scratch / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return scratch


def test_every_runnable_block_is_marked_or_runs_in_a_known_language():
    """A block tagged with another language is data or output; untagged blocks must say which they are."""
    untagged = [s.id for s in ALL if not s.language]
    assert not untagged, f"untagged code blocks (use ```text for output): {untagged}"


@pytest.mark.parametrize("snippet", RUN, ids=[s.id for s in RUN])
def test_doc_snippet_runs(snippet: Snippet, tmp_path: Path):
    if snippet.not_run:
        pytest.skip(f"not run: {snippet.not_run}")
    scratch = _mirror(tmp_path / "repo")
    interpreter = Path(sys.executable)
    env = {**os.environ, "PATH": f"{interpreter.parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    kind = RUNNABLE[snippet.language]
    script = tmp_path / ("snippet.py" if kind == "python" else "snippet.sh")
    script.write_text(_source(snippet), encoding="utf-8")
    command = [sys.executable, str(script)] if kind == "python" else ["bash", "-euo", "pipefail", str(script)]
    result = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, (f"{snippet.id} failed (exit {result.returncode}):\n"
                                    f"{result.stdout[-1500:]}\n{result.stderr[-3000:]}")
