"""``--set key.path=value`` overrides, checked against the schema before they touch a recipe.

Values given as strings are read as YAML (``3e-4`` -> float, ``[reinit]`` -> list); the schema
types them later. For string-typed keys the text is kept as written when YAML would read it as
something else, so ``--set name=2024`` names the run "2024" instead of failing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from compress.recipe.errors import RecipeError
from compress.recipe.keys import KeyPath, PathError, resolve_path, strip_optional
from compress.recipe.schema import Recipe
from compress.recipe.yamlio import Locations, deep_merge, parse_value

Overrides = Mapping[str, Any] | Sequence[str]
_ROLE_WORD = re.compile(r"(^|[\[,]\s*)(@[A-Za-z_]\w*)")


def parse_overrides(overrides: Overrides | None) -> list[tuple[str, Any, str]]:
    """``{"a.b": 1}`` or ``["a.b=1"]`` -> ``[(key path, value, origin)]``; origin names the source."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [(str(key), value, "overrides") for key, value in overrides.items()]
    if isinstance(overrides, str):
        raise RecipeError("overrides must be a list of 'key.path=value' strings or a mapping, not one string",
                          "--set")
    parsed = []
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise RecipeError(f"expected 'key.path=value', got {item!r}", "--set")
        key, _, text = item.partition("=")
        parsed.append((key.strip(), text.strip(), "--set"))
    return parsed


def apply_overrides(data: dict[str, Any], locs: Locations,
                    overrides: Overrides | None) -> tuple[dict[str, Any], Locations]:
    """Deep-merge each override into the raw recipe data, recording its origin as the location."""
    for key, value, origin in parse_overrides(overrides):
        try:
            path, hint = resolve_path(Recipe, key)
        except PathError as error:
            raise RecipeError(error.problem, origin, error.key) from None
        if any(isinstance(part, int) for part in path):
            raise RecipeError("set the whole list, e.g. lottery.controls=[reinit]", origin, key)
        if isinstance(value, str):
            value = _typed(value, hint, key, origin)
        nested: Any = value
        for part in reversed(path):
            nested = {part: nested}
        data, locs = deep_merge(data, locs, nested, _origins(path, value, origin))
    return data, locs


def _typed(text: str, hint: Any, key: str, origin: str) -> Any:
    try:
        try:
            value = parse_value(text)
        except yaml.YAMLError:
            if "@" not in text:
                raise
            # role selectors: YAML cannot start a plain word with '@', so --set prune.keep=[@stem] quotes it
            value = parse_value(_ROLE_WORD.sub(r"\1'\2'", text))
    except yaml.YAMLError as error:
        problem = " ".join(str(getattr(error, "problem", None) or error).split())
        raise RecipeError(f"cannot parse value {text!r} as YAML ({problem})", origin, key) from None
    if strip_optional(hint)[0] is str and value is not None and not isinstance(value, str):
        return text
    return value


def _origins(path: KeyPath, value: Any, origin: str) -> Locations:
    """Every key path inside an override points at its origin, so errors and where() name it."""
    locs: Locations = {path: origin}
    if isinstance(value, Mapping):
        for key, item in value.items():
            locs.update(_origins((*path, key), item, origin))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            locs.update(_origins((*path, index), item, origin))
    return locs
