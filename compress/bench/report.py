"""Benchmark records -> JSON, a markdown table with the machine described, and a PNG speedup chart."""

from __future__ import annotations

import io
import os
import platform
import time
from pathlib import Path

import torch

from compress.bench.backends import BASELINE
from compress.bench.timing import load_average
from compress.io import save_bytes, save_json, save_text


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def vector_extensions() -> list[str]:
    """The CPU's vector extensions (avx*, fma, amx*; VNNI as avx512_vnni / avx_vnni): they change which
    onnxruntime kernels run (NCHWc block 16 vs 8, fast int8 only with VNNI)."""
    from compress.runtime import cpu_flags

    return sorted(f for f in cpu_flags() if f.startswith(("avx", "fma", "amx")))


def session_machine(threads: int, load_before, started: float) -> dict:
    """``machine_info`` plus what a benchmark session records around itself: vector extensions, the load
    average before and after (the machine may be shared) and the session's wall time."""
    return {**machine_info(threads), "cpu_flags": vector_extensions(), "load_before": load_before,
            "load_after": load_average(), "wall_s": round(time.time() - started, 1)}


def machine_info(threads: int) -> dict:
    """CPU, cores, library versions and the thread count the timings ran with."""
    import numpy as np

    try:
        import onnxruntime as ort

        ort_version = ort.__version__
    except ImportError:
        ort_version = "not installed"
    return {"cpu": cpu_model(), "logical_cores": os.cpu_count(), "threads": threads,
            "torch": torch.__version__, "onnxruntime": ort_version, "numpy": np.__version__,
            "python": platform.python_version(), "mkl": torch.backends.mkl.is_available(),
            "platform": platform.platform()}


def add_speedups(records: list[dict]) -> list[dict]:
    """``speedup_vs_dense_ort`` = dense ORT median / this median, same model and batch size, same run.

    Records that already carry a ratio (the benchmarks pair each backend with its own interleaved dense
    ORT timing) keep it. None where dense ORT was not measured: no ratio without a baseline.
    """
    baseline = {(r["model"], r["batch_size"]): r["median_ms"] for r in records if r["backend"] == BASELINE}
    for record in records:
        if record.get("speedup_vs_dense_ort") is not None:
            continue
        base = baseline.get((record["model"], record["batch_size"]))
        record["speedup_vs_dense_ort"] = round(base / record["median_ms"], 3) if base else None
    return records


PANELS_PER_ROW = 5


def speed_limit(record: dict) -> tuple[float | None, str]:
    """The FLOP limit of a ticket's speedup over dense, and how it is written.

    Weight tickets: 1/(1−s) for weight sparsity s. Channel tickets (``granularity: channel``, compacted):
    1/macs_remaining -- dropping a channel also drops its inputs in the next layer, so the MACs shrink
    faster than the weights.
    """
    if record.get("granularity") == "channel" and record.get("macs_remaining"):
        return 1.0 / record["macs_remaining"], "1/MACs"
    if record["weights_remaining"] > 0:
        return 1.0 / record["weights_remaining"], "1/(1−s)"
    return None, "1/(1−s)"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def markdown_table(records: list[dict]) -> str:
    paired = any("dense_ort_paired_ms" in r for r in records)
    lines = ["| model | weights remaining | MACs remaining | batch | backend | median ms | IQR ms | "
             + ("dense ORT paired ms | " if paired else "") + "samples/s | × dense ORT | auto ran |",
             "|---|---:|---:|---:|---|---:|---:|" + ("---:|" if paired else "") + "---:|---:|---|"]
    for r in records:
        speedup = "n/a" if r.get("speedup_vs_dense_ort") is None else f"{r['speedup_vs_dense_ort']:.2f}×"
        lines.append(f"| {r['model']} | {r['weights_remaining']:.1%} | "
                     f"{'n/a' if r.get('macs_remaining') is None else format(r['macs_remaining'], '.1%')} | "
                     f"{r['batch_size']} | {r['backend']} | {_fmt(r['median_ms'], 4)} | {_fmt(r.get('iqr_ms'), 2)} | "
                     + (f"{_fmt(r.get('dense_ort_paired_ms'), 4)} | " if paired else "")
                     + f"{r['batch_size'] / r['median_ms'] * 1e3:,.0f} | {speedup} | {r.get('auto_ran', '')} |")
    return "\n".join(lines)


def summary_table(records: list[dict]) -> str:
    """Per model and batch size: the fastest backend, its ratio to dense ORT, auto's, and the FLOP limit.

    Call after ``add_speedups``.
    """
    lines = ["| model | batch | fastest backend | × dense ORT | auto × dense ORT | FLOP limit |",
             "|---|---:|---|---:|---:|---:|"]
    groups = dict.fromkeys((r["model"], r["batch_size"]) for r in records)
    for model, batch in groups:
        rows = [r for r in records if r["model"] == model and r["batch_size"] == batch]
        # by the ratio where there is one: the benchmarks pair each backend with its own baseline timing
        best = min(rows, key=lambda r: (-(r.get("speedup_vs_dense_ort") or 0.0), r["median_ms"]))
        auto = next((r for r in rows if r["backend"] == "auto"), None)

        def ratio(row: dict | None) -> str:
            value = None if row is None else row.get("speedup_vs_dense_ort")
            return "n/a" if value is None else f"{value:.2f}×"

        limit, how = speed_limit(best)
        limit_text = "n/a" if limit is None else f"{limit:.3g}× ({how})"
        lines.append(f"| {model} | {batch} | {best['backend']} | {ratio(best)} | {ratio(auto)} | {limit_text} |")
    return "\n".join(lines)


