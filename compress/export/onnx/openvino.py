"""OpenVINO (pip ``openvino``, the ``openvino`` extra) as an inference runtime for exported tickets.

Two precisions: ``f32`` and ``bf16`` (OpenVINO's ``INFERENCE_PRECISION_HINT``). bf16 runs bf16 kernels only
on CPUs that have them (AVX512_BF16 or AMX); elsewhere OpenVINO quietly keeps f32, so every backend records
the precision the compiled model reports (``info["inference_precision"]``), never the one asked for.
bf16 changes outputs (8 bits of mantissa): it is a *reduced precision* -- ``auto`` admits it only when its
accuracy on labelled data stays within a stated tolerance of fp32 (``compress.bench.auto``).
"""

from __future__ import annotations

from pathlib import Path

from compress.errors import UserError

PRECISIONS = ("f32", "bf16")


def available() -> str | None:
    """None when OpenVINO can run here, else why not (one line)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "openvino is not installed (pip install openvino, or pip install -e '.[openvino]')"
    return None


def _core():
    reason = available()
    if reason is not None:
        raise UserError(reason)
    import openvino as ov

    return ov.Core()


def cpu_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin says it can do here (``FP32``, ``BF16``, ``INT8``, ...)."""
    return list(_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def compile_onnx(path: str | Path, precision: str = "f32", threads: int = 1):
    """An OpenVINO CPU compiled model of the ONNX file, latency-oriented (one stream, ``threads`` threads)."""
    if precision not in PRECISIONS:
        raise UserError(f"openvino precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    core = _core()
    config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": int(threads),
              "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}
    try:
        return core.compile_model(str(path), "CPU", config)
    except RuntimeError as error:
        text = str(error).strip()
        raise UserError(f"{path}: OpenVINO cannot compile it ({text.splitlines()[0] if text else 'no reason'})"
                        ) from error


def inference_precision(compiled) -> str:
    """The precision the compiled model runs at (``f32`` / ``bf16``), as OpenVINO reports it."""
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    name = str(getattr(value, "type_name", value)).lower()
    return {"float32": "f32", "f32": "f32", "bfloat16": "bf16", "bf16": "bf16", "float16": "f16"}.get(name, name)
