"""Tables, plots, one JSON per experiment and README.md of the reproduction, all from the run dirs.

Nothing here is typed in by hand except the paper's reference claims (``PAPER``); a hand-written
``discussion.md`` in the results folder, when present, is copied into README.md verbatim.
"""

from __future__ import annotations

import io
import json
import os
import platform
import sys
from pathlib import Path

import matplotlib.ticker
from matplotlib.figure import Figure

from compress import paths
from compress.io import load_json, save_bytes, save_json, save_text
from compress.reproduce.aggregate import KINDS, aggregate_experiment, kept_summary
from compress.reproduce.experiment import Experiment, run_dir
from compress.reproduce.suite import INVOCATIONS, invocations

DEFAULT_OUT = {"full": Path("benchmarks/results/reproduction"), "long": Path("benchmarks/results/reproduction/long"),
               "smoke": Path("runs/reproduction-smoke/results"),
               "methods": Path("benchmarks/results/reproduction/methods")}
DISCUSSION = "discussion.md"
SUMMARIES = "summaries"  # the per-run summary.json copies, beside the results
# how each suite is meant to be run (the long one: one process, seeds round by round, for a deadline)
COMMAND_FLAGS = {"long": "--jobs 1 --interleave"}
STYLE = {"dense": ("black", None), "ticket": ("tab:blue", "o"), "reinit": ("tab:orange", "s"),
         "random_prune": ("tab:green", "^")}


def default_paths(suite_name: str, out: str | None, runs: str | None) -> tuple[Path, Path]:
    """(results folder, run dirs root) with the suite's defaults filled in."""
    return (Path(out) if out else DEFAULT_OUT.get(suite_name, Path(f"runs/reproduction-{suite_name}/results")),
            Path(runs) if runs else Path(f"runs/reproduction-{suite_name}"))


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": affinity, "torch": torch.__version__, "python": sys.version.split()[0],
            "platform": platform.platform()}


# -- numbers as text ---------------------------------------------------------------------------------
def _pm(stat: dict | None, scale: float = 100.0, digits: int = 2) -> str:
    if stat is None:
        return "–"
    mean = f"{stat['mean'] * scale:.{digits}f}"
    return mean if stat.get("std") is None else f"{mean} ± {stat['std'] * scale:.{digits}f}"


def _it(stat: dict | None) -> str:
    return _pm(stat, scale=1.0, digits=0)


def _stat_of(row: dict, kind: str) -> dict:
    """Round 0 is the dense network: it stands in for the ticket column there."""
    return row.get(kind) or (row.get("dense") if kind == "ticket" else None) or {}


def _present(rounds: list[dict]) -> list[str]:
    return [kind for kind in KINDS if any(kind in row for row in rounds)]


