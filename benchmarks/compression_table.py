#!/usr/bin/env python
"""Shipped size and accuracy of real tickets: the evidence in benchmarks/results/compression/.

    python benchmarks/compression_table.py --run /tmp/h2/lenet --run /tmp/h2/conv2 \
        [--work /tmp/h2/compression] [--out benchmarks/results/compression]

For each finished run dir (``tools/find_ticket.py``, exported: ``ticket.onnx``; exported here when missing):
the size table (``compress.export.artifact.sizes.size_rows``: dense fp32, fp32 raw / gzip, int8 raw / gzip, both
artifacts), each artifact unpacked again (file bytes and onnxruntime outputs on 1,000 test images compared
with the file that was packed), and the **full test set** accuracy through onnxruntime from raw images
(``compress.export.onnx.accuracy.onnx_test_accuracy``, ``data.test_subset`` dropped) of the fp32 ticket, the int8
ticket and the int8 ticket, each measured on the file restored from its artifact (byte-identical to the file
packed, checked, so the test set runs once per model). Writes ``README.md`` and ``compression.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from compress.cli import run_cli

REPO = Path(__file__).resolve().parents[1]

RATIO_GOAL = 40.0  # Deep Compression's LeNet-300-100: 1070 KB -> 27 KB
TOLERANCE = {"lenet300_100": 0.003, "conv2": 0.005}  # accuracy points (fractions) vs the fp32 ticket


def _outputs_identical(source: Path, restored: Path, config, seed: int, meta: dict) -> bool:
    from compress.export.onnx.accuracy import raw_test_batches
    from compress.export.onnx.preprocess import apply_preprocess
    from compress.export.onnx.verify import session

    images, _ = next(raw_test_batches(config, seed, limit=1000))
    x = apply_preprocess(images, meta)
    a, b = session(source.read_bytes()), session(restored.read_bytes())
    name = a.get_inputs()[0].name
    return all(np.array_equal(p, q) for p, q in zip(a.run(None, {name: x}), b.run(None, {name: x}), strict=True))


def measure_run(run_dir: Path, work: Path) -> dict:
    from compress.export.artifact.files import unpack_onnx
    from compress.export.artifact.sizes import RUN_INT8, size_rows
    from compress.export.onnx.accuracy import onnx_test_accuracy
    from compress.export.onnx.preprocess import read_metadata
    from compress.io import load_json
    from compress.pipeline import export_run
    from compress.recipe import load_recipe

    recipe = load_recipe(run_dir / "recipe.yaml")
    summary = load_json(run_dir / "summary.json")
    fp32 = run_dir / "ticket.onnx"
    if not fp32.is_file():
        export_run(run_dir)
    work.mkdir(parents=True, exist_ok=True)
    int8 = run_dir / RUN_INT8
    started = time.perf_counter()
    rows = size_rows(fp32, work, int8_onnx=int8 if int8.is_file() else None)
    sizes_s = time.perf_counter() - started
    by = {row["what"]: row for row in rows}
    full = dataclasses.replace(recipe.data, test_subset=None)  # the whole test set, whatever the run used
    meta = read_metadata(fp32.read_bytes())
    accuracy, identical, unpack_s = {}, {}, {}
    sources = {"fp32": fp32, "int8": Path(by["int8 ticket, raw"]["file"])}
    for kind, source in sources.items():
        packed = Path(by[f"artifact, {kind} values"]["file"])
        restored = work / f"{packed.stem}.restored.onnx"
        started = time.perf_counter()
        unpack_onnx(packed, restored)
        unpack_s[kind] = time.perf_counter() - started
        identical[kind] = {"file_bytes": restored.read_bytes() == source.read_bytes(),
                           "ort_outputs": _outputs_identical(source, restored, full, recipe.seed, meta)}
        # what ships is the restored file; the one packed is byte-identical (checked above), so the test set
        # (10,000 JPEG decodes for CIFAR-10) runs once per model, on the restored file
        accuracy[f"{kind} artifact (restored) = {kind} ONNX"] = onnx_test_accuracy(restored, full, seed=recipe.seed,
                                                                                 preprocess=meta)
    rounds = {entry["round"]: entry for entry in summary["rounds"]}
    ticket = summary["ticket"]
    model = recipe.model.name
    ratio = by["artifact, int8 values"]["ratio"]
    drop = accuracy["fp32 artifact (restored) = fp32 ONNX"] - accuracy["int8 artifact (restored) = int8 ONNX"]
    return {
        "run_dir": str(run_dir), "name": recipe.name, "model": model, "dataset": recipe.data.name,
        "iterations": recipe.train.iterations, "rounds": recipe.lottery.rounds,
        "optimizer": f"{recipe.train.optimizer.name} lr {recipe.train.optimizer.lr:g}",
        "rates": dict(recipe.prune.rates), "test_subset_in_run": recipe.data.test_subset,
        "ticket_round": ticket["round"], "weights_remaining": ticket["weights_remaining"],
        "ticket_rule": ticket["rule"],
        "run_accuracy": {"dense (round 0), early stop": rounds[0]["early_stop_test_accuracy"],
                         "ticket, early stop": rounds[ticket["round"]]["early_stop_test_accuracy"],
                         "ticket, end of training (ticket.pt)": rounds[ticket["round"]]["test_accuracy"],
                         "dense val, early stop": rounds[0]["early_stop_val_accuracy"],
                         "ticket val, early stop": rounds[ticket["round"]]["early_stop_val_accuracy"]},
        "rows": rows, "full_test_accuracy": accuracy, "identical": identical,
        "seconds": {"size_rows (quantize + gzip + pack both)": sizes_s, **{f"unpack {k}": v for k, v in unpack_s.items()}},
        "done_when": {"int8 artifact >= 40x smaller than dense fp32": ratio >= RATIO_GOAL,
                      f"int8 artifact accuracy within {TOLERANCE.get(model, 0.005) * 100:.1f} points of fp32 ticket":
                          abs(drop) <= TOLERANCE.get(model, 0.005) + 1e-12,
                      "restored ONNX files identical (bytes and outputs)":
                          all(all(v.values()) for v in identical.values())},
    }


def _pct(x: float) -> str:
    return f"{x * 100:.2f}%"


def render(results: list[dict], machine: dict, command: str) -> str:
    from compress.export.artifact.pack import CODEC
    from compress.export.artifact.sizes import DEEP_COMPRESSION, size_table_markdown

    lines = ["# Shipping a ticket: compressed size and accuracy", "",
             f"Generated by `{command}` (do not edit by hand). Machine: {machine['cpu']}, "
             f"{machine['logical_cores']} logical cores ({', '.join(machine['vector_extensions'])}); onnxruntime {machine['onnxruntime']}, torch {machine['torch']}.",
             "",
             "Artifact (`compress.export.artifact.pack`, `tools/pack_ticket.py`): per tensor the smallest of bitmap, "
             f"gap-coded positions (LEB128 varint or fixed width) or dense, the kept values in the tensor's own dtype, "
             f"every stream {CODEC}. It restores the ONNX file **bit-exact** (checked below). Int8: onnxruntime "
             "quantization with per-channel symmetric int8 weights (the export's `ticket.int8.onnx` when it made one, "
             "else dynamic quantization), so every pruned weight stays exactly 0. Accuracy: the **full test set** "
             "through onnxruntime from raw images, preprocessed as the file's metadata says.", "",
             "## Deep Compression for comparison", "",
             "| network (Han, Mao & Dally, ICLR 2016, Table 1) | dense | compressed | × |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {dense} | {small} | {ratio}× |" for name, dense, small, ratio in DEEP_COMPRESSION]
    lines += ["", "Deep Compression prunes, then shares weights (k-means, 4-8 bit indices) and Huffman-codes; "
              "here: lottery-ticket pruning, int8 quantization (no weight sharing) and lzma.", ""]
    for result in results:
        acc = result["full_test_accuracy"]
        run = result["run_accuracy"]
        lines += [f"## {result['model']} on {result['dataset']}: ticket at {_pct(result['weights_remaining'])} "
                  f"of weights (round {result['ticket_round']})", "",
                  f"Run: `{result['name']}`, {result['iterations']:,} iterations per round ({result['optimizer']}), "
                  f"{result['rounds']} rounds, "
                  f"layer-wise rates {result['rates']}. Ticket rule: {result['ticket_rule']}.", "",
                  size_table_markdown(result["rows"]), "",
                  "| accuracy (full test set, onnxruntime, raw images) | top-1 | vs fp32 ticket |", "|---|---:|---:|"]
        base = acc["fp32 artifact (restored) = fp32 ONNX"]
        lines += [f"| {what} | {_pct(value)} | {(value - base) * 100:+.2f} pts |" for what, value in acc.items()]
        subset = result["test_subset_in_run"]
        lines += ["", f"The run itself ({'a seeded ' + format(subset, ',') + '-image test subset' if subset else 'full test set'}"
                  f", torch): dense {_pct(run['dense (round 0), early stop'])} and ticket "
                  f"{_pct(run['ticket, early stop'])} at early stop (validation {_pct(run['dense val, early stop'])} "
                  f"vs {_pct(run['ticket val, early stop'])}); `ticket.pt` holds the end-of-training weights "
                  f"({_pct(run['ticket, end of training (ticket.pt)'])}), which the ONNX files export.", "",
                  "Restored from the artifacts: " + "; ".join(
                      f"{kind} file bytes identical {v['file_bytes']}, onnxruntime outputs identical on 1,000 test "
                      f"images {v['ort_outputs']}" for kind, v in result["identical"].items()) + ".", "",
                  "Done when: " + "; ".join(f"{k}: **{'yes' if v else 'NO'}**" for k, v in result["done_when"].items())
                  + ".", "",
                  "Seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result["seconds"].items()) + ".", ""]
    return "\n".join(lines)


def _vector_extensions() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(flag for flag in flags if flag.startswith(("avx", "sse4", "fma", "amx")))
    except OSError:
        pass
    return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="DIR", help="finished run dir (repeat)")
    parser.add_argument("--work", default="/tmp/compression_table", help="scratch folder for int8 files and artifacts")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "compression"))
    args = parser.parse_args()

    from compress.bench.report import machine_info
    from compress.io import save_json, save_text

    results = [measure_run(Path(run), Path(args.work) / Path(run).name) for run in args.run]
    machine = machine_info(threads=1)
    machine["vector_extensions"] = _vector_extensions()
    command = "python benchmarks/compression_table.py " + " ".join(f"--run {r}" for r in args.run)
    out = Path(args.out)
    for result in results:  # scratch paths mean nothing in the repository
        for row in result["rows"]:
            row["file"] = Path(row["file"]).name if row["file"] else None
    save_json({"machine": machine, "command": command, "results": results}, out / "compression.json")
    save_text(render(results, machine, command), out / "README.md")
    print(json.dumps([{"model": r["model"], "done_when": r["done_when"], "accuracy": r["full_test_accuracy"],
                       "int8_artifact": next(row for row in r["rows"] if row["what"] == "artifact, int8 values")}
                      for r in results], indent=1))
    return 0


if __name__ == "__main__":
    run_cli(main)
