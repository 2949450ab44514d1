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
    usable = all(_finite(value) for value in values)
    return "early_stop_val_accuracy" if usable else "early_stop_test_accuracy"


def ticket_rule(tolerance: float, key: str = "early_stop_val_accuracy", rounds: list[dict] | None = None) -> str:
    split = "validation" if key == "early_stop_val_accuracy" else "test (no validation split)"
    lacking = [entry["round"] for entry in rounds or () if not _finite(entry.get("early_stop_val_accuracy"))]
    if key != "early_stop_val_accuracy" and rounds and len(lacking) < len(rounds):
        # said per round, never a silent switch: some rounds have a validation accuracy, these do not
        split = (f"test (round{'s' if len(lacking) > 1 else ''} {', '.join(map(str, lacking))} "
                 f"ha{'ve' if len(lacking) > 1 else 's'} no finite validation accuracy)")
    return (f"the sparsest round whose early-stop {split} accuracy is within {tolerance * 100:.2f} points "
            "of the dense round (round 0)")


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


# One rule for the accuracy a run reports: the headline is the test accuracy of the weights it ships
# (ticket.pt and its ONNX export hold each round's weights at the end of training); the early-stop
# accuracy is the signal that chose the round, reported beside it, never as the shipped model's.
HEADLINE_RULE = ("headline = test accuracy of the shipped weights (ticket.pt / ONNX: the end of the round's "
                 "training); the early-stop accuracy chose the round")


COMPUTE_FIELDS = ("iterations_trained", "train_flops", "train_flops_sparse", "early_bird_step", "final_iteration")


def result_fields(result: dict) -> dict:
    return {key: result[key] for key in ("weights_remaining", "macs_remaining", *RESULT_FIELDS, *COMPUTE_FIELDS)
            if key in result}


def chain_share(entry: dict) -> tuple[float, float, float]:
    """(iterations, FLOPs, sparse FLOPs) a later round needed of this round: all of its training, or with
    early-bird tickets only the steps up to its early-bird step (the next mask was drawn there)."""
    iterations = entry.get("iterations_trained")
    if iterations is None:
        return 0.0, 0.0, 0.0
    used = iterations
    if entry.get("early_bird_step") is not None:
        begin = entry.get("final_iteration", iterations) - iterations
        used = max(0, entry["early_bird_step"] - begin)
    share = used / iterations if iterations else 0.0
    return used, entry.get("train_flops", 0) * share, entry.get("train_flops_sparse", 0) * share


def add_compute_to_ticket(recipe, rounds: list[dict]) -> None:
    """``compute_to_ticket``: what producing each round's ticket cost, cumulative over the trainings it
    needed (imp: the earlier rounds of the chain, up to their early-bird step, plus its own; at_init: its
    own training only, the scoring's few passes left out). Iterations, dense-equivalent and sparse FLOPs."""
    if not all("iterations_trained" in entry for entry in rounds):
        return  # a run dir from before compute accounting
    flops = all("train_flops" in entry for entry in rounds)  # an own loop's report() without a batch: steps only
    chain = [0.0, 0.0, 0.0]
    for entry in sorted(rounds, key=lambda e: e["round"]):
        own = (entry["iterations_trained"], entry.get("train_flops", 0), entry.get("train_flops_sparse", 0))
        total = own if recipe.lottery.strategy == "at_init" else [c + o for c, o in zip(chain, own, strict=True)]
        entry["compute_to_ticket"] = {"iterations": int(total[0])}
        if flops:
            entry["compute_to_ticket"].update(flops=float(total[1]), flops_sparse=float(total[2]))
        chain = [c + s for c, s in zip(chain, chain_share(entry), strict=True)]


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
    add_compute_to_ticket(recipe, rounds)
    chosen = choose_ticket(rounds, tolerance)
    return {"name": recipe.name, "recipe_hash": recipe_hash(recipe), "rounds": rounds,
            "ticket": {"round": chosen["round"], "weights_remaining": chosen["weights_remaining"],
                       "early_stop_test_accuracy": chosen["early_stop_test_accuracy"],
                       "early_stop_val_accuracy": chosen.get("early_stop_val_accuracy"),
                       # the weights ticket.pt and the ONNX export hold are the round's final ones
                       "test_accuracy": chosen.get("test_accuracy"),
                       "shipped_test_accuracy": chosen.get("test_accuracy"),
                       "headline": HEADLINE_RULE,
                       "compute_to_ticket": chosen.get("compute_to_ticket"),
                       "rule": ticket_rule(tolerance, selection_key(rounds), rounds)}}


def round_line(entry: dict) -> str:
    """One round as the run prints it when the round finishes."""
    line = (f"round {entry['round']:2d}  remaining {entry['weights_remaining'] * 100:6.2f}%  "
            f"ticket acc {entry['early_stop_test_accuracy']:.4f} (early stop @ {entry['early_stop_iteration']})")
    for name, control in entry.get("controls", {}).items():
        line += f"  {name} {control['early_stop_test_accuracy']:.4f}"
    return line


def track_round(tracker, entry: dict) -> None:
    """A round's outcome at step = round index: weights / MACs remaining, early stop, each control's."""
    metrics = {f"round/{key}": entry[key] for key in ("weights_remaining", "macs_remaining", "early_stop_iteration",
                                                      "early_stop_test_accuracy", "test_accuracy") if key in entry}
    for name, control in entry.get("controls", {}).items():
        metrics.update({f"round/{name}/{key}": control[key] for key in ("early_stop_test_accuracy", "test_accuracy")
                        if key in control})
    tracker.log(metrics, entry["round"])
    tracker.flush()
