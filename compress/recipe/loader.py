"""Load, check, dump and hash recipes.

* ``load_recipe(path, overrides)``: YAML file -> frozen ``Recipe``; every problem is one
  ``RecipeError`` line ``file:line: key.path: what is wrong``. ``sections=("prune", "lottery")``
  reads only those sections (plus ``name``, ``seed``), for users who bring their own training loop.
* ``extends: base.yaml`` (relative to the extending file, chains allowed, cycles rejected)
  deep-merges the files: the extending file wins key by key; a list or scalar replaces the
  base's value wholesale.
* ``null`` always means "the schema default", in a file, through ``extends`` and in ``--set``
  (so a child can reset a key its base set: ``rewind_to: null``). Inside a mapping-typed field
  (``prune.rates``, ``model.kwargs``) a null entry drops that key, e.g. ``rates: {conv: null}``.
  A mapping-typed field given in a file replaces the schema default mapping (a kind missing from
  ``prune.rates`` is then simply not pruned); only files in one ``extends`` chain and overrides
  merge into it.
* Overrides (``{"train.iterations": 200}`` or ``["train.iterations=200"]``) are applied after the
  ``extends`` chain; string values are read as YAML and typed by the schema.
* ``where(recipe, "prune.exclude[0]")`` gives ``file:line`` (or ``--set``) of a loaded recipe's key.
  Locations ride along as a hidden instance attribute that is not a dataclass field, so equality,
  ``repr`` and ``dump_recipe`` ignore them and ``dataclasses.replace`` drops them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from compress.recipe.errors import RecipeError
from compress.recipe.keys import PathError, field_types, resolve_path
from compress.recipe.overrides import Overrides, apply_overrides
from compress.recipe.schema import Recipe
from compress.recipe.validate import PARTIAL_SECTIONS, build_recipe
from compress.recipe.yamlio import FlowDict, FlowList, Locations, dump_yaml, read_tree

_LOCATIONS_ATTR = "_recipe_locations"


def load_recipe(path: str | os.PathLike[str], overrides: Overrides | None = None, *,
                sections: Sequence[str] | None = None) -> Recipe:
    """Read a recipe file (following ``extends``), apply overrides, check everything.

    ``sections`` (e.g. ``PARTIAL_SECTIONS = ("prune", "lottery")``, for one's own training loop):
    read and check only those sections plus ``name`` and ``seed``. Other sections in the file are
    ignored unread (the returned recipe holds their schema defaults), so a file holding only
    ``prune`` / ``lottery`` / ``seed`` loads, and nothing is looked up in the model or dataset
    registries or checked against ``train`` (``lottery.rewind_to`` vs ``train.iterations``).
    """
    source = os.fspath(path)
    data, locs = read_tree(source)
    data, locs = apply_overrides(data, locs, overrides)
    return _attach(build_recipe(data, locs, os.path.normpath(source), _sections(sections, source)), locs,
                   _sections(sections, source), data)


def recipe_from_dict(data: Mapping[str, Any], source: str = "<dict>",
                     overrides: Overrides | None = None, *, sections: Sequence[str] | None = None) -> Recipe:
    """Check a nested mapping as if it were a recipe file named ``source`` (no line numbers);
    ``sections`` as in ``load_recipe``."""
    if not isinstance(data, Mapping):
        raise RecipeError(f"a recipe must be a mapping of sections, got {type(data).__name__}", source)
    merged, locs = apply_overrides(_plain_dicts(data), {}, overrides)
    return _attach(build_recipe(merged, locs, source, _sections(sections, source)), locs,
                   _sections(sections, source), merged)


def _sections(sections: Sequence[str] | None, source: str) -> tuple[str, ...] | None:
    if sections is None:
        return None
    if isinstance(sections, str):  # sections="prune" would check the sections p, r, u, n, e
        raise RecipeError(f"sections must be a list of section names, e.g. {list(PARTIAL_SECTIONS)}, "
                          f"not the string {sections!r}", source)
    return tuple(sections)


def recipe_to_dict(recipe: Any) -> dict[str, Any]:
    """Plain, YAML-able data in schema order (tuples become lists)."""
    return {f.name: _plain(getattr(recipe, f.name)) for f in dataclasses.fields(recipe)}


def dump_recipe(recipe: Recipe) -> str:
    """The recipe's resolved values as YAML, keys in schema order; ``load`` gives it back equal."""
    return dump_yaml(_flow_values(recipe))


def recipe_hash(recipe: Recipe) -> str:
    """The run-dir hash: 8 hex digits of sha256 over canonical JSON (sorted keys, stable across YAML
    formatting) of the fields that change results *and* differ from their schema defaults.

    As in open_lth: fields marked ``results=False`` in the schema (``name``, ``export.*``,
    ``train.device``, ``train.checkpoint_every``, ``data.root``, ``data.download``) are left out, so
    changing them reuses the run dir instead of retraining; leaving defaults out means a new field
    added later with a default keeps every old hash, and writing a default explicitly or omitting it
    hash alike. The price: changing an existing default changes what old hashes mean.
    """
    return _sha256(_result_fields(recipe, changed_only=True))[:8]


def result_fields(recipe: Recipe) -> dict[str, Any]:
    """Every field that can change results, defaults included, as nested plain data (no ``name``,
    ``export`` or device): what a run dir's rounds must agree on to be resumed or compared."""
    return _result_fields(recipe)


def results_hash(recipe: Recipe) -> str:
    """16 hex digits of sha256 over ``result_fields(recipe)``: changes when any such field does,
    including one added later, unlike ``recipe_hash``."""
    return _sha256(result_fields(recipe))[:16]


def where(recipe: Recipe, key_path: str) -> str:
    """``file:line`` (or ``--set``) where ``key_path`` was given, e.g. ``prune.exclude[0]``; "" if unknown.

    A key inside a list or mapping that was given as a whole falls back to that field's location.
    """
    locs: Locations = getattr(recipe, _LOCATIONS_ATTR, None) or {}
    try:
        path, _ = resolve_path(Recipe, key_path)
    except PathError:
        return ""
    for end in range(len(path), 0, -1):
        if end < len(path) and _is_section(path[:end]):
            break  # a section's own line says nothing about a key left at its default
        if path[:end] in locs:
            return locs[path[:end]]
    return ""


def _is_section(path: tuple[Any, ...]) -> bool:
    cls: Any = Recipe
    for part in path:
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)) or part not in field_types(cls):
            return False
        cls = field_types(cls)[part]
    return isinstance(cls, type) and dataclasses.is_dataclass(cls)