def machine_markdown(machine: dict) -> str:
    load = machine.get("load_before"), machine.get("load_after")
    lines = [f"- CPU: {machine['cpu']}, {machine['logical_cores']} logical cores "
             f"(MKL {'available' if machine.get('mkl') else 'not available'})",
             f"- torch {machine['torch']}, onnxruntime {machine['onnxruntime']}, numpy {machine['numpy']}, "
             f"Python {machine['python']}",
             f"- threads: {machine['threads']} (torch intra-op via compress.runtime.set_threads; ORT "
             "intra_op_num_threads, inter-op 1, spinning off)"]
    if all(v is not None for v in load):
        lines.append(f"- load average (1/5/15 min) before: {' / '.join(f'{v:.2f}' for v in load[0])}, "
                     f"after: {' / '.join(f'{v:.2f}' for v in load[1])}")
    return "\n".join(lines)


def plot_speedups(records: list[dict], path: Path, title: str = "Speedup over dense ONNX Runtime") -> Path | None:
    """Bars: measured speedup per backend and batch size, one panel per model (at most ``PANELS_PER_ROW``
    a row); dashed: the FLOP limit (``speed_limit``)."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: a notebook's backend is never switched

    measured = [r for r in records if r.get("speedup_vs_dense_ort") is not None]
    if not measured:
        return None
    models = list(dict.fromkeys(r["model"] for r in measured))
    backends = list(dict.fromkeys(r["backend"] for r in measured))
    columns_of_panels = min(len(models), PANELS_PER_ROW)
    panel_rows = -(-len(models) // columns_of_panels)
    fig_width = 3.6 * columns_of_panels + 1
    fig = Figure(figsize=(fig_width, 0.4 + 3.8 * panel_rows))
    grid = fig.subplots(panel_rows, columns_of_panels, squeeze=False, sharey=True)
    axes = list(grid.flat)
    for ax in axes[len(models):]:
        ax.set_visible(False)  # the last row's empty slots
    width = 0.8 / len(backends)
    colors = matplotlib.colormaps["tab10"]
    for ax, model in zip(axes, models, strict=False):
        rows = [r for r in measured if r["model"] == model]
        batches = sorted({r["batch_size"] for r in rows})
        for j, backend in enumerate(backends):
            for i, batch in enumerate(batches):
                hit = [r for r in rows if r["backend"] == backend and r["batch_size"] == batch]
                if not hit:
                    continue  # not measured: no bar
                value = hit[0]["speedup_vs_dense_ort"]
                ax.bar(i + (j - (len(backends) - 1) / 2) * width, value, width, color=colors(j),
                       label=backend if i == 0 else None)
                ax.text(i + (j - (len(backends) - 1) / 2) * width, value, f"{value:.2f}", ha="center",
                        va="bottom", fontsize=6, rotation=90)
        limit, how = speed_limit(rows[0])
        if limit:
            ax.axhline(limit, color="gray", linestyle="--", linewidth=1)
            ax.text(len(batches) - 0.5, limit, f"{how} = {limit:.3g}×", ha="right", va="bottom", fontsize=7,
                    color="gray")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        left = (f"{rows[0]['macs_remaining']:.1%} MACs remaining" if how == "1/MACs"
                else f"{rows[0]['weights_remaining']:.1%} weights remaining")
        ax.set_title(f"{model}\n{left}", fontsize=9)
        ax.set_yscale("log")
    for row in grid:
        row[0].set_ylabel("× dense ORT (median latency ratio)")
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    columns = max(1, min(len(labels), int(fig_width / 1.5)))  # legend entries that fit one row
    legend_rows = -(-len(labels) // columns)
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, (0.06 * legend_rows + 0.01) / panel_rows, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    save_bytes(buffer.getvalue(), path)
    return path


def write_results(records: list[dict], out_dir: str | Path, machine: dict, *, stem: str = "sparse_inference",
                  report_name: str = "report.md", title: str = "Sparse inference benchmark",
                  method: str = "", notes: list[str] | None = None,
                  extra_sections: list[tuple[str, str]] | None = None) -> dict[str, Path]:
    """``<stem>.json`` (the records), ``<stem>.machine.json``, ``<report_name>`` and ``<stem>.png`` in ``out_dir``.

    Every file name carries ``stem`` except the report's, so other benchmarks can share the folder.
    ``extra_sections``: (heading, markdown) pairs placed after the summary.
    """
    out = Path(out_dir)
    records = add_speedups(records)
    paths = {"json": out / f"{stem}.json", "machine": out / f"{stem}.machine.json", "report": out / report_name}
    save_json(records, paths["json"])
    save_json(machine, paths["machine"])
    chart = plot_speedups(records, out / f"{stem}.png")
    sections = [f"# {title}", "", "## Machine", "", machine_markdown(machine), ""]
    if method:
        sections += ["## What was measured and how", "", method.strip(), ""]
    sections += ["## Summary", "", summary_table(records), ""]
    for heading, body in extra_sections or []:
        sections += [f"## {heading}", "", body.strip(), ""]
    sections += ["## All results", "", markdown_table(records), ""]
    if chart is not None:
        paths["chart"] = chart
        sections += [f"![speedup over dense ORT]({chart.name})", "",
                     "Bars: measured median-latency ratio to dense ORT (same model, batch size and run); "
                     "dashed: the FLOP limit, 1/(1−s) for weight sparsity s, 1/macs_remaining for a compacted "
                     "channel ticket; no bar where nothing was measured.", ""]
    if notes:
        sections += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    save_text("\n".join(sections), paths["report"])
    return paths
