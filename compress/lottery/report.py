"""``report.md`` and its plots, rewritten after every round from ``summary.json`` and the round folders."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from compress import paths
from compress.io import load_json, save_bytes, save_text

ACCURACY_PLOT = "accuracy.png"
EARLY_STOP_PLOT = "early_stop.png"
COMPUTE_PLOT = "accuracy_vs_compute.png"
STYLE = {"ticket": ("tab:blue", "o"), "reinit": ("tab:orange", "s"), "random_prune": ("tab:green", "^")}


def _series(rounds: list[dict], experiment: str, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for entry in rounds:
        source = entry if experiment == "ticket" else entry.get("controls", {}).get(experiment)
        if source is not None:
            xs.append(source["weights_remaining"] * 100)
            ys.append(source[key])
    return xs, ys


def _experiments(rounds: list[dict]) -> list[str]:
    names = ["ticket"]
    for entry in rounds:
        names += [name for name in entry.get("controls", {}) if name not in names]
    return names


def _save_figure(figure, path: Path) -> None:
    buffer = io.BytesIO()
    # a bare Figure renders with Agg for png without pyplot, so a notebook's backend is never switched
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    save_bytes(buffer.getvalue(), path)


def _log_axis(axis, rounds: list[dict]) -> None:
    """Log x axis, densest on the left as in the paper, ticks at the rounds' own percentages."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ticks = sorted({round(entry["weights_remaining"] * 100, 1) for entry in rounds}, reverse=True)
    axis.set_xscale("log")
    axis.xaxis.set_major_locator(FixedLocator(ticks))
    axis.xaxis.set_minor_locator(NullLocator())
    axis.set_xticklabels([f"{tick:g}" for tick in ticks], fontsize=7)
    axis.invert_xaxis()
    axis.set_xlabel("% of weights remaining (log)")


def plot_accuracy(rounds: list[dict], path: Path, title: str) -> None:
    figure = Figure(figsize=(6.4, 4.2))
    axis = figure.subplots()
    for name in _experiments(rounds):
        color, marker = STYLE.get(name, ("tab:gray", "x"))
        xs, ys = _series(rounds, name, "early_stop_test_accuracy")
        axis.plot(xs, [y * 100 for y in ys], color=color, marker=marker, label=f"{name} (early stop)")
        xs, ys = _series(rounds, name, "test_accuracy")
        axis.plot(xs, [y * 100 for y in ys], color=color, marker=marker, linestyle="--", alpha=0.5,
                  label=f"{name} (end of training)")
    _log_axis(axis, rounds)
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(title)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7)
    _save_figure(figure, path)


def plot_early_stop(rounds: list[dict], path: Path, title: str) -> None:
    figure = Figure(figsize=(6.4, 4.2))
    axis = figure.subplots()
    for name in _experiments(rounds):
        color, marker = STYLE.get(name, ("tab:gray", "x"))
        xs, ys = _series(rounds, name, "early_stop_iteration")
        axis.plot(xs, ys, color=color, marker=marker, label=name)
    _log_axis(axis, rounds)
    axis.set_ylabel("early-stop iteration (min validation loss)")
    axis.set_title(title)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    _save_figure(figure, path)


def _round_table(rounds: list[dict]) -> list[str]:
    controls = [name for name in _experiments(rounds) if name != "ticket"]
    header = "| round | % weights remaining | % MACs remaining | ticket acc (early stop) | early-stop iter | ticket acc (end) |"
    header += "".join(f" {name} acc (early stop) |" for name in controls)
    header += " compute to this ticket (TFLOPs, dense-equiv.) | early-bird step |"
    lines = [header, "|" + "---|" * (8 + len(controls))]
    for entry in rounds:
        macs = entry.get("macs_remaining")
        row = (f"| {entry['round']} | {entry['weights_remaining'] * 100:.2f} | "
               f"{'–' if macs is None else f'{macs * 100:.2f}'} | "
               f"{entry['early_stop_test_accuracy'] * 100:.2f} | {entry['early_stop_iteration']} | "
               f"{entry['test_accuracy'] * 100:.2f} |")
        for name in controls:
            control = entry.get("controls", {}).get(name)
            row += f" {control['early_stop_test_accuracy'] * 100:.2f} |" if control else " – |"
        compute = entry.get("compute_to_ticket")
        row += f" {compute['flops'] / 1e12:.2f} |" if compute else " – |"
        row += f" {entry.get('early_bird_step') or '–'} |"
        lines.append(row)
    return lines


