"""Recipes: YAML experiment descriptions, checked against a frozen-dataclass schema.

    from compress.recipe import load_recipe, dump_recipe, where
    recipe = load_recipe("recipes/lth_lenet300.yaml", ["train.iterations=200"])
    prune_only = load_recipe("my_loop.yaml", sections=PARTIAL_SECTIONS)  # prune / lottery / seed only
    json_schema()  # a JSON Schema of recipe files (shipped as recipes/recipe.schema.json)
"""

from compress.recipe.describe import describe_schema, describe_schema_markdown
from compress.recipe.errors import RecipeError
from compress.recipe.jsonschema import json_schema
from compress.recipe.loader import (
    dump_recipe,
    load_recipe,
    recipe_from_dict,
    recipe_hash,
    recipe_to_dict,
    result_fields,
    results_hash,
    where,
)
from compress.recipe.schema import (
    DataConfig,
    ExportConfig,
    LotteryConfig,
    ModelConfig,
    OptimizerConfig,
    PruneConfig,
    Recipe,
    ScheduleConfig,
    TrainConfig,
)
from compress.recipe.validate import PARTIAL_SECTIONS

__all__ = [
    "PARTIAL_SECTIONS", "DataConfig", "ExportConfig", "LotteryConfig", "ModelConfig", "OptimizerConfig", "PruneConfig",
    "Recipe", "RecipeError", "ScheduleConfig", "TrainConfig", "describe_schema", "describe_schema_markdown", "dump_recipe", "json_schema",
    "load_recipe", "recipe_from_dict", "recipe_hash", "recipe_to_dict", "result_fields", "results_hash", "where",
]
