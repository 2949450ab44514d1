"""The methods suite's results: one JSON, a table, accuracy-vs-weights and accuracy-vs-compute plots.

Everything is read from the run dirs' ``summary.json``: a chained method at the rounds that reach the
suite's target densities, a one-step method (one-shot, at init) at its one pruned round. Compute is
``compute_to_ticket`` (dense-equivalent FLOPs of every training the ticket needed, cumulative for IMP).
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import matplotlib.ticker
from matplotlib.figure import Figure

from compress.io import save_bytes, save_json, save_text
from compress.reproduce.aggregate import is_complete, load_summaries, stats
from compress.reproduce.report import SUMMARIES, keep_summaries, machine
from compress.reproduce.suite import Experiment

REFERENCE = "imp_reset"
WITHIN = 0.005  # 0.5 points: "matches IMP's ticket"
MAX_WEIGHTS = 0.07  # the cheaper-ticket question is asked at <= 7% of weights
CONTROL_KINDS = ("reinit", "shuffle", "invert")


def _entries(experiment: Experiment, summary: dict) -> dict[int, dict]:
    """Target round -> the summary's round entry that reached it."""
    rounds = {entry["round"]: entry for entry in summary["rounds"]}
    if experiment.extra["read"] == "one_step":
        target = next(iter(experiment.extra["targets"]))
        return {target: rounds[1]} if 1 in rounds else {}
    return {target: rounds[target] for target in experiment.extra["targets"] if target in rounds}


def collect(experiments: list[Experiment], runs_root: Path, kept: Path | None = None) -> list[dict]:
    """One row per (model, method, target) with at least one finished seed: mean +- std over seeds.

    ``kept``: the committed summary copies, read where a run dir is absent (``load_summaries``)."""
    return rows_from(experiments, {e.name: load_summaries(runs_root, e, kept) for e in experiments})


def rows_from(experiments: list[Experiment], found: dict[str, dict[int, dict]]) -> list[dict]:
    """``collect`` on summaries already read: ``found[experiment name][seed]``."""
    cells: dict[tuple[str, str, int], dict] = {}
    for experiment in experiments:
        for seed, summary in found[experiment.name].items():
            for target, entry in _entries(experiment, summary).items():
                key = (experiment.extra["model"], experiment.extra["method"], target)
                cell = cells.setdefault(key, {"seeds": [], "entries": [],
                                              "label": experiment.extra["targets"][target]})
                cell["seeds"].append(seed)
                cell["entries"].append(entry)
    rows = []
    for (model, method, target), cell in sorted(cells.items()):
        entries = cell["entries"]
        row = {"model": model, "method": method, "target_round": target, "target": cell["label"],
               "seeds": cell["seeds"],
               "weights_remaining": stats([e["weights_remaining"] for e in entries]),
               "accuracy": stats([e["early_stop_test_accuracy"] for e in entries])}
        computes = [e["compute_to_ticket"] for e in entries if "compute_to_ticket" in e]
        if len(computes) == len(entries):
            row["compute_flops"] = stats([c["flops"] for c in computes])
            row["compute_iterations"] = stats([float(c["iterations"]) for c in computes])
        birds = [e.get("early_bird_step") for e in entries]
        if any(step is not None for step in birds):
            row["early_bird_steps"] = birds
        for kind in CONTROL_KINDS:
            found = [e["controls"][kind]["early_stop_test_accuracy"] for e in entries if kind in e.get("controls", {})]
            if found:
                row[kind] = stats(found)
        rows.append(row)
    _relative_compute(rows)
    return rows


def _relative_compute(rows: list[dict]) -> None:
    """Each row's compute as a fraction of IMP (reset)'s at the same model and target."""
    reference = {(r["model"], r["target_round"]): r for r in rows if r["method"] == REFERENCE}
    for row in rows:
        imp = reference.get((row["model"], row["target_round"]))
        if imp is not None and "compute_flops" in row and "compute_flops" in imp:
            row["compute_vs_imp"] = row["compute_flops"]["mean"] / imp["compute_flops"]["mean"]
            row["accuracy_vs_imp"] = row["accuracy"]["mean"] - imp["accuracy"]["mean"]


