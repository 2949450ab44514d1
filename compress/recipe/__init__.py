"""Recipes: YAML experiment descriptions, checked against a frozen-dataclass schema.

    from compress.recipe import load_recipe, dump_recipe, where
    recipe = load_recipe("recipes/lth_lenet300.yaml", ["train.iterations=200"])
"""

from compress.recipe.describe import describe_schema
from compress.recipe.errors import RecipeError
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

__all__ = [
    "DataConfig", "ExportConfig", "LotteryConfig", "ModelConfig", "OptimizerConfig", "PruneConfig",
    "Recipe", "RecipeError", "ScheduleConfig", "TrainConfig", "describe_schema", "dump_recipe",
    "load_recipe", "recipe_from_dict", "recipe_hash", "recipe_to_dict", "result_fields", "results_hash", "where",
]
