"""A recipe end to end: the lottery search, then the export of the winning ticket when asked."""

from __future__ import annotations

from pathlib import Path

from compress import distributed, paths
from compress.export.artifact.sizes import cached_run_sizes, report_sizes, size_section
from compress.io import file_sha256, load_json
from compress.lottery import find_ticket
from compress.lottery.report import write_report
from compress.pipeline.export import EXPORT_JSON, anchored_paths, export_run
from compress.recipe import Recipe


def run_recipe(recipe: Recipe, out: Path | None = None, progress: bool = True, where=None) -> dict:
    """The recipe end to end, in this order: search -> export -> sizes -> report.

    The export is reused only when ``export.json`` records the sha256 of the very ``ticket.pt`` in the run dir
    (and the same export settings); the size table is reused only for the very ONNX file it measured. Export
    and sizes never write the report: this function does, once they are current.
    """
    summary = find_ticket(recipe, out, progress, where)
    if recipe.export.onnx and distributed.is_main():
        run_dir = Path(summary["run_dir"])
        summary["export"] = current_export(run_dir, recipe) or _export(run_dir, recipe)
        fresh = cached_run_sizes(run_dir) is None
        rows = report_sizes(run_dir)  # ticket.cta + the size table (compression.json)
        if rows:
            section = size_section(rows)
            report = run_dir / paths.REPORT
            # rewritten only when the table is new or missing, so a finished run reruns on read-only media
            if fresh or not report.is_file() or "\n".join(section) not in report.read_text(encoding="utf-8"):
                write_report(run_dir, summary, recipe, sections=section)
    return summary


def _export(run_dir: Path, recipe: Recipe) -> dict:
    return export_run(run_dir, compact=recipe.export.compact, opset=recipe.export.opset)


def current_export(run_dir: Path, recipe: Recipe) -> dict | None:
    """The export already made of this very ticket with these settings (a rerun of a finished run), if any.

    One rule: ``export.json``'s ``ticket_sha256`` is the sha256 of the run dir's ``ticket.pt`` (file times
    are not looked at), the ONNX file is there, and the export settings are the recipe's.
    """
    report, onnx, ticket = run_dir / EXPORT_JSON, run_dir / paths.TICKET_ONNX, run_dir / paths.TICKET
    if not (report.exists() and onnx.exists() and ticket.exists()):
        return None
    try:
        done = load_json(report)
    except ValueError:
        return None
    if not isinstance(done, dict) or done.get("ticket_sha256") != file_sha256(ticket):
        return None
    done = anchored_paths(done, run_dir)  # stored relative to the run dir (it may have been copied)
    if done.get("opset") != recipe.export.opset or bool(done.get("compact")) != recipe.export.compact:
        return None
    settings = done.get("settings")
    if not isinstance(settings, dict) or any(settings.get(key) != getattr(recipe.export, key)
                                             for key in ("preprocess", "quantize", "qat", "qat_tolerance",
                                                         "qat_iterations", "calibration_size")):
        return None
    return done
