"""Mean ± std over seeds, per round, read from the run dirs' ``summary.json`` (never typed in by hand).

One JSON per experiment. Each round holds ``weights_remaining`` and, per experiment kind that ran
(``dense`` for round 0; ``ticket`` / ``reinit`` / ``random_prune`` for the pruned rounds)::

    {"mean": <early-stop test accuracy>, "std": ..., "values": [per seed],
     "early_stop_iteration": {"mean", "std", "values"}, "test_accuracy": {"mean", "std", "values"},
     "weights_remaining": {"mean", "std", "values"}}

``std`` is the sample standard deviation (n - 1); null with a single seed. A round's ``seeds`` lists
the seeds that finished it: a seed still running contributes the rounds it has.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from compress import paths
from compress.io import load_json
from compress.reproduce.experiment import Experiment, run_dir

KINDS = ("dense", "ticket", "reinit", "random_prune")
METRICS = ("early_stop_test_accuracy", "early_stop_iteration", "test_accuracy", "weights_remaining")
SPARSE = 0.07  # the done-when bar looks at every round with <= 7% of the weights remaining


def stats(values: list[float]) -> dict:
    """``{"mean", "std", "values"}``; std is the sample std, None for a single value."""
    if not values:
        raise ValueError("stats of no values")
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "std": std, "values": list(values)}


def kept_summary(kept: Path, experiment: str, seed: int) -> Path:
    """Where a results folder keeps the copy of one run's ``summary.json`` (``summaries/<experiment>-seed<k>``)."""
    return Path(kept) / f"{experiment}-seed{seed}.json"


def is_complete(experiment: Experiment, seed: int, summary: dict) -> bool:
    """Whether ``summary`` is that of the finished run of this very recipe (its hash, every round)."""
    from compress.lottery.planning import planned_rounds
    from compress.recipe import load_recipe, recipe_hash
    from compress.reproduce.experiment import RECIPES

    recipe = load_recipe(RECIPES / experiment.recipe, overrides=experiment.overrides_for(seed))
    return summary.get("recipe_hash") == recipe_hash(recipe) and len(summary["rounds"]) == planned_rounds(recipe) + 1


def load_summaries(runs_root: Path, experiment: Experiment, kept: Path | None = None) -> dict[int, dict]:
    """``{seed: summary}`` for every seed whose run dir has a summary (a partial run counts its rounds).

    ``kept``: a folder of committed copies (``kept_summary``), read for a seed whose run dir is absent -- the
    runs of a suite that spans machines, where only the results folder travels."""
    found = {}
    for seed in experiment.seeds:
        path = run_dir(runs_root, experiment.name, seed) / paths.SUMMARY
        if not path.exists() and kept is not None:
            path = kept_summary(kept, experiment.name, seed)
        if path.exists():
            found[seed] = load_json(path)
    return found


def _source(entry: dict, kind: str) -> dict | None:
    if kind == "dense":
        return entry if entry["round"] == 0 else None
    if kind == "ticket":
        return entry if entry["round"] > 0 else None
    return entry.get("controls", {}).get(kind)


def _kind_stats(entries: list[dict], budget: int | None = None) -> dict:
    accuracy = stats([e["early_stop_test_accuracy"] for e in entries])
    row = {"mean": accuracy["mean"], "std": accuracy["std"], "values": accuracy["values"]}
    for key in METRICS[1:]:
        row[key] = stats([float(e[key]) for e in entries])
    if budget is not None:
        # stopped at the last evaluation: the lowest validation loss may lie beyond the budget (censored)
        row["censored"] = sum(int(e["early_stop_iteration"]) >= budget for e in entries)
    return row


def aggregate_rounds(summaries: list[dict], seeds: list[int] | None = None, budget: int | None = None) -> list[dict]:
    """Per round: the stats of each kind over the seeds that finished that round (``seeds`` says which).

    ``budget``: the iterations per training; each kind then counts its ``censored`` seeds (early stop at
    the budget's end)."""
    seeds = list(range(len(summaries))) if seeds is None else seeds
    rounds = []
    for index in range(max((len(s["rounds"]) for s in summaries), default=0)):
        present = [(i, s["rounds"][index]) for i, s in enumerate(summaries) if len(s["rounds"]) > index]
        entries = [entry for _, entry in present]
        row: dict = {"round": index, "seeds": [seeds[i] for i, _ in present],
                     "weights_remaining": statistics.fmean(e["weights_remaining"] for e in entries)}
        for kind in KINDS:
            sources = [_source(e, kind) for e in entries]
            if all(source is not None for source in sources):
                row[kind] = _kind_stats(sources, budget)
        rounds.append(row)
    return rounds


