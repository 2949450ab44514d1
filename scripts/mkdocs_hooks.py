"""mkdocs hooks (mkdocs.yml ``hooks:``) for the documentation site.

* Nav entries whose page does not exist (yet) are dropped with an info line, so a page another part of
  the project has not written does not break ``mkdocs build --strict``; it appears once it lands.
* ``benchmarks/results/`` (the committed benchmark tables, JSON and plots) is served at the same path in
  the site, without copies in docs/. Pages link it as ``../benchmarks/results/...`` (right on GitHub, from
  docs/); the hook rewrites that to the served path, and ``benchmarks/results/...`` works as well.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.compress")
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
SERVED = (".md", ".png", ".json", ".svg")


def _existing(nav, docs_dir: Path):
    kept = []
    for entry in nav:
        if isinstance(entry, dict):
            (title, target), = entry.items()
            if isinstance(target, list):
                children = _existing(target, docs_dir)
                if children:
                    kept.append({title: children})
            elif target.startswith(("http://", "https://")) or (docs_dir / target).is_file():
                kept.append(entry)
            else:
                log.info("nav: %s (%s) not written yet, left out", title, target)
        elif isinstance(entry, str) and not (docs_dir / entry).is_file():
            log.info("nav: %s not written yet, left out", entry)
        else:
            kept.append(entry)
    return kept


def on_config(config):
    if config.get("nav"):
        config["nav"] = _existing(config["nav"], Path(config["docs_dir"]))
    return config


def on_files(files: Files, config) -> Files:
    for path in sorted(RESULTS.rglob("*")):
        if path.is_file() and path.suffix in SERVED:
            uri = "benchmarks/results/" + path.relative_to(RESULTS).as_posix()
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


_UP = re.compile(r"\]\((?:\.\./)+benchmarks/results/")


def on_page_markdown(markdown: str, page, config, files) -> str:
    """``](../benchmarks/results/x)`` -> the served ``benchmarks/results/x``, relative to this page."""
    depth = page.file.src_uri.count("/")
    return _UP.sub("](" + "../" * depth + "benchmarks/results/", markdown)
