"""compress: find lottery tickets with torch.nn.utils.prune.

Public API (imported lazily so ``import compress`` stays cheap):
    load_recipe, Recipe, LotterySearch, StepEvent, find_ticket, run_recipe, load_ticket,
    create_model, list_models, load_dataset, list_datasets, train, export_onnx
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_recipe": "compress.recipe",
    "Recipe": "compress.recipe",
    "RecipeError": "compress.recipe",
    "dump_recipe": "compress.recipe",
    "create_model": "compress.models",
    "list_models": "compress.models",
    "register_model": "compress.models",
    "load_dataset": "compress.data",
    "list_datasets": "compress.data",
    "train": "compress.training",
    "LotterySearch": "compress.lottery",
    "StepEvent": "compress.lottery.events",
    "find_ticket": "compress.lottery",
    "load_ticket": "compress.lottery",
    "run_recipe": "compress.pipeline",
    "export_onnx": "compress.export",
}

__all__ = sorted(_EXPORTS)


# subpackages reachable as attributes right after ``import compress`` (``compress.recipe.PARTIAL_SECTIONS``)
_SUBPACKAGES = ("recipe", "pruning", "lottery", "training", "export", "models", "data", "integrations")


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBPACKAGES:
        return importlib.import_module(f"compress.{name}")
    raise AttributeError(f"module 'compress' has no attribute {name!r}")
