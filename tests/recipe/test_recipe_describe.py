"""describe_schema lists every key path with type, default and help; the package exports its API."""

from __future__ import annotations

import dataclasses

import compress.recipe as recipe_pkg
from compress.recipe import Recipe, describe_schema


def leaf_paths(cls: type, prefix: str = "") -> list[str]:
    paths = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            paths += leaf_paths(type(default), f"{prefix}{f.name}.")
        else:
            paths.append(f"{prefix}{f.name}")
    return paths


def test_every_key_is_described() -> None:
    text = describe_schema()
    rows = {line.split()[0]: line for line in text.splitlines()[1:] if line.strip()}
    for path in leaf_paths(Recipe):
        assert path in rows, path
    assert "float" in rows["train.optimizer.lr"] and "learning rate" in rows["train.optimizer.lr"]
    assert "> 0" in rows["train.optimizer.lr"]
    assert "int | null" in rows["model.num_classes"] and "null" in rows["model.num_classes"]
    assert "list[str]" in rows["lottery.controls"] and "reinit" in rows["lottery.controls"]
    assert "{conv: 0.1, linear: 0.2, output: 0.1}" in rows["prune.rates"]
    assert "< train.iterations" in rows["lottery.rewind_to"]


def test_public_api() -> None:
    for name in ("Recipe", "ModelConfig", "DataConfig", "OptimizerConfig", "ScheduleConfig", "TrainConfig",
                 "PruneConfig", "LotteryConfig", "ExportConfig", "load_recipe", "recipe_from_dict",
                 "recipe_to_dict", "dump_recipe", "recipe_hash", "RecipeError", "where", "describe_schema"):
        assert name in recipe_pkg.__all__ and hasattr(recipe_pkg, name), name
    assert issubclass(recipe_pkg.RecipeError, ValueError)