def _sha256(data: Any) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _result_fields(section: Any, changed_only: bool = False) -> dict[str, Any]:
    """The fields that change results; ``changed_only``: just those that differ from the schema default."""
    default = type(section)() if changed_only else None  # a section's default is its default instance
    out: dict[str, Any] = {}
    for f in dataclasses.fields(section):
        if not f.metadata.get("results", True):
            continue
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            inner = _result_fields(value, changed_only)
            if inner:  # a section of bookkeeping fields only (export) is left out whole
                out[f.name] = inner
        elif default is None or _plain(value) != _plain(getattr(default, f.name)):
            out[f.name] = _plain(value)
    return out


def _attach(recipe: Recipe, locs: Locations, sections: tuple[str, ...] | None = None, data: Any = None) -> Recipe:
    # object.__setattr__: the dataclass is frozen; the attribute is not a field, so == ignores it.
    object.__setattr__(recipe, _LOCATIONS_ATTR, dict(locs))
    # a partial recipe remembers it is one, and whether it gave a budget (compress.recipe.support.steps_per_level)
    object.__setattr__(recipe, "_recipe_sections", sections)
    train = data.get("train") if isinstance(data, dict) else None
    object.__setattr__(recipe, "_recipe_budget_given", isinstance(train, dict) and train.get("iterations") is not None)
    return recipe


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return recipe_to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _flow_values(section: Any) -> dict[str, Any]:
    # Sections in block style, field values (lists, rates, kwargs) on one line each.
    out: dict[str, Any] = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = _flow_values(value)
        elif isinstance(value, (list, tuple)):
            out[f.name] = FlowList(_plain(value))
        elif isinstance(value, Mapping):
            out[f.name] = FlowDict(_plain(value))
        else:
            out[f.name] = value
    return out


def _plain_dicts(value: Any) -> Any:
    # Copy so that merging overrides never mutates the caller's mapping; sections may be dataclasses.
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return recipe_to_dict(value)
    if isinstance(value, Mapping):
        return {k: _plain_dicts(v) for k, v in value.items()}
    return value
