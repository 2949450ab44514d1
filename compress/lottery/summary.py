"""``summary.json``: which round is the winning ticket, by which rule, and reading it back."""

from __future__ import annotations

import math
from pathlib import Path

from compress import paths
from compress.errors import UserError, one_line
from compress.io import load_json
from compress.lottery.experiment import RESULT_FIELDS
from compress.recipe import recipe_hash


def choose_ticket(rounds: list[dict], tolerance: float) -> dict:
    """The sparsest round whose early-stop *validation* accuracy is within ``tolerance`` of the dense round.

    Chosen on validation, reported on test; without a validation split (``data.validation_size: 0``)
    the early-stop test accuracy is all there is.
    """
    key = selection_key(rounds)
    dense = rounds[0][key]
    eligible = [entry for entry in rounds if entry[key] >= dense - tolerance]
    return min(eligible, key=lambda entry: entry["weights_remaining"])


def selection_key(rounds: list[dict]) -> str:
    values = [entry.get("early_stop_val_accuracy") for entry in rounds]
    usable = all(value is not None and math.isfinite(value) for value in values)
    return "early_stop_val_accuracy" if usable else "early_stop_test_accuracy"


def ticket_rule(tolerance: float, key: str = "early_stop_val_accuracy") -> str:
    split = "validation" if key == "early_stop_val_accuracy" else "test (no validation split)"
    return (f"the sparsest round whose early-stop {split} accuracy is within {tolerance * 100:.2f} points "
            "of the dense round (round 0)")


def result_fields(result: dict) -> dict:
    return {key: result[key] for key in ("weights_remaining", "macs_remaining", *RESULT_FIELDS) if key in result}


def read_summary(run_dir: Path) -> dict:
    path = Path(run_dir) / paths.SUMMARY
    if not path.exists():
        raise UserError(f"{run_dir}: no {paths.SUMMARY} (not a finished or started run dir)")
    try:
        return load_json(path)
    except ValueError as error:
        raise UserError(f"{path}: not valid JSON ({one_line(error)})") from None


def build_summary(recipe, rounds: list[dict]) -> dict:
    """``summary.json``'s content: the rounds and the winning ticket with the rule that chose it."""
    tolerance = recipe.lottery.ticket_tolerance
    chosen = choose_ticket(rounds, tolerance)
    return {"name": recipe.name, "recipe_hash": recipe_hash(recipe), "rounds": rounds,
            "ticket": {"round": chosen["round"], "weights_remaining": chosen["weights_remaining"],
                       "early_stop_test_accuracy": chosen["early_stop_test_accuracy"],
                       "early_stop_val_accuracy": chosen.get("early_stop_val_accuracy"),
                       # the weights ticket.pt and the ONNX export hold are the round's final ones
                       "test_accuracy": chosen.get("test_accuracy"),
                       "rule": ticket_rule(tolerance, selection_key(rounds))}}


def round_line(entry: dict) -> str:
    """One round as the run prints it when the round finishes."""
    line = (f"round {entry['round']:2d}  remaining {entry['weights_remaining'] * 100:6.2f}%  "
            f"ticket acc {entry['early_stop_test_accuracy']:.4f} (early stop @ {entry['early_stop_iteration']})")
    for name, control in entry.get("controls", {}).items():
        line += f"  {name} {control['early_stop_test_accuracy']:.4f}"
    return line
