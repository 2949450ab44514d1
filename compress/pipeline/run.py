"""A recipe end to end: the lottery search, then the export of the winning ticket when asked."""

from __future__ import annotations

from pathlib import Path

from compress import distributed, paths
from compress.export.artifact.sizes import report_sizes
from compress.io import load_json
from compress.lottery import find_ticket
from compress.pipeline.export import export_run
from compress.recipe import Recipe

EXPORT_JSON = "export.json"


def run_recipe(recipe: Recipe, out: Path | None = None, progress: bool = True, where=None) -> dict:
    summary = find_ticket(recipe, out, progress, where)
    if recipe.export.onnx and distributed.is_main():
        run_dir = Path(summary["run_dir"])
        summary["export"] = _current_export(run_dir, recipe) or _export(run_dir, recipe)
        report_sizes(run_dir, summary, recipe)  # ticket.cta + the report's size table (compression.json)
    return summary


def _export(run_dir: Path, recipe: Recipe) -> dict:
    return export_run(run_dir, compact=recipe.export.compact, opset=recipe.export.opset)


def _current_export(run_dir: Path, recipe: Recipe) -> dict | None:
    """The export already made of this very ticket with these settings (a rerun of a finished run), if any."""
    report, onnx, ticket = run_dir / EXPORT_JSON, run_dir / paths.TICKET_ONNX, run_dir / paths.TICKET
    if not (report.exists() and onnx.exists() and ticket.exists()):
        return None
    if report.stat().st_mtime < ticket.stat().st_mtime or onnx.stat().st_mtime < ticket.stat().st_mtime:
        return None
    try:
        done = load_json(report)
    except ValueError:
        return None
    if not isinstance(done, dict):
        return None
    from compress.pipeline.export import anchored_paths

    done = anchored_paths(done, run_dir)  # stored relative to the run dir (it may have been copied)
    if done.get("opset") != recipe.export.opset or bool(done.get("compact")) != recipe.export.compact:
        return None
    # an export from before preprocessing metadata / int8 existed has no "settings": redo it
    settings = done.get("settings")
    if not isinstance(settings, dict) or any(settings.get(key) != getattr(recipe.export, key)
                                             for key in ("preprocess", "quantize", "qat", "qat_tolerance",
                                                         "qat_iterations", "calibration_size")):
        return None
    return done


def format_summary(summary: dict) -> str:
    """What ``find_ticket.py`` prints at the end: the answer, in a few lines (the JSON is in the run dir)."""
    rounds = {entry["round"]: entry for entry in summary["rounds"]}
    ticket = summary["ticket"]
    chosen, dense = rounds[ticket["round"]], rounds[0]
    run_dir = Path(summary["run_dir"])
    lines = [f"winning ticket: round {ticket['round']}, {ticket['weights_remaining'] * 100:.2f}% of weights left, "
             f"test accuracy {chosen['early_stop_test_accuracy'] * 100:.2f}% vs dense "
             f"{dense['early_stop_test_accuracy'] * 100:.2f}% (early stop)",
             f"  rule: {ticket['rule']}"]
    for name, control in chosen.get("controls", {}).items():
        lines.append(f"  control {name}: {control['early_stop_test_accuracy'] * 100:.2f}% at the same sparsity")
    lines.append(f"report:  {run_dir / paths.REPORT}")
    lines.append(f"summary: {run_dir / paths.SUMMARY}")
    export = summary.get("export")
    if export:
        lines.append(f"onnx:    {export['path']} (verified with onnxruntime, max |ORT - torch| "
                     f"{export['max_abs_diff']:.2g})")
        accuracy = export.get("accuracy") or {}
        if accuracy.get("onnx_raw_images") is not None:  # the exported (final) weights, from raw images
            lines.append(f"         test accuracy {accuracy['onnx_raw_images'] * 100:.2f}% through onnxruntime "
                         f"from the raw images (torch, same weights: {accuracy['torch_ticket'] * 100:.2f}%)")
    return "\n".join(lines)
