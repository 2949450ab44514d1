"""Key paths over the schema: parse ``prune.rates.re:a.b`` / ``prune.exclude[0]``, format them back.

A path is a tuple of field names, mapping keys and list indices. Mapping-typed fields
(``prune.rates``, ``model.kwargs``) take the whole rest of a dotted string as one key, because
selector keys may themselves hold dots.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from functools import cache
from typing import Any, Union

KeyPath = tuple[Any, ...]  # str field names / mapping keys, int list indices


class PathError(Exception):
    """A key path that does not fit the schema: ``key`` (dotted) and a one-line ``problem``."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


_INDEX = re.compile(r"^(.*?)\[(\d+)\]$")


@cache
def field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a schema dataclass (the schema uses postponed annotations)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def strip_optional(hint: Any) -> tuple[Any, bool]:
    """``int | None`` -> ``(int, True)``; anything else -> ``(hint, False)``."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def is_mapping(hint: Any) -> bool:
    return typing.get_origin(hint) is dict


def is_sequence(hint: Any) -> bool:
    return typing.get_origin(hint) is tuple


def did_you_mean(name: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def resolve_path(root: type, dotted: str) -> tuple[KeyPath, Any]:
    """Parse a dotted key path against the schema; return ``(path, type hint)``.

    Raises ``PathError`` (unknown key with a did-you-mean, or a key below a value that has none).
    """
    if not dotted or dotted.strip() != dotted:
        raise PathError(repr(dotted), "not a key path")
    path: list[Any] = []
    hint: Any = root
    rest = dotted
    while rest:
        bare, _ = strip_optional(hint)
        if is_mapping(bare):
            key, rest = rest, ""  # the rest is one mapping key (selectors may contain dots)
            indices: list[int] = []
            hint = typing.get_args(bare)[1]
        else:
            head, _, rest = rest.partition(".")
            key, indices = _split_indices(head)
            if not (isinstance(bare, type) and dataclasses.is_dataclass(bare)):
                parent = format_path(tuple(path))
                raise PathError(format_path((*path, key)), f"{parent} is a {type_name(hint)}, it has no keys")
            fields = field_types(bare)
            if key not in fields:
                raise PathError(format_path((*path, key)), f"unknown key{did_you_mean(key, fields)}")
            hint = fields[key]
        path.append(key)
        for index in indices:
            bare, _ = strip_optional(hint)
            if not is_sequence(bare):
                raise PathError(format_path((*path, index)), f"{format_path(tuple(path))} is a "
                                f"{type_name(hint)}, it cannot be indexed")
            path.append(index)
            hint = typing.get_args(bare)[0]
    return tuple(path), hint


def _split_indices(head: str) -> tuple[str, list[int]]:
    indices: list[int] = []
    while match := _INDEX.match(head):
        head = match.group(1)
        indices.insert(0, int(match.group(2)))
    return head, indices


def type_name(hint: Any) -> str:
    """How a type reads in messages and in ``describe_schema``."""
    bare, optional = strip_optional(hint)
    if is_sequence(bare):
        name = f"list[{type_name(typing.get_args(bare)[0])}]"
    elif is_mapping(bare):
        key, value = typing.get_args(bare)
        name = f"mapping[{type_name(key)}, {'any' if value is Any else type_name(value)}]"
    elif isinstance(bare, type) and dataclasses.is_dataclass(bare):
        name = "section"
    elif bare is Any:
        name = "any"
    else:
        name = getattr(bare, "__name__", str(bare))
    return f"{name} | null" if optional else name
