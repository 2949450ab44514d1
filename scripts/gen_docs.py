#!/usr/bin/env python
"""Regenerate the generated parts of docs/: the recipe key reference in docs/recipes.md (from the schema).

    python scripts/gen_docs.py            # rewrite them
    python scripts/gen_docs.py --check    # exit 1 when a page is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compress.recipe import describe_schema_markdown  # noqa: E402

START, END = "<!-- recipe-keys:start -->", "<!-- recipe-keys:end -->"
PAGE = ROOT / "docs" / "recipes.md"


def render(text: str) -> str:
    """``text`` with the block between the markers replaced by the current reference."""
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{describe_schema_markdown()}{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when out of date")
    args = parser.parse_args()
    text = PAGE.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run python scripts/gen_docs.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