def paired_gap(rounds: list[dict], a: str, b: str) -> list[dict]:
    """``a − b`` early-stop accuracy per round, seed by seed (paired: same seed, same mask budget)."""
    gaps = []
    dense = dict(zip(rounds[0]["seeds"], rounds[0]["dense"]["values"], strict=True)) \
        if rounds and "dense" in rounds[0] else {}
    for row in rounds:
        left = row.get(a)
        if left is None or (b != "dense" and b not in row):
            continue
        right = [dense[seed] for seed in row["seeds"]] if b == "dense" else row[b]["values"]
        diffs = [x - y for x, y in zip(left["values"], right, strict=True)]
        gaps.append({"round": row["round"], "weights_remaining": row["weights_remaining"], **stats(diffs)})
    return gaps


def bar_check(rounds: list[dict], sparse: float = SPARSE, min_gap: float = 0.02,
              max_below_dense: float = 0.01) -> dict | None:
    """The issue's done-when bar on the seed-paired means, at every round with <= ``sparse`` remaining."""
    to_reinit = {g["round"]: g for g in paired_gap(rounds, "ticket", "reinit")}
    to_dense = {g["round"]: g for g in paired_gap(rounds, "ticket", "dense")}
    checks = [{"round": r, "weights_remaining": gap["weights_remaining"], "ticket_minus_reinit": gap["mean"],
               "ticket_minus_dense": to_dense[r]["mean"]}
              for r, gap in to_reinit.items() if gap["weights_remaining"] <= sparse and r in to_dense]
    if not checks:
        return None
    for check in checks:
        check["gap_ok"] = check["ticket_minus_reinit"] >= min_gap - 1e-12
        check["dense_ok"] = check["ticket_minus_dense"] >= -max_below_dense - 1e-12
    return {"rule": f"at every round with <= {sparse * 100:g}% remaining: mean ticket - reinit >= "
                    f"{min_gap * 100:g} points and mean ticket >= dense - {max_below_dense * 100:g} point",
            "met": all(c["gap_ok"] and c["dense_ok"] for c in checks), "rounds": checks}


def _speedup(rounds: list[dict]) -> dict | None:
    """Dense early-stop iteration over the ticket's, at the round where the ticket stops soonest."""
    if not rounds or "dense" not in rounds[0]:
        return None
    pruned = [row for row in rounds if "ticket" in row]
    if not pruned:
        return None
    best = min(pruned, key=lambda row: row["ticket"]["early_stop_iteration"]["mean"])
    dense = rounds[0]["dense"]["early_stop_iteration"]["mean"]
    ticket = best["ticket"]["early_stop_iteration"]["mean"]
    return {"round": best["round"], "weights_remaining": best["weights_remaining"], "dense_iteration": dense,
            "ticket_iteration": ticket, "speedup": dense / ticket if ticket else math.inf}


def _best_over_dense(rounds: list[dict]) -> dict | None:
    """The paper's headline per network: the largest seed-paired mean ticket gain over dense, and where."""
    gaps = paired_gap(rounds, "ticket", "dense")
    if not gaps:
        return None
    best = max(gaps, key=lambda gap: gap["mean"])
    return {"round": best["round"], "weights_remaining": best["weights_remaining"],
            "ticket_minus_dense": best["mean"], "seeds": len(best["values"])}


def aggregate_experiment(experiment: Experiment, runs_root: Path, kept: Path | None = None) -> dict:
    """The machine-readable result of one experiment (written as ``<experiment>.json``); ``kept`` as in
    ``load_summaries``."""
    summaries = load_summaries(runs_root, experiment, kept)
    seeds = sorted(summaries)
    budget = experiment.iterations()
    rounds = aggregate_rounds([summaries[seed] for seed in seeds], seeds, budget)
    wall = {str(seed): _wall_s(summaries[seed]) for seed in seeds}
    return {
        "experiment": experiment.name, "title": experiment.title, "recipe": f"recipes/{experiment.recipe}",
        "overrides": list(experiment.overrides), "budget": experiment.budget, "paper": experiment.paper,
        "seeds": seeds, "seeds_planned": list(experiment.seeds), "iterations": budget,
        "rounds_complete": min((len(summaries[seed]["rounds"]) for seed in seeds), default=0),
        "rounds_per_seed": {str(seed): len(summaries[seed]["rounds"]) for seed in seeds},
        "training_wall_s_per_seed": wall,
        "rounds": rounds,
        "gaps": {"ticket_minus_reinit": paired_gap(rounds, "ticket", "reinit"),
                 "ticket_minus_dense": paired_gap(rounds, "ticket", "dense")},
        "best_ticket_over_dense": _best_over_dense(rounds),
        "early_stop_speedup": _speedup(rounds),
        "bar": bar_check(rounds),
    }


def _wall_s(summary: dict) -> float:
    """Sum of the trainings' own wall times (ticket and controls): unaffected by kills and resumes."""
    total = 0.0
    for entry in summary["rounds"]:
        total += entry["wall_s"]
        total += sum(control["wall_s"] for control in entry.get("controls", {}).values())
    return total
