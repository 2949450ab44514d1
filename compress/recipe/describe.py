"""``describe_schema()``: every key path with its type, default, help and rules (``--help-recipe``)."""

from __future__ import annotations

import dataclasses
from typing import Any

from compress.recipe.checks import rule_text
from compress.recipe.keys import field_types, is_mapping, is_sequence, strip_optional, type_name
from compress.recipe.schema import Recipe, field_default


def schema_rows(cls: type = Recipe, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``(key path, type, default, help)`` for every leaf key, in schema order."""
    rows = []
    hints = field_types(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        hint = hints[f.name]
        bare, _ = strip_optional(hint)
        if isinstance(bare, type) and dataclasses.is_dataclass(bare):
            rows += schema_rows(bare, f"{path}.")
            continue
        help_text = f.metadata.get("help", "")
        rules = [rule_text(path, help_text)]
        if is_sequence(bare) and rule_text(f"{path}[]", help_text):
            rules.append(f"items: {rule_text(path + '[]', help_text)}")
        if is_mapping(bare) and rule_text(f"{path}.*", help_text):
            rules.append(f"values: {rule_text(path + '.*', help_text)}")
        if not f.metadata.get("results", True):
            rules.append("not in the run hash: cannot change results")
        rules = [r for r in rules if r]
        if rules:
            help_text += f" [{'; '.join(rules)}]"
        rows.append((path, type_name(hint), _show_default(f), help_text))
    return rows


def describe_schema() -> str:
    """A plain-text table of all recipe keys, for ``find_ticket.py --help-recipe``."""
    rows = [("key", "type", "default", "help"), *schema_rows()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = []
    section = None
    for row in rows:
        top = row[0].split(".")[0] if "." in row[0] else None
        if row is not rows[0] and top != section:
            lines.append("")
            section = top
        cells = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)]
        lines.append("  ".join([*cells, row[3]]))
    header = ("Recipe keys (YAML key paths; --set key.path=value overrides one). "
              "null = the schema default.")
    return header + "\n\n" + "\n".join(line.rstrip() for line in lines) + "\n"


def describe_schema_markdown() -> str:
    """The same keys as ``describe_schema``, as one Markdown table per section (docs/recipes.md)."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")

    sections: dict[str, list[tuple[str, str, str, str]]] = {}
    for row in schema_rows():
        sections.setdefault(row[0].split(".")[0] if "." in row[0] else "(top level)", []).append(row)
    lines = []
    for section, rows in sections.items():
        lines += [f"### {section}", "", "| key | type | default | help |", "| --- | --- | --- | --- |"]
        lines += [f"| `{path}` | {cell(kind)} | `{default}` | {cell(text)} |" for path, kind, default, text in rows]
        lines.append("")
    return "\n".join(lines)


def _show_default(f: dataclasses.Field[Any]) -> str:
    value = field_default(f)
    return "(required)" if value is dataclasses.MISSING else _flow(value)


def _flow(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    return str(value)
