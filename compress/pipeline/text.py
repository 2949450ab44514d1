"""What the tools print: the end of a run (``format_summary``) and an export (``format_report``), in a few lines."""

from __future__ import annotations

from pathlib import Path

from compress import paths


def _percent(value) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def format_summary(summary: dict) -> str:
    """What ``find_ticket.py`` prints at the end: the answer, in a few lines (the JSON is in the run dir)."""
    rounds = {entry["round"]: entry for entry in summary["rounds"]}
    ticket = summary["ticket"]
    chosen, dense = rounds[ticket["round"]], rounds[0]
    run_dir = Path(summary["run_dir"])
    shipped, dense_final = chosen.get("test_accuracy"), dense.get("test_accuracy")
    lines = [f"winning ticket: round {ticket['round']}, {ticket['weights_remaining'] * 100:.2f}% of weights left, "
             f"test accuracy {_percent(shipped)} vs dense {_percent(dense_final)} (the shipped weights: end of "
             f"training); early stop {chosen['early_stop_test_accuracy'] * 100:.2f}% vs "
             f"{dense['early_stop_test_accuracy'] * 100:.2f}%",
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


def format_report(result: dict) -> str:
    """The lines ``tools/export_onnx.py`` prints."""
    sizes = result["sizes"]
    zeros = result["zeros"]
    pruned = sum(entry["pruned"] for entry in zeros.values())
    lines = [
        f"exported {result.get('source', 'model')} -> {result['path']} (opset {result['opset']})",
        f"verified on {result['inputs']}",
        f"max |ORT - torch| = {result['max_abs_diff']:.3g} (<= {result['tolerance']:g}) OK",
        f"zero counts OK: {len(zeros)} pruned parameters, {pruned:,} pruned weights, all exact zeros in ONNX",
        "size: raw {} | gzip {} | sparse initializers {} | bitmask limit {}".format(
            *(_size(sizes[key]) for key in ("raw", "gzip", "sparse", "bitmask"))),
        f"params {result['params']:,} ({result['nonzero_params']:,} nonzero), MACs {result['macs']:,} "
        f"({result['nonzero_macs']:,} nonzero) per example",
    ]
    compact = result.get("compact")
    if compact:
        lines += [
            f"compacted -> {compact['path']}: max |ORT - torch| = {compact['max_abs_diff']:.3g}, "
            f"torch compacted vs original {compact['torch_max_abs_diff']:.3g}",
            f"  params {compact['params_before']:,} -> {compact['params_after']:,}, "
            f"MACs {compact['macs_before']:,} -> {compact['macs_after']:,}, "
            f"file {_size(compact['size_before'])} -> {_size(compact['size_after'])}",
            "  units: " + ", ".join(f"{u['layer']}:{u['before']}->{u['after']}" for u in compact["units"]),
        ]
        if compact["kept_constant_units"]:
            lines.append(f"  kept {compact['kept_constant_units']} constant unit(s): constant channels into a "
                         "zero-padded conv cannot become a bias, so each layer's merge into one carrier")
    pre = result.get("preprocess")
    if pre:
        lines.append(f"preprocessing ({pre['compress.preprocess']}): mean {pre['mean']} std {pre['std']}, "
                     f"input {pre['input_range']}")
    accuracy = result.get("accuracy")
    if accuracy:
        lines.append(f"test accuracy ({accuracy['test_examples']:,} examples): torch {accuracy['torch_ticket']:.2%}, "
                     f"onnxruntime from raw images {accuracy['onnx_raw_images']:.2%}")
    int8 = result.get("int8")
    if int8:
        lines.append(f"int8 ({int8['mode']}) -> {int8['path']}: pruned zeros kept in "
                     f"{len(int8['zeros'])} parameters, zero points 0")
        if "accuracy_int8" in int8:
            lines.append(f"  accuracy fp32 {int8['accuracy_fp32']:.2%} | int8 {int8['accuracy_int8']:.2%}"
                         + (" (after QAT)" if int8["qat"]["ran"] else ""))
    if "report" in result:
        lines.append(f"report: {result['report']}")
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit, scale in (("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"