def _layer_table(run_dir: Path, rounds: list[dict]) -> list[str]:
    reports = {entry["round"]: load_json(paths.round_dir(run_dir, entry["round"]) / paths.SPARSITY)
               for entry in rounds if (paths.round_dir(run_dir, entry["round"]) / paths.SPARSITY).exists()}
    if not reports:
        return []
    shown = sorted(reports)
    layers = reports[shown[0]]["layers"]
    lines = ["| layer | shape | weights |" + "".join(f" r{r} |" for r in shown),
             "|---|---|---|" + "---|" * len(shown)]
    for i, layer in enumerate(layers):
        cells = "".join(f" {reports[r]['layers'][i]['fraction_remaining'] * 100:.1f}% |" for r in shown)
        lines.append(f"| {layer['name']} | {'×'.join(map(str, layer['shape']))} | {layer['total']:,} |{cells}")
    return lines


def _percent(value) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def plot_compute(rounds: list[dict], path: Path, title: str) -> bool:
    """Ticket accuracy against the compute that produced it (``compute_to_ticket``); False without data."""
    points = [(e["compute_to_ticket"]["flops"], e["early_stop_test_accuracy"]) for e in rounds if "compute_to_ticket" in e]
    if not points:
        return False
    figure = Figure(figsize=(6.4, 4.2))
    axis = figure.subplots()
    axis.plot([x / 1e12 for x, _ in points], [y * 100 for _, y in points], marker="o", color="tab:blue")
    axis.set_xlabel("compute to this ticket (TFLOPs, dense-equivalent: 3 x MACs x batch x iterations)")
    axis.set_ylabel("ticket test accuracy, early stop (%)")
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    _save_figure(figure, path)
    return True


def write_report(run_dir: Path, summary: dict, recipe, sections: Sequence[str] = ()) -> None:
    """``report.md`` and its plots; ``sections``: markdown lines appended by later stages (the pipeline's size
    table), so this module never reads another stage's files."""
    run_dir = Path(run_dir)
    rounds = summary["rounds"]
    title = f"{recipe.name}: {recipe.model.name} on {recipe.data.name}"
    plot_accuracy(rounds, run_dir / ACCURACY_PLOT, title)
    plot_early_stop(rounds, run_dir / EARLY_STOP_PLOT, title)
    compute_plot = [f"![accuracy vs compute]({COMPUTE_PLOT})", ""] if plot_compute(
        rounds, run_dir / COMPUTE_PLOT, title) else []
    ticket = summary["ticket"]
    lines = [
        f"# Lottery-ticket report: {recipe.name}",
        "",
        f"Model `{recipe.model.name}`, data `{recipe.data.name}`, seed {recipe.seed}, "
        f"{recipe.train.iterations:,} iterations per round (batch {recipe.train.batch_size}, "
        f"{recipe.train.optimizer.name} lr {recipe.train.optimizer.lr}), prune {recipe.prune.scope} "
        f"{recipe.prune.method} ({recipe.prune.granularity}), rewind to iteration {recipe.lottery.rewind_to}, "
        f"strategy {recipe.lottery.strategy}, retrain {recipe.lottery.retrain}.",
        "",
        f"**Winning ticket**: round {ticket['round']}, {ticket['weights_remaining'] * 100:.2f}% of weights "
        f"remaining, test accuracy {_percent(ticket.get('test_accuracy'))} with the weights `{paths.TICKET}` and "
        f"the ONNX export hold (the end of the round's training); early-stop test accuracy "
        f"{_percent(ticket['early_stop_test_accuracy'])}. Rule: {ticket['rule']}.",
        "",
        "One rule for accuracy: the headline is the test accuracy of the shipped weights (the end of training); "
        "the early-stop accuracy (minimum validation loss) chose the round and is shown beside it. The tables "
        "give both per round. Controls: `reinit` keeps the mask with a fresh random init; `random_prune` keeps "
        "the per-layer sparsity with a random mask, trained from the rewind point.",
        "",
        f"![accuracy]({ACCURACY_PLOT})",
        "",
        f"![early stop]({EARLY_STOP_PLOT})",
        "",
        *compute_plot,
        "## Rounds",
        "",
        *_round_table(rounds),
        "",
        "## Per-layer weights remaining",
        "",
        *_layer_table(run_dir, rounds),
        "",
        *sections,
    ]
    save_text("\n".join(lines), run_dir / paths.REPORT)
