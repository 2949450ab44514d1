"""The shipped JSON Schema of recipes matches the schema dataclasses, and the shipped recipes fit it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from compress.recipe import json_schema
from compress.recipe.jsonschema import SHIPPED, schema_text

RECIPES = sorted(Path(SHIPPED).parent.glob("*.yaml"))


def test_shipped_schema_is_up_to_date():
    assert SHIPPED.read_text(encoding="utf-8") == schema_text(), (
        "recipes/recipe.schema.json is stale; regenerate it with "
        "python -c 'from compress.recipe.jsonschema import write_schema; write_schema()'")


def test_schema_content():
    schema = json_schema()
    assert schema["additionalProperties"] is False and "extends" in schema["properties"]
    prune = schema["properties"]["prune"]["properties"]
    assert prune["scope"]["enum"] == ["layerwise", "global", None]
    assert prune["rates"]["additionalProperties"] == {"type": ["number", "null"], "minimum": 0,
                                                      "exclusiveMaximum": 1}
    assert prune["keep"]["type"] == ["array", "null"] and prune["keep"]["items"] == {"type": "string"}
    assert prune["output"]["type"] == ["string", "null"] and "@classifier" in prune["output"]["description"]
    train = schema["properties"]["train"]["properties"]
    assert train["iterations"] == {"type": ["integer", "null"], "exclusiveMinimum": 0, "default": 3000,
                                   "description": train["iterations"]["description"]}
    assert schema["properties"]["export"]["properties"]["opset"]["maximum"] == 20
    json.dumps(schema)  # plain JSON


def test_every_shipped_recipe_points_at_the_schema_and_validates():
    for recipe in RECIPES:
        assert recipe.read_text().startswith("# yaml-language-server: $schema=recipe.schema.json\n"), recipe.name
        _check(yaml.safe_load(recipe.read_text()), json_schema(), recipe.name)


def test_a_full_validator_accepts_the_shipped_recipes():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft7Validator(json_schema())
    for recipe in RECIPES:
        errors = list(validator.iter_errors(yaml.safe_load(recipe.read_text())))
        assert not errors, f"{recipe.name}: {errors[0].message}"


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
          "integer": int, "number": (int, float)}


def _check(value, node, path):
    """The subset of JSON Schema that json_schema() emits: type, enum, properties, items, bounds."""
    kinds = node.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    assert not kinds or any(isinstance(value, _TYPES[k]) and not (k in ("integer", "number") and
                                                                  isinstance(value, bool)) for k in kinds), path
    assert "enum" not in node or value in node["enum"], path
    if isinstance(value, dict):
        for key, item in value.items():
            sub = node.get("properties", {}).get(key, node.get("additionalProperties"))
            assert sub is not False and sub is not None, f"{path}.{key}: not in the schema"
            _check(item, sub, f"{path}.{key}")
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check(item, node["items"], f"{path}[{i}]")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        assert value >= node.get("minimum", value) and value > node.get("exclusiveMinimum", value - 1), path
        assert value <= node.get("maximum", value) and value < node.get("exclusiveMaximum", value + 1), path
