"""A recipe end to end: the lottery search, then the export of the winning ticket when asked."""

from __future__ import annotations

from pathlib import Path

from compress import distributed
from compress.lottery import find_ticket
from compress.recipe import Recipe


def run_recipe(recipe: Recipe, out: Path | None = None, progress: bool = True, where=None) -> dict:
    summary = find_ticket(recipe, out, progress, where)
    if recipe.export.onnx and distributed.is_main():
        from compress.export import export_run

        summary["export"] = export_run(Path(summary["run_dir"]), compact=recipe.export.compact,
                                       opset=recipe.export.opset)
    return summary