def cheapest_match(rows: list[dict], model: str, max_weights: float = MAX_WEIGHTS) -> dict:
    """The least-compute method within ``WITHIN`` of IMP's ticket at <= ``max_weights`` (by mean)."""
    candidates = [r for r in rows if r["model"] == model and r["weights_remaining"]["mean"] <= max_weights + 0.001
                  and "accuracy_vs_imp" in r and r["method"] != REFERENCE]
    matching = [r for r in candidates if r["accuracy_vs_imp"] >= -WITHIN]
    if not candidates:
        return {"answer": "no data: IMP or the other methods have no run at this sparsity yet"}
    if not matching:
        return {"answer": "none: no method is within 0.5 points of IMP's ticket at this budget",
                "compared": [(r["method"], r["target"]) for r in candidates]}
    best = min(matching, key=lambda r: r["compute_vs_imp"])
    return {"answer": best["method"], "target": best["target"], "compute_vs_imp": best["compute_vs_imp"],
            "accuracy_vs_imp_points": best["accuracy_vs_imp"] * 100, "seeds": best["seeds"]}


def describe_match(answer: dict) -> str:
    """``cheapest_match``'s answer as a sentence."""
    if "target" not in answer:
        compared = ", ".join(f"{method} at {target}" for method, target in answer.get("compared", []))
        return answer["answer"] + (f" (compared: {compared})" if compared else "")
    return (f"{answer['answer']} at {answer['target']} of weights: {answer['accuracy_vs_imp_points']:+.2f} points "
            f"against IMP's ticket at {answer['compute_vs_imp']:.2f}x its compute "
            f"(seeds {', '.join(map(str, answer['seeds']))})")


def _pm(stat: dict | None, scale: float = 100.0) -> str:
    if stat is None:
        return "–"
    return f"{stat['mean'] * scale:.2f}" + ("" if stat["std"] is None else f" ± {stat['std'] * scale:.2f}")


def table(rows: list[dict]) -> str:
    lines = ["| model | method | target | weights % | test acc % | vs IMP (pts) | compute (TFLOP) | x IMP | "
             "reinit % | shuffle % | invert % | seeds |", "|" + "---|" * 12]
    for r in rows:
        flops = r.get("compute_flops")
        gap = "–" if "accuracy_vs_imp" not in r else f"{r['accuracy_vs_imp'] * 100:+.2f}"
        pflop = "–" if flops is None else f"{flops['mean'] / 1e12:.2f}"
        ratio = "–" if "compute_vs_imp" not in r else f"{r['compute_vs_imp']:.2f}"
        lines.append(
            f"| {r['model']} | {r['method']} | {r['target']} | {_pm(r['weights_remaining'])} | {_pm(r['accuracy'])} | "
            f"{gap} | {pflop} | {ratio} | {_pm(r.get('reinit'))} | {_pm(r.get('shuffle'))} | "
            f"{_pm(r.get('invert'))} | {','.join(map(str, r['seeds']))} |")
    return "\n".join(lines)


