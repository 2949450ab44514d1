"""YAML in and out for recipes: line numbers per key path, ``extends`` chains, deep merge.

PyYAML follows YAML 1.1, where ``3e-4`` (no dot) is a *string*; recipes and ``--set`` values
are read with a resolver that also takes YAML 1.2 floats, and dumped with the same resolver so
a string that now looks like a number is quoted and survives a round trip.

Integers are plain decimal only: YAML 1.1 reads ``010`` as 8, ``0x10`` as 16 and ``1:30`` as 90, so
such a scalar becomes a ``LooseInt`` (a str) that string keys keep as text and number keys refuse.

A recipe is untrusted input (``extends`` may point anywhere): only regular files up to 1 MiB of
UTF-8 text without control characters are read, nesting and alias expansion are capped, and
messages about files that are not recipes never quote their content.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from typing import Any

import yaml

from compress.recipe.errors import RecipeError
from compress.recipe.keys import KeyPath, format_path
from compress.recipe.schema import Recipe
from compress.recipe.textfile import check_characters, close_files, read_text

Locations = dict[KeyPath, str]  # key path -> "file:line" (or "--set")

MAX_DEPTH = 32  # recipes nest 4 levels; the cap keeps 5,000-deep input away from RecursionError
MAX_ALIASES = 100
MAX_NODES = 100_000  # values after alias expansion: a 600-byte "billion laughs" file stops here

_FLOAT_TAG = "tag:yaml.org,2002:float"
_INT_TAG = "tag:yaml.org,2002:int"
_LOOSE_INT_TAG = "tag:compress,2024:loose-int"
_INT_DECIMAL = re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$")
# Integer-looking scalars that are not plain decimal: leading zeros (octal in YAML 1.1), 0x/0o/0b
# prefixes, digit-group underscores and base-60 (1:30 = 90 in YAML 1.1).
_INT_LOOSE = re.compile(
    r"^[-+]?(?:0[0-9_]+|0[xXoObB][0-9a-fA-F_]*|[1-9][0-9]*_[0-9_]*|[0-9][0-9_]*(?::[0-9_]+)+)$")
_FLOAT_12 = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


def _resolvers() -> dict[str, list[tuple[str, re.Pattern[str]]]]:
    table = {first: [(tag, rx) for tag, rx in entries if tag not in (_FLOAT_TAG, _INT_TAG)]
             for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    for first in "-+0123456789":
        table.setdefault(first, []).extend([(_INT_TAG, _INT_DECIMAL), (_LOOSE_INT_TAG, _INT_LOOSE)])
    for first in "-+0123456789.":
        table.setdefault(first, []).append((_FLOAT_TAG, _FLOAT_12))
    return table


class LooseInt(str):
    """A plain scalar such as ``010``, ``0x10``, ``1_000`` or ``1:30``: text for a string key, an
    error for a number (YAML 1.1 would silently read ``010`` as 8)."""


def loose_int_problem(text: str) -> str:
    """Why ``text`` is refused as a number, and how to write it."""
    sign = "-" if text.startswith("-") else ""
    body = text.lstrip("+-")
    digits = body.replace("_", "")
    try:
        if ":" in body:
            value = 0
            for part in digits.split(":"):
                value = value * 60 + int(part or "0")
            how = f"YAML 1.1 reads it as base 60 ({sign}{value}); write {sign}{value}"
        elif body[:2].lower() in ("0x", "0o", "0b"):
            how = f"write it in decimal, {sign}{int(digits, 0)}"
        elif body.startswith("0"):
            decimal = digits.lstrip("0") or "0"
            octal = f" (YAML 1.1 reads it as octal, {sign}{int(digits, 8)})" if set(digits) <= set("01234567") else ""
            how = f"a leading zero is ambiguous{octal}; write {sign}{decimal}"
        else:
            how = f"write it without underscores, {sign}{digits}"
    except ValueError:
        how = "write it in plain decimal digits"
    return f"{text} is not a plain decimal integer: {how} (or quote it for text)"


class YamlLimitError(yaml.MarkedYAMLError):
    """Input beyond the caps on nesting, aliases or size; ``problem`` is the one-line reason."""


class RecipeYamlLoader(yaml.SafeLoader):
    yaml_implicit_resolvers = _resolvers()

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        # id(node) -> (values after alias expansion, height); ids are stable, the tree holds the nodes
        self._shape: dict[int, tuple[int, int]] = {}

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:  # noqa: N803 (PyYAML's name)
        # The scanner reads a run of '[' eagerly, in quadratic time: stop it before the composer would.
        if self.flow_level >= MAX_DEPTH:
            raise YamlLimitError(problem=f"nested more than {MAX_DEPTH} levels deep", problem_mark=self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        # Caps are checked while composing, before anything expands aliases or recurses in Python.
        mark = self.peek_event().start_mark
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YamlLimitError(problem=f"more than {MAX_ALIASES} aliases (*name)", problem_mark=mark)
            node = super().compose_node(parent, index)
            if id(node) not in self._shape:
                raise YamlLimitError(problem="an alias (*name) inside the value it names", problem_mark=mark)
            return node
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlLimitError(problem=f"nested more than {MAX_DEPTH} levels deep", problem_mark=mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        shapes = [self._shape[id(child)] for child in children]
        size = 1 + sum(s for s, _ in shapes)
        height = 1 + max((h for _, h in shapes), default=0)
        if size > MAX_NODES:
            raise YamlLimitError(problem=f"more than {MAX_NODES} values once aliases (*name) are expanded",
                                 problem_mark=mark)
        if height > MAX_DEPTH:
            raise YamlLimitError(problem=f"nested more than {MAX_DEPTH} levels deep once aliases (*name) "
                                         "are expanded", problem_mark=mark)
        self._shape[id(node)] = (size, height)
        return node


RecipeYamlLoader.add_constructor(_LOOSE_INT_TAG, lambda loader, node: LooseInt(loader.construct_scalar(node)))


class RecipeYamlDumper(yaml.SafeDumper):
    yaml_implicit_resolvers = RecipeYamlLoader.yaml_implicit_resolvers


class FlowList(list):  # type: ignore[type-arg]
    """A value list written on one line (``[reinit, random_prune]``); sections stay in block style."""


class FlowDict(dict):  # type: ignore[type-arg]
    """A value mapping written on one line (``{conv: 0.1, linear: 0.2}``)."""


RecipeYamlDumper.add_representer(LooseInt, lambda d, v: d.represent_str(str(v)))
RecipeYamlDumper.add_representer(
    FlowList, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
RecipeYamlDumper.add_representer(
    FlowDict, lambda d, v: d.represent_mapping("tag:yaml.org,2002:map", v.items(), flow_style=True))


def parse_value(text: str) -> Any:
    """One ``--set`` value, read as YAML (``3e-4`` -> float, ``[a, b]`` -> list)."""
    loader = RecipeYamlLoader(text)  # a SafeLoader: plain data only
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def dump_yaml(data: Any) -> str:
    """Block style, except values wrapped in ``FlowList`` / ``FlowDict``."""
    return yaml.dump(data, Dumper=RecipeYamlDumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=100)


def read_tree(path: str) -> tuple[dict[str, Any], Locations]:
    """Parse one recipe file and follow its ``extends`` chain; the extending file wins."""
    return _read_chain(os.path.normpath(path), ())


def _read_chain(path: str, chain: tuple[str, ...]) -> tuple[dict[str, Any], Locations]:
    data, locs = parse_file(path)
    _require_recipe_keys(data, path)
    if "extends" not in data:
        return data, locs
    parent = data.pop("extends")
    here = locs.pop(("extends",), path)
    if not isinstance(parent, str) or not parent:
        raise RecipeError("expected the path of a recipe file (relative to this one)", here, "extends")
    parent_path = os.path.normpath(os.path.join(os.path.dirname(path), parent))
    if not os.path.lexists(parent_path):  # anything else that exists is refused by parse_file
        problem = f"no such recipe file {parent!r} (looked for {parent_path}){close_files(parent_path)}"
        raise RecipeError(problem, here, "extends")
    seen = [*chain, path]
    if any(os.path.realpath(parent_path) == os.path.realpath(p) for p in seen):
        raise RecipeError(f"extends cycle: {' -> '.join([*seen, parent_path])}", here, "extends")
    base, base_locs = _read_chain(parent_path, tuple(seen))
    return deep_merge(base, base_locs, data, locs)


def _require_recipe_keys(data: dict[str, Any], path: str) -> None:
    # A YAML-shaped file that is no recipe (``extends: /etc/shadow``: lines ending in ':' are keys)
    # would otherwise have its lines echoed as "unknown key"; a typo of a real key still gets its hint.
    known = ["extends", *(f.name for f in dataclasses.fields(Recipe))]
    if data and not any(key in known or difflib.get_close_matches(key, known, n=1) for key in data):
        raise RecipeError(f"not a recipe: none of its {len(data)} top-level keys is a recipe key "
                          f"({', '.join(known)})", path)


def parse_file(path: str) -> tuple[dict[str, Any], Locations]:
    return parse_text(read_text(path), path)


# YAML's messages quote pieces of the input (an alias name, a tag). A file that is not a recipe
# (``extends: /etc/shadow``) must not leak into logs: keep token names and single characters only.
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def _redact(text: str) -> str:
    def keep(match: re.Match[str]) -> str:
        inner = match.group()[1:-1]
        return match.group() if len(inner) <= 2 or (inner[:1], inner[-1:]) == ("<", ">") else "'...'"

    return _QUOTED.sub(keep, text)


def parse_text(text: str, filename: str) -> tuple[dict[str, Any], Locations]:
    """YAML text -> plain data and the ``file:line`` of every key and list item."""
    check_characters(text, filename)
    locs: Locations = {}
    node, loader = _compose(text, filename)
    try:
        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null") and not node.value):
            # nothing but comments or '---': running all the defaults is never what was meant
            raise RecipeError("empty recipe (no keys); write at least one, e.g. name: my_run", filename)
        data = _convert(node, (), loader, filename, locs)
    except yaml.YAMLError as error:
        raise _yaml_error(error, filename) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise RecipeError(f"a recipe must be a mapping of sections (key: value lines), got {_kind(data)}",
                          f"{filename}:{node.start_mark.line + 1}")
    return data, locs


def _compose(text: str, filename: str) -> tuple[yaml.Node | None, RecipeYamlLoader]:
    loader = RecipeYamlLoader(text)
    try:
        return loader.get_single_node(), loader
    except yaml.YAMLError as error:
        loader.dispose()
        raise _yaml_error(error, filename) from None


def _yaml_error(error: yaml.YAMLError, filename: str) -> RecipeError:
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        where = f"{filename}:{mark.line + 1}" if mark else filename
        if isinstance(error, YamlLimitError):
            return RecipeError(f"{error.problem}; a recipe is a small YAML file", where)
        problem = ": ".join(part for part in (error.context, error.problem) if part)
        hint = "; quote selectors that start with @, e.g. ['@stem', '@classifier']" if "'@'" in problem else ""
        return RecipeError(f"invalid YAML: {_redact(problem or type(error).__name__)}{hint}", where)
    return RecipeError(f"invalid YAML: {_redact(str(error))}", filename)


def _kind(value: Any) -> str:
    # Never the value itself: this file may be any file at all (see _redact).
    if isinstance(value, list):
        return "a list"
    if value is None or isinstance(value, (bool, int, float)):
        return "a single value"
    return "text" if isinstance(value, str) else type(value).__name__


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
            key = str(key)  # a LooseInt key (``010:``) is just text
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
