"""YAML in and out for recipes: line numbers per key path, ``extends`` chains, deep merge.

PyYAML follows YAML 1.1, where ``3e-4`` (no dot) is a *string*; recipes and ``--set`` values
are read with a resolver that also takes YAML 1.2 floats, and dumped with the same resolver so
a string that now looks like a number is quoted and survives a round trip.
"""

from __future__ import annotations

import difflib
import os
import re
from typing import Any

import yaml

from compress.recipe.errors import RecipeError
from compress.recipe.keys import KeyPath, format_path

Locations = dict[KeyPath, str]  # key path -> "file:line" (or "--set")

_FLOAT_TAG = "tag:yaml.org,2002:float"
_FLOAT_12 = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


def _resolvers() -> dict[str, list[tuple[str, re.Pattern[str]]]]:
    table = {first: [(tag, rx) for tag, rx in entries if tag != _FLOAT_TAG]
             for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    for first in "-+0123456789.":
        table.setdefault(first, []).append((_FLOAT_TAG, _FLOAT_12))
    return table


class RecipeYamlLoader(yaml.SafeLoader):
    yaml_implicit_resolvers = _resolvers()


class RecipeYamlDumper(yaml.SafeDumper):
    yaml_implicit_resolvers = RecipeYamlLoader.yaml_implicit_resolvers


class FlowList(list):  # type: ignore[type-arg]
    """A value list written on one line (``[reinit, random_prune]``); sections stay in block style."""


class FlowDict(dict):  # type: ignore[type-arg]
    """A value mapping written on one line (``{conv: 0.1, linear: 0.2}``)."""


RecipeYamlDumper.add_representer(
    FlowList, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
RecipeYamlDumper.add_representer(
    FlowDict, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v.items(), flow_style=True))


def parse_value(text: str) -> Any:
    """One ``--set`` value, read as YAML (``3e-4`` -> float, ``[a, b]`` -> list)."""
    return yaml.load(text, Loader=RecipeYamlLoader)  # safe: RecipeYamlLoader is a SafeLoader


def dump_yaml(data: Any) -> str:
    """Block style, except values wrapped in ``FlowList`` / ``FlowDict``."""
    return yaml.dump(data, Dumper=RecipeYamlDumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=100)


def read_tree(path: str) -> tuple[dict[str, Any], Locations]:
    """Parse one recipe file and follow its ``extends`` chain; the extending file wins."""
    return _read_chain(os.path.normpath(path), ())


def _read_chain(path: str, chain: tuple[str, ...]) -> tuple[dict[str, Any], Locations]:
    data, locs = parse_file(path)
    if "extends" not in data:
        return data, locs
    parent = data.pop("extends")
    here = locs.pop(("extends",), path)
    if not isinstance(parent, str) or not parent:
        raise RecipeError("expected the path of a recipe file (relative to this one)", here, "extends")
    parent_path = os.path.normpath(os.path.join(os.path.dirname(path), parent))
    if not os.path.isfile(parent_path):
        problem = f"no such recipe file {parent!r} (looked for {parent_path}){_close_files(parent_path)}"
        raise RecipeError(problem, here, "extends")
    seen = [*chain, path]
    if any(os.path.realpath(parent_path) == os.path.realpath(p) for p in seen):
        raise RecipeError(f"extends cycle: {' -> '.join([*seen, parent_path])}", here, "extends")
    base, base_locs = _read_chain(parent_path, tuple(seen))
    return deep_merge(base, base_locs, data, locs)


def parse_file(path: str) -> tuple[dict[str, Any], Locations]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise RecipeError(f"no such recipe file{_close_files(path)}", path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise RecipeError(f"cannot read the recipe: {error}", path) from None
    return parse_text(text, path)


def parse_text(text: str, filename: str) -> tuple[dict[str, Any], Locations]:
    """YAML text -> plain data and the ``file:line`` of every key and list item."""
    loader = RecipeYamlLoader(text)
    locs: Locations = {}
    try:
        node = loader.get_single_node()
        data = {} if node is None else _convert(node, (), loader, filename, locs)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{filename}:{mark.line + 1}" if mark else filename
        problem = ": ".join(part for part in (error.context, error.problem) if part)
        raise RecipeError(f"invalid YAML: {problem or error}", where) from None
    except yaml.YAMLError as error:
        raise RecipeError(f"invalid YAML: {error}", filename) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        line = f"{filename}:{node.start_mark.line + 1}" if node is not None else filename
        raise RecipeError(f"a recipe must be a mapping of sections, got {type(data).__name__}", line)
    return data, locs


def _convert(node: yaml.Node, path: KeyPath, loader: RecipeYamlLoader, filename: str,
             locs: Locations) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            line = f"{filename}:{key_node.start_mark.line + 1}"
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise RecipeError(f"key {key!r} is not a string (YAML reads on/off/yes/no as booleans: "
                                  "quote it)", line, format_path(path))
            if key in out:
                raise RecipeError("duplicate key", line, format_path((*path, key)))
            locs[(*path, key)] = line
            out[key] = _convert(value_node, (*path, key), loader, filename, locs)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            locs[(*path, index)] = f"{filename}:{item.start_mark.line + 1}"
            items.append(_convert(item, (*path, index), loader, filename, locs))
        return items
    return loader.construct_object(node, deep=True)


def deep_merge(base: dict[str, Any], base_locs: Locations,
               over: dict[str, Any], over_locs: Locations) -> tuple[dict[str, Any], Locations]:
    """``over`` wins; mappings merge key by key, anything else (lists, scalars, null) replaces."""
    replaced: list[KeyPath] = []

    def merge(old: dict[str, Any], new: dict[str, Any], prefix: KeyPath) -> dict[str, Any]:
        out = dict(old)
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value, (*prefix, key))
            else:
                out[key] = value
                replaced.append((*prefix, key))
        return out

    merged = merge(base, over, ())
    # A replaced value's old items (e.g. list elements) must not keep pointing into the base file.
    locs = {p: loc for p, loc in base_locs.items() if not any(p[:len(r)] == r for r in replaced)}
    locs.update(over_locs)
    return merged, locs


def _close_files(path: str) -> str:
    folder = os.path.dirname(path) or "."
    try:
        names = [n for n in os.listdir(folder) if n.endswith((".yaml", ".yml"))]
    except OSError:
        return ""
    close = difflib.get_close_matches(os.path.basename(path), names, n=1)
    return f" (did you mean {os.path.join(os.path.dirname(path), close[0])!r}?)" if close else ""
