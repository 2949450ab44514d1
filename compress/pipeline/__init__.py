"""Application layer: a recipe end to end. The pipeline owns the order: search -> export -> sizes -> report.

    from compress.pipeline import run_recipe, export_run
    summary = run_recipe(recipe)                        # the lottery search, then the export when asked
    export_run("runs/lth_lenet300-1a2b3c", compact=True)  # -> ticket.onnx, ticket.compact.onnx, export.json
"""

from compress.pipeline.export import export_run
from compress.pipeline.run import run_recipe
from compress.pipeline.text import format_report, format_summary

__all__ = ["export_run", "format_report", "format_summary", "run_recipe"]
