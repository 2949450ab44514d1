"""Every file name a run directory holds, in one place."""

from __future__ import annotations

from pathlib import Path

RECIPE = "recipe.yaml"
SUMMARY = "summary.json"
REPORT = "report.md"
TICKET = "ticket.pt"
TICKET_ONNX = "ticket.onnx"
REWIND = "rewind.pt"
INIT = "init.pt"


def round_dir(run_dir: Path, round_index: int) -> Path:
    return Path(run_dir) / f"round_{round_index:02d}"


def experiment_dir(run_dir: Path, round_index: int, experiment: str) -> Path:
    """``ticket`` lives in the round dir itself; controls in sub-folders named after them."""
    base = round_dir(run_dir, round_index)
    return base if experiment == "ticket" else base / experiment


MASK = "mask.pt"
METRICS = "metrics.jsonl"
SPARSITY = "sparsity.json"
FINAL = "final.pt"
CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
EARLY_BIRD = "early_bird.pt"  # the round's converged early-bird mask draw and its step
MASK_WARNINGS = "mask_warnings.json"  # what warned while the round's masks were computed (scorer fallbacks)
