"""Deploy runtimes: onnxruntime vs OpenVINO at fp32 / bf16 / int8, dense and ticket, batch 1 and 64.

Per (case, batch) every variant is timed **interleaved** in this process (``measure_interleaved``), one
intra-op thread each (``COMPRESS_THREADS``, default 1): ORT sessions from ``compress.bench.runners.ort_session``
(spinning off), OpenVINO compiled models from ``compress.export.onnx.openvino.compile_onnx`` (one stream,
latency hint). bf16 is OpenVINO's ``INFERENCE_PRECISION_HINT``; the table says what it *ran* as, since a CPU
without bf16 kernels (no AVX512_BF16 / AMX) keeps f32. int8: ``compress.export.quantize_onnx`` (dynamic for
the Linear-only LeNet, static QDQ calibrated on random inputs for the convnet: values do not change kernel
times), the same file in both runtimes. Tickets: LeNet-300-100 at 3.6 % of its weights (magnitude pruning of
random weights: unstructured, so it runs at dense cost) and timm resnet18 compacted to ~50 % of its MACs
(structured, aligned widths; ``structured_cases``). Writes benchmarks/results/runtimes.{md,json}.

    COMPRESS_THREADS=1 nice -n 10 pytest benchmarks/test_runtimes.py --benchmark-only -q
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from structured_cases import ALIGNED, AMOUNTS, Ticket, build

from compress.bench import magnitude_ticket
from compress.bench.report import cpu_model, session_machine
from compress.bench.runners import ort_session
from compress.bench.timing import load_average, measure_interleaved
from compress.export import export_onnx, quantize_onnx
from compress.io import save_json, save_text
from compress.models import create_model
from compress.runtime import set_threads

ov_support = pytest.importorskip("compress.export.onnx.openvino")
RESULTS = Path(os.environ.get("COMPRESS_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
BUDGET_S = float(os.environ.get("COMPRESS_BENCH_BUDGET", "1.5"))  # per variant and (case, batch)
SIDE = 112  # resnet18 input side (batch 64 at 224^2 does not fit the budget on 2 shared cores)
BATCH_SIZES = (1, 64)
VARIANTS = ("ort_fp32", "ort_int8", "openvino_f32", "openvino_bf16", "openvino_int8")
CASES = ("lenet300_100 dense", "lenet300_100 ticket 3.6%", "resnet18 dense", "resnet18 ticket ~50% MACs")
_RECORDS: list[dict] = []
_STATE: dict = {}


def _models(case: str) -> tuple[torch.nn.Module, tuple[int, ...], float]:
    """(model, input shape, MACs or weights remaining) of a case."""
    torch.manual_seed(0)
    if case.startswith("lenet"):
        model = create_model("lenet300_100").eval()
        return (magnitude_ticket(model, 0.036) if "ticket" in case else model), (1, 28, 28), 0.036 if "ticket" in case else 1.0
    ticket = Ticket("timm/resnet18", AMOUNTS[("timm/resnet18", 0.5)][0], ALIGNED, 0.5)
    dense, compacted, facts = build(ticket, SIDE)
    return (compacted if "ticket" in case else dense), (3, SIDE, SIDE), facts["macs_remaining"] if "ticket" in case else 1.0


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    _STATE.setdefault("threads", set_threads(int(os.environ.get("COMPRESS_THREADS", "1"))))
    _STATE.setdefault("load_before", load_average())
    _STATE.setdefault("started", time.time())
    root = tmp_path_factory.mktemp("runtimes")
    built = {}
    for i, case in enumerate(CASES):
        model, shape, remaining = _models(case)
        folder = root / f"case{i}"
        example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
        fp32 = export_onnx(model, folder / "fp32.onnx", example).path
        calibration = torch.randn(64, *shape, generator=torch.Generator().manual_seed(1)).numpy()
        int8 = quantize_onnx(fp32, folder / "int8.onnx", mode="int8", calibration=calibration)
        built[case] = {"fp32": Path(fp32), "int8": folder / "int8.onnx", "int8_mode": int8.mode, "shape": shape,
                       "remaining": remaining}
    return built


def _calls(built: dict, x: np.ndarray, threads: int) -> tuple[dict, dict]:
    """{variant: call} and {variant: the precision it ran at}."""
    calls, ran = {}, {}
    for variant, path in (("ort_fp32", built["fp32"]), ("ort_int8", built["int8"])):
        session = ort_session(path, threads)
        calls[variant] = lambda s=session: s.run(None, {s.get_inputs()[0].name: x})[0]
        ran[variant] = "fp32" if variant == "ort_fp32" else built["int8_mode"]
    for variant, path, precision in (("openvino_f32", built["fp32"], "f32"), ("openvino_bf16", built["fp32"], "bf16"),
                                     ("openvino_int8", built["int8"], "f32")):
        compiled = ov_support.compile_onnx(path, precision, threads)
        request = compiled.create_infer_request()

        def call(r=request):
            r.infer({0: x})
            return r.get_output_tensor(0).data

        calls[variant] = call
        ran[variant] = built["int8_mode"] if "int8" in variant else ov_support.inference_precision(compiled)
    return calls, ran


@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("case", CASES)
def test_runtimes(benchmark, files, case, batch):
    built, threads = files[case], _STATE["threads"]
    x = np.ascontiguousarray(torch.randn(batch, *built["shape"], generator=torch.Generator().manual_seed(batch)).numpy())
    calls, ran = _calls(built, x, threads)
    reference = calls["ort_fp32"]()
    for variant, call in calls.items():  # every variant runs and agrees with fp32 on most argmaxes
        out = np.asarray(call())
        assert out.shape == reference.shape and np.isfinite(out).all(), variant
    timings = measure_interleaved(calls, rounds=3, warmup=3, min_repeats=6, budget_s=BUDGET_S)
    base = timings["ort_fp32"].median_ms
    for variant, timing in timings.items():
        _RECORDS.append({"case": case, "batch_size": batch, "variant": variant, "ran_as": ran[variant],
                         **timing.to_dict(), "speedup_vs_ort_fp32": round(base / timing.median_ms, 3),
                         "remaining": built["remaining"], "threads": threads})
    benchmark.group = f"{case} batch={batch}"
    benchmark.extra_info.update({"interleaved_ms": {k: t.median_ms for k, t in timings.items()}, "ran_as": ran})
    benchmark.pedantic(calls["openvino_bf16"], rounds=5, iterations=1, warmup_rounds=1)


def teardown_module() -> None:
    if not _RECORDS:
        return
    machine = session_machine(_STATE["threads"], _STATE["load_before"], _STATE["started"])
    machine["openvino"] = _openvino_version()
    machine["openvino_cpu_capabilities"] = ov_support.cpu_capabilities()
    RESULTS.mkdir(parents=True, exist_ok=True)
    save_json({"machine": machine, "records": _RECORDS}, RESULTS / "runtimes.json")
    save_text(markdown(machine, _RECORDS), RESULTS / "runtimes.md")


def _openvino_version() -> str:
    import openvino

    return openvino.__version__.split("-")[0]


def markdown(machine: dict, records: list[dict]) -> str:
    by = {(r["case"], r["batch_size"], r["variant"]): r for r in records}
    flags = machine["cpu_flags"]
    bf16 = [f for f in flags if "bf16" in f or f.startswith("amx")]
    load = " / ".join(f"{v:.2f}" for v in machine["load_before"] or ())
    after = " / ".join(f"{v:.2f}" for v in machine["load_after"] or ())
    lines = [
        "# Deploy runtimes: onnxruntime vs OpenVINO, fp32 / bf16 / int8", "",
        "Generated by `benchmarks/test_runtimes.py` (do not edit by hand). Command: "
        "`COMPRESS_THREADS=1 nice -n 10 pytest benchmarks/test_runtimes.py --benchmark-only -q`.", "",
        f"Machine: {cpu_model()}, {machine['logical_cores']} logical cores, shared with other jobs: load average "
        f"(1/5/15 min) {load} before, {after} after; session {machine['wall_s']} s. onnxruntime "
        f"{machine['onnxruntime']}, OpenVINO {machine['openvino']}, torch {machine['torch']}; "
        f"{machine['threads']} intra-op thread(s).",
        f"CPU vector extensions: {', '.join(flags) or 'none reported'}. **bf16 / AMX: "
        f"{', '.join(bf16) if bf16 else 'none'}**; OpenVINO's CPU plugin reports "
        f"{', '.join(machine['openvino_cpu_capabilities'])}.", "",
        "Median ms per call (interleaved, 3 rounds), and × = ORT fp32 median / this median (> 1: faster). "
        "*ran as*: the precision OpenVINO reports after compiling (bf16 asked on a CPU without bf16 kernels "
        "runs f32) and the int8 mode.", "",
        "| case | batch | ORT fp32 | ORT int8 | OpenVINO f32 | OpenVINO bf16 (ran as) | OpenVINO int8 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    cases = list(dict.fromkeys(r["case"] for r in records))
    for case in cases:
        for batch in sorted({r["batch_size"] for r in records if r["case"] == case}):
            cells = []
            for variant in VARIANTS:
                r = by.get((case, batch, variant))
                if r is None:
                    cells.append("–")
                    continue
                text = f"{r['median_ms']:.4g}" + ("" if variant == "ort_fp32" else f" ({r['speedup_vs_ort_fp32']:.2f}×)")
                if variant == "openvino_bf16":
                    text += f" [{r['ran_as']}]"
                if variant.endswith("int8"):
                    text += f" [{r['ran_as'].removeprefix('int8-')}]"
                cells.append(text)
            lines.append(f"| {case} | {batch} | " + " | ".join(cells) + " |")
    lines += ["", "Raw numbers: `runtimes.json`.", ""]
    return "\n".join(lines)