def _plot(rows: list[dict], model: str, x_key: str, path: Path, xlabel: str, log: bool) -> bool:
    chosen = [r for r in rows if r["model"] == model and (x_key != "compute_flops" or x_key in r)]
    if not chosen:
        return False
    figure = Figure(figsize=(7, 4.5))
    axis = figure.subplots()
    # IMP and its variants solid, the one-step methods dashed, each its own colour (tab20: more methods
    # than the default cycle has colours) and marker
    colours, markers = matplotlib.colormaps["tab20"].colors, "osD^v<>pP*Xh"
    for i, method in enumerate(sorted({r["method"] for r in chosen})):
        points = sorted((r for r in chosen if r["method"] == method), key=lambda r: -r["weights_remaining"]["mean"])
        xs = [r[x_key]["mean"] * (100 if x_key == "weights_remaining" else 1) for r in points]
        ys = [r["accuracy"]["mean"] * 100 for r in points]
        errors = [(r["accuracy"]["std"] or 0.0) * 100 for r in points]
        one_step = method.startswith(("init_", "oneshot_"))
        axis.errorbar(xs, ys, yerr=errors, marker=markers[i % len(markers)], capsize=3, label=method,
                      color=colours[2 * (i % 10) + (i // 10) % 2], linestyle="--" if one_step else "-")
    if log:
        axis.set_xscale("log")
    if x_key == "weights_remaining":
        axis.invert_xaxis()
        ticks = sorted({round(r["weights_remaining"]["mean"] * 100, 1) for r in chosen}, reverse=True)
        axis.set_xticks(ticks, [f"{t:g}" for t in ticks])
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_xlabel(xlabel)
    axis.set_ylabel("early-stop test accuracy (%)")
    axis.set_title(model)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    save_bytes(buffer.getvalue(), path)
    return True


def write_methods_results(experiments: list[Experiment], runs_root: Path, out: Path, note: str = "") -> Path:
    """``methods.json``, ``methods.md`` and one pair of plots per model with data, into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kept = out / SUMMARIES
    found = {e.name: load_summaries(runs_root, e, kept) for e in experiments}
    rows = rows_from(experiments, found)
    sparsest: dict[str, float] = {}  # per model, the suite's smallest target fraction of weights
    for experiment in experiments:
        for label in experiment.extra["targets"].values():
            model = experiment.extra["model"]
            sparsest[model] = min(sparsest.get(model, 1.0), float(label.rstrip("%")) / 100)
    answer = {model: cheapest_match(rows, model) if sparsest.get(model, 0.0) <= MAX_WEIGHTS else
              {"answer": f"not asked: this model's sparsest target is {sparsest[model]:.0%} of weights"}
              for model in sorted({r["model"] for r in rows})}
    planned = sorted({(e.name, seed) for e in experiments for seed in e.seeds})
    for experiment in experiments:
        keep_summaries(experiment, sorted(found[experiment.name]), runs_root, kept)
    ran = sorted((name, seed) for name, summaries in found.items() for seed in summaries)
    by_name = {e.name: e for e in experiments}
    complete = sum(is_complete(by_name[name], seed, found[name][seed]) for name, seed in ran)
    save_json({"rows": rows, "cheapest_within_half_point_of_imp": answer, "machine": machine(),
               "planned_runs": len(planned), "finished_runs": complete, "runs_with_a_summary": len(ran),
               "finished": [f"{name}/seed{seed}" for name, seed in ran]}, out / "methods.json")
    plots = []
    for model in sorted({r["model"] for r in rows}):
        if _plot(rows, model, "weights_remaining", out / f"methods_{model}_accuracy_vs_weights.png",
                 "weights remaining (%)", log=True):
            plots.append(f"![{model} accuracy vs weights](methods_{model}_accuracy_vs_weights.png)")
        if _plot(rows, model, "compute_flops", out / f"methods_{model}_accuracy_vs_compute.png",
                 "compute to this ticket (dense-equivalent FLOPs, 3 x MACs x batch x iterations)", log=True):
            plots.append(f"![{model} accuracy vs compute](methods_{model}_accuracy_vs_compute.png)")
    text = ["# Methods suite: IMP against pruning at init, rewinding variants and early-bird", "",
            "Generated by `python tools/reproduce.py --suite methods` from the run dirs' `summary.json`.", "",
            f"**Subset**: {complete} of the suite's {len(planned)} (experiment, seed) runs finished"
            + (f", {len(ran) - complete} more under way (their finished rounds count)" if len(ran) > complete else "")
            + "; rows show which seeds each mean is over.", *([note] if note else []), "",
            "## Cheapest method within 0.5 points of IMP's ticket at <= 7% of weights", "",
            *[f"- {model}: {describe_match(answer[model])}" for model in answer], "", "## Table", "", table(rows), "",
            "## Plots", "", *plots, ""]
    save_text("\n".join(text), out / "methods.md")
    return out
