"""The backend types: a callable ``backend(x) -> Tensor`` over torch, onnxruntime or OpenVINO.

Which backends exist and how each is built for a model is ``compress.bench.backends`` (a registry).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from compress.errors import UserError, first_line

# torch's thread count is process-wide: backends that change it for a call take turns, so that
# concurrent calls (threads of a server sharing one ``auto``) each restore the count they found
_THREADS_LOCK = threading.Lock()


class Backend:
    """A way to run a model: ``backend(x)`` returns the output tensor; ``info`` says what it runs."""

    def __init__(self, name: str, info: dict | None = None) -> None:
        self.name = name
        self.info = info or {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class TorchBackend(Backend):
    """``module`` under ``torch.inference_mode``; ``threads``: run with this many torch threads, not the
    process-wide count (fewer threads can win on small layers: no fork/join per op)."""

    def __init__(self, name: str, module: nn.Module, info: dict | None = None, threads: int | None = None) -> None:
        super().__init__(name, {**(info or {}), **({"threads": threads} if threads else {})})
        module = module.eval()
        while isinstance(module, nn.Sequential) and len(module) == 1:
            module = module[0]  # LeNet as CSR is Sequential(LinearChain): skip a Python call per run
        self.module = module
        self.threads = threads

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.threads is None:
            with torch.inference_mode():
                return self.module(x)
        with _THREADS_LOCK:
            before = torch.get_num_threads()
            torch.set_num_threads(self.threads)  # ~0.1 us; the pool stays, only the team size changes
            try:
                with torch.inference_mode():
                    return self.module(x)
            finally:
                torch.set_num_threads(before)


def ort_session(path: str | Path, threads: int):
    """An onnxruntime CPU session pinned to ``threads`` intra-op threads, thread spinning off.

    Spinning off: an idle session's pool must not burn the cores the backend being timed needs.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OrtBackend(Backend):
    def __init__(self, name: str, path: str | Path, threads: int, info: dict | None = None,
                 reduced_precision: bool = False) -> None:
        super().__init__(name, {"onnx": str(path), "threads": threads, **(info or {})})
        self.reduced_precision = reduced_precision  # an int8 file: judged on accuracy, not on outputs
        self.session = ort_session(path, threads)
        self._input = self.session.get_inputs()[0].name
        self._outputs = [self.session.get_outputs()[0].name]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(self._outputs, {self._input: array})[0])


class OpenVinoBackend(Backend):
    """The ONNX file in OpenVINO on the CPU at ``precision`` (``compress.export.onnx.openvino``); one infer request
    per calling thread. ``info["inference_precision"]`` is what OpenVINO runs, which may differ from the hint."""

    def __init__(self, name: str, path: str | Path, precision: str, threads: int, info: dict | None = None,
                 reduced_precision: bool | None = None) -> None:
        from compress.export.onnx import openvino

        self.compiled = openvino.compile_onnx(path, precision, threads)
        super().__init__(name, {"onnx": str(path), "threads": threads, "precision": precision,
                                "inference_precision": openvino.inference_precision(self.compiled), **(info or {})})
        # outputs differ beyond rounding (bf16, an int8 file): judged on accuracy
        self.reduced_precision = precision != "f32" if reduced_precision is None else reduced_precision
        self._local = threading.local()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        request.infer({0: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})
        return torch.from_numpy(np.array(request.get_output_tensor(0).data, copy=True))


def _user_onnx(name: str, path: Path, threads: int) -> OrtBackend:
    """A session on a file the user gave: onnxruntime refusing it is a fault of the file, said in one line."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    refused = (ort_errors.Fail, ort_errors.InvalidGraph, ort_errors.InvalidProtobuf, ort_errors.InvalidArgument,
               ort_errors.NoSuchFile, ort_errors.NotImplemented, ort_errors.RuntimeException)
    try:
        return OrtBackend(name, path, threads)
    except refused as error:
        raise UserError(f"{path}: onnxruntime cannot load it ({first_line(error)})"
                        ) from error