def accuracy_table(result: dict) -> str:
    """Early-stop test accuracy (%), mean ± std over seeds, and the paired ticket − reinit gap."""
    rounds = result["rounds"]
    kinds = [k for k in _present(rounds) if k != "dense"]
    gaps = {g["round"]: g for g in result["gaps"]["ticket_minus_reinit"]}
    over_dense = {g["round"]: g for g in result["gaps"]["ticket_minus_dense"]}
    header = ["round", "% remaining", "seeds", "dense / ticket", *[k for k in kinds if k != "ticket"]]
    header.append("ticket − dense (points)")
    if gaps:
        header.append("ticket − reinit (points)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rounds:
        cells = [str(row["round"]), f"{row['weights_remaining'] * 100:.1f}", str(len(row["seeds"])),
                 _pm(row.get("dense") or row.get("ticket"))]
        cells += [_pm(row.get(k)) for k in kinds if k != "ticket"]
        cells.append(_pm(over_dense.get(row["round"])) if row["round"] > 0 else "–")
        if gaps:
            cells.append(_pm(gaps.get(row["round"])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _stop(stat: dict) -> str:
    """Early-stop iteration, mean ± std, with how many seeds stopped at the budget's end (censored)."""
    text = _it(stat.get("early_stop_iteration"))
    censored = stat.get("censored")
    if censored:
        text += f" [c {censored}/{len(stat['values'])}]"
    return text


CENSORED_NOTE = ("[c k/n]: k of the n seeds stopped at the last evaluation, the budget's end: censored, their "
                 "lowest validation loss may lie later")


def detail_table(result: dict) -> str:
    """Early-stop iteration (censored seeds flagged) and end-of-training test accuracy, per kind."""
    rounds = result["rounds"]
    kinds = [k for k in _present(rounds) if k != "dense"]
    header = ["round", "% remaining", *[f"early stop it. {k}" for k in kinds],
              *[f"end acc. {k}" for k in kinds]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rounds:
        cells = [str(row["round"]), f"{row['weights_remaining'] * 100:.1f}"]
        cells += [_stop(_stat_of(row, k)) for k in kinds]
        cells += [_pm(_stat_of(row, k).get("test_accuracy")) for k in kinds]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- plots -------------------------------------------------------------------------------------------
def _series(rounds: list[dict], kind: str, key: str | None) -> tuple[list, list, list]:
    xs, ys, errors = [], [], []
    for row in rounds:
        stat = _stat_of(row, kind)
        if not stat:
            continue
        value = stat if key is None else stat[key]
        xs.append(row["weights_remaining"] * 100)
        ys.append(value["mean"])
        errors.append(value["std"] or 0.0)
    return xs, ys, errors


def _axis_style(axis, ylabel: str, rounds: list[dict]) -> None:
    axis.set_xscale("log")
    # The paper labels the log axis with the levels actually reached, not decades.
    ticks = [row["weights_remaining"] * 100 for row in rounds][::max(1, len(rounds) // 8)]
    axis.set_xticks(ticks, [f"{t:.3g}" for t in ticks], fontsize=7)
    axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    axis.invert_xaxis()
    axis.set_xlabel("% of weights remaining (log)")
    axis.set_ylabel(ylabel)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=7)


def _save(figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    save_bytes(buffer.getvalue(), path)


def plot_experiment(result: dict, out: Path) -> list[str]:
    """The paper's Figure 4 style: accuracy and early-stop iteration vs % remaining (log), ± std bars."""
    rounds = result["rounds"]
    if not rounds:
        return []
    kinds = [k for k in _present(rounds) if k != "dense"]
    names = []
    figure = Figure(figsize=(11, 4.2))  # no pyplot: a notebook's backend is never switched
    axes = figure.subplots(1, 2, sharey=True)
    for axis, key, label in ((axes[0], None, "early-stop test accuracy (%)"),
                             (axes[1], "test_accuracy", "end-of-training test accuracy (%)")):
        for kind in kinds:
            xs, ys, errors = _series(rounds, kind, key)
            color, marker = STYLE[kind]
            axis.errorbar(xs, [y * 100 for y in ys], yerr=[e * 100 for e in errors], color=color, marker=marker,
                          capsize=3, label=kind)
        if "dense" in rounds[0]:
            dense = rounds[0]["dense"] if key is None else rounds[0]["dense"][key]
            axis.axhline(dense["mean"] * 100, color="black", linestyle=":", label="dense")
        _axis_style(axis, label, rounds)
    figure.suptitle(f"{result['title']} — seeds {result['seeds']}", fontsize=10)
    names.append(f"{result['experiment']}_accuracy.png")
    _save(figure, out / names[-1])

    figure = Figure(figsize=(6.4, 4.2))
    axis = figure.subplots()
    for kind in kinds:
        xs, ys, errors = _series(rounds, kind, "early_stop_iteration")
        color, marker = STYLE[kind]
        axis.errorbar(xs, ys, yerr=errors, color=color, marker=marker, capsize=3, label=kind)
    if "dense" in rounds[0]:
        axis.axhline(rounds[0]["dense"]["early_stop_iteration"]["mean"], color="black", linestyle=":",
                     label="dense")
    if result.get("iterations"):
        axis.axhline(result["iterations"], color="grey", linestyle="--", linewidth=0.8, label="budget (censored)")
    _axis_style(axis, "early-stop iteration (lowest validation loss)", rounds)
    axis.set_title(result["title"], fontsize=10)
    names.append(f"{result['experiment']}_early_stop.png")
    _save(figure, out / names[-1])
    return names


# -- README --------------------------------------------------------------------------------------------
def _headline(result: dict) -> list[str]:
    lines = []
    best = result.get("best_ticket_over_dense")
    if best:
        lines.append(f"- best mean ticket vs dense (paired by seed): {best['ticket_minus_dense'] * 100:+.2f} points "
                     f"at {best['weights_remaining'] * 100:.1f}% remaining (round {best['round']}, "
                     f"{best['seeds']} seed(s))")
    speed = result.get("early_stop_speedup")
    if speed:
        lines.append(f"- earliest mean ticket early stop: iteration {speed['ticket_iteration']:.0f} at "
                     f"{speed['weights_remaining'] * 100:.1f}% remaining vs {speed['dense_iteration']:.0f} dense "
                     f"({speed['speedup']:.2f}x sooner)")
    bar = result.get("bar")
    if bar:
        lines.append(f"- done-when bar ({bar['rule']}): **{'met' if bar['met'] else 'NOT met'}**")
        for check in bar["rounds"]:
            lines.append(f"  - round {check['round']} ({check['weights_remaining'] * 100:.1f}%): ticket − reinit "
                         f"{check['ticket_minus_reinit'] * 100:+.2f}, ticket − dense "
                         f"{check['ticket_minus_dense'] * 100:+.2f} points")
    return lines


def _experiment_section(experiment: Experiment, result: dict, plots: list[str], runs_root: Path) -> str:
    seeds_note = "" if result["seeds"] == result["seeds_planned"] else \
        f" (planned {result['seeds_planned']}: the others have no summary yet)"
    parts = [f"### {result['title']}", "",
             f"- recipe `{result['recipe']}` with {', '.join(f'`{o}`' for o in result['overrides'])}",
             f"- budget: {result['budget']}",
             f"- seeds: {result['seeds']}{seeds_note}; rounds finished per seed: "
             f"{', '.join(f'{seed}: {n}' for seed, n in result['rounds_per_seed'].items())} (dense = round 0)",
             f"- paper: {result['paper']}",
             f"- machine-readable: [`{result['experiment']}.json`]({result['experiment']}.json)",
             *_headline(result), "",
             "Early-stop test accuracy (%), mean ± sample std over seeds; the gap is paired by seed:", "",
             accuracy_table(result), "",
             f"Early-stop iteration (budget {result.get('iterations') or '?'} per training; {CENSORED_NOTE}) and "
             "end-of-training test accuracy (%):", "",
             detail_table(result), ""]
    parts += [f"![{name}]({name})" for name in plots]
    walls = ", ".join(f"seed {seed}: {wall / 60:.1f} min" for seed, wall in result["training_wall_s_per_seed"].items())
    parts += ["", f"Training wall time (sum of the trainings' own timers): {walls or '–'}.", "",
              "Equivalent single-run commands:", "", "```"]
    parts += [experiment.command(seed, runs_root) for seed in experiment.seeds]
    parts += ["```", ""]
    return "\n".join(parts)


def keep_invocations(runs_root: Path, out: Path) -> list[dict]:
    """The suite's invocations (``compress.reproduce.suite.INVOCATIONS``) of the run dirs here and of those kept
    in ``out`` (one record per start time), written back to ``out``: the record travels with the results."""
    merged = {record["started"]: record for record in [*invocations(out), *invocations(runs_root)]}
    records = [merged[started] for started in sorted(merged)]
    if records:
        save_text("".join(json.dumps(record) + "\n" for record in records), Path(out) / INVOCATIONS)
    return records


def _invocation_lines(records: list[dict]) -> list[str]:
    lines = []
    for record in records:
        runs = ", ".join(f"{r['experiment']}/seed{r['seed']} {r['wall_s'] / 60:.1f} min" for r in record["runs"])
        extra = f", runs' controls on {record['run_executor']}" if "run_executor" in record else ""
        if record.get("load_average_start"):
            extra += (f", load average {'/'.join(map(str, record['load_average_start']))} at the start, "
                      f"{'/'.join(map(str, record['load_average_end'] or []))} at the end")
        lines.append(f"- `{' '.join(record['argv'])}` — jobs {record['jobs']}, {record['threads_per_job']} "
                     f"thread(s) per job{extra}, wall {record['wall_s'] / 60:.1f} min ({runs})")
    return lines or ["- (no invocation recorded yet)"]


def _machine_line(info: dict) -> str:
    return (f"CPU: {info['cpu']}, {info['cores']} cores available; torch {info['torch']}, "
            f"Python {info['python']}; {info['platform']}")


def _machine_of_runs(out: Path, name: str, seeds: list[int], runs_root: Path) -> dict | None:
    """The machine recorded with this experiment's results, kept while its runs are unchanged.

    Regenerating the tables on another machine (after adding an experiment, say) must not relabel runs
    that were trained elsewhere: the summaries copied beside the results tell whether the runs changed."""
    try:
        recorded = load_json(out / f"{name}.json").get("machine")
        for seed in seeds:
            source = run_dir(runs_root, name, seed) / paths.SUMMARY
            # no run dir here: the kept copy is what was aggregated, trained where it was recorded
            if source.exists() and load_json(kept_summary(out / SUMMARIES, name, seed)) != load_json(source):
                return None
    except (OSError, ValueError, AttributeError):
        return None
    return recorded if isinstance(recorded, dict) and "cpu" in recorded else None


def keep_summaries(experiment: Experiment, seeds: list[int], runs_root: Path, kept: Path) -> None:
    """Copy the seeds' run-dir summaries beside the results: the aggregate can be re-checked, and a suite that
    spans machines resumes from them (``compress.reproduce.suite.finished_elsewhere``)."""
    for seed in seeds:
        source = run_dir(runs_root, experiment.name, seed) / paths.SUMMARY
        if source.exists():  # absent: the kept copy is already the source
            save_bytes(source.read_bytes(), kept_summary(kept, experiment.name, seed))


def write_results(experiments: list[Experiment], runs_root: Path, out: Path, suite_name: str) -> Path:
    """Aggregate every experiment that has run dirs; write JSON, plots and README.md to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    sections = []
    machines: dict[str, list[str]] = {}
    for experiment in experiments:
        result = aggregate_experiment(experiment, runs_root, out / SUMMARIES)
        if not result["seeds"]:
            sections.append(f"### {experiment.title}\n\nNot run yet (no summary under "
                            f"`{run_dir(runs_root, experiment.name, experiment.seeds[0]).parent}`).\n")
            continue
        result["machine"] = _machine_of_runs(out, experiment.name, result["seeds"], runs_root) or info
        machines.setdefault(_machine_line(result["machine"]), []).append(experiment.name)
        save_json(result, out / f"{experiment.name}.json")
        keep_summaries(experiment, result["seeds"], runs_root, out / SUMMARIES)
        sections.append(_experiment_section(experiment, result, plot_experiment(result, out), runs_root))
    discussion = out / DISCUSSION
    text = [f"# Lottery-ticket reproduction ({suite_name} suite)", "",
            "Generated by `python tools/reproduce.py` from the run dirs' `summary.json`: do not edit by hand "
            f"(hand-written text lives in `{DISCUSSION}` and is copied in below).", "",
            "## Machine", "",
            *([f"- {line} (ran {', '.join(names)})" for line, names in machines.items()]
              or [f"- {_machine_line(info)}"]), "",
            "## Commands and wall times", "", f"- `python tools/reproduce.py --suite {suite_name} {COMMAND_FLAGS.get(suite_name, '--jobs 2')}` "
            "(reruns resume: finished rounds are skipped)", *_invocation_lines(keep_invocations(runs_root, out)), ""]
    if discussion.exists():
        text += ["## Comparison with the paper", "", discussion.read_text().strip(), ""]
    text += ["## Results", "", *sections]
    save_text("\n".join(text), out / "README.md")
    return out
