"""Ways to run a ticket, each a callable ``backend(x) -> Tensor``, built by ``make_backend(s)``.

* ``torch_dense``  -- masks folded into plain weights, eval, ``torch.inference_mode``.
* ``torch_sparse`` -- every Linear as CSR inside fused feature-major chains (``compress.bench.sparse``);
  convolutions stay dense: unfold + CSR, timed on Conv-4's layers at 10 % density (1 thread), was
  about as fast at batch 1 at best and 4-9x slower at batch 64 (the unfolded matrix is 9x the input).
* ``torch_sparse_compact`` -- the same on ``compress.pruning.compact.compact_model`` of the model (dead units
  removed first, exactly; nn.Sequential models only): fewer rows and columns left to multiply.
* ``ort_dense``    -- ``compress.export.export_onnx`` file in onnxruntime (threads pinned, spinning off).
* ``ort_compact``  -- the same for the compacted model (dead units removed; nn.Sequential models only).
* ``auto``         -- times the others (and a per-layer dense/CSR mix) once, at the batch sizes asked,
  and then always runs the fastest; its ``choices`` say what it picked and why (``compress.bench.auto``).
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from compress.bench.source import Source, SourceLike, resolve_source
from compress.bench.sparse import linear_chains
from compress.errors import UserError
from compress.pruning import fold_masks

BACKENDS = ("torch_dense", "torch_sparse", "torch_sparse_compact", "ort_dense", "ort_compact", "auto")
BASELINE = "ort_dense"  # speedups are reported against this one, measured in the same run
ONNX_NAME = "model.onnx"
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
    def __init__(self, name: str, path: str | Path, threads: int, info: dict | None = None) -> None:
        super().__init__(name, {"onnx": str(path), "threads": threads, **(info or {})})
        self.session = ort_session(path, threads)
        self._input = self.session.get_inputs()[0].name
        self._outputs = [self.session.get_outputs()[0].name]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(self._outputs, {self._input: array})[0])


def _user_onnx(name: str, path: Path, threads: int) -> OrtBackend:
    """A session on a file the user gave: onnxruntime refusing it is a fault of the file, said in one line."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    refused = (ort_errors.Fail, ort_errors.InvalidGraph, ort_errors.InvalidProtobuf, ort_errors.InvalidArgument,
               ort_errors.NoSuchFile, ort_errors.NotImplemented, ort_errors.RuntimeException)
    try:
        return OrtBackend(name, path, threads)
    except refused as error:
        text = str(error).strip()
        raise UserError(f"{path}: onnxruntime cannot load it ({text.splitlines()[0] if text else type(error).__name__})"
                        ) from error


def _check_names(names: list[str] | tuple[str, ...]) -> None:
    if not names:
        raise UserError(f"no backend asked for; choose from {', '.join(BACKENDS)}")
    unknown = [name for name in names if name not in BACKENDS]
    if unknown:
        raise UserError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")


def _torch_sparse(name: str, model: nn.Module) -> TorchBackend:
    converted, chains = linear_chains(model)
    layers = {layer: {"shape": list(chain.dense[i].shape), "nonzeros": int(chain.csr[i].values().numel())}
              for chain in chains for i, layer in enumerate(chain.names)}
    return TorchBackend(name, converted, {"csr_layers": layers, "conv": "dense"})


def _ort_backends(wanted: set[str], source: Source, threads: int, workdir: Path,
                  unavailable: dict[str, str]) -> dict[str, Backend]:
    """One ``export_onnx`` call for both ORT backends (the compacted file comes with the dense one)."""
    from compress.export import export_onnx

    example = source.require_example("ONNX export")  # a user error, not something the model cannot do
    compact = "ort_compact" in wanted
    if compact:
        try:
            source.compacted()  # cheap check first: unsupported models skip only ort_compact
        except ValueError as error:
            unavailable["ort_compact"] = str(error)
            compact = False
    try:
        report = export_onnx(source.model, workdir / ONNX_NAME, example, compact=compact)
    except ValueError as error:
        for name in wanted:
            unavailable.setdefault(name, f"ONNX export failed: {str(error).splitlines()[0]}")
        return {}
    built: dict[str, Backend] = {}
    if "ort_dense" in wanted:
        built["ort_dense"] = OrtBackend("ort_dense", report.path, threads,
                                        {"max_abs_diff": report.max_abs_diff, "macs": report.macs,
                                         "nonzero_macs": report.nonzero_macs})
    if compact and report.compact is not None:
        built["ort_compact"] = OrtBackend("ort_compact", report.compact.path, threads,
                                          {"max_abs_diff": report.compact.max_abs_diff,
                                           "macs": report.compact.macs_after, "params": report.compact.params_after,
                                           "params_before": report.compact.params_before})
    return built


def make_backends(names: list[str] | tuple[str, ...], model: SourceLike, example_input: torch.Tensor | None = None,
                  *, threads: int | None = None, batch_sizes: list[int] | tuple[int, ...] = (1, 64),
                  workdir: str | Path | None = None, budget_s: float = 0.3
                  ) -> tuple[dict[str, Backend], dict[str, str]]:
    """Build the named backends for ``model`` sharing one export; returns (built, {name: why not built}).

    ``model``: an nn.Module (with prune masks or plain), a ticket dict, a ``ticket.pt``, a run directory
    or an ``.onnx`` file (then only ``ort_dense``, the file as given). ``example_input``: a batch whose
    first row fixes the input shape (tickets know theirs). ``threads``: ORT intra-op threads (default:
    torch's current count, which the timing harness pins). ``batch_sizes`` and ``budget_s`` (seconds
    per candidate and batch size) are for ``auto``'s timing. ``workdir`` keeps the ONNX files
    (default: a temporary folder, removed once the sessions are loaded).
    """
    _check_names(names)
    source = resolve_source(model, example_input)
    threads = int(threads or torch.get_num_threads())
    built: dict[str, Backend] = {}
    unavailable: dict[str, str] = {}
    if source.onnx_path is not None:
        for name in names:
            if name == "ort_dense":
                built[name] = _user_onnx(name, source.onnx_path, threads)
            else:
                unavailable[name] = "an ONNX file runs only as given (ort_dense); pass a ticket for the others"
        return built, unavailable

    wanted = set(BACKENDS[:-1]) if "auto" in names else set(names)  # auto times all the others
    with tempfile.TemporaryDirectory(prefix="compress-bench-") as tmp:
        folder = Path(workdir) if workdir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if wanted & {"ort_dense", "ort_compact"}:
            built.update(_ort_backends(wanted & {"ort_dense", "ort_compact"}, source, threads, folder, unavailable))
    if "torch_dense" in wanted:
        built["torch_dense"] = TorchBackend("torch_dense", fold_masks(source.model).cpu().float().eval())
    if "torch_sparse" in wanted:
        try:
            built["torch_sparse"] = _torch_sparse("torch_sparse", source.model)
        except ValueError as error:
            unavailable["torch_sparse"] = str(error)
    if "torch_sparse_compact" in wanted:
        try:
            built["torch_sparse_compact"] = _torch_sparse("torch_sparse_compact", source.compacted())
        except ValueError as error:
            unavailable["torch_sparse_compact"] = str(error)
    if "auto" in names:
        from compress.bench.auto import AutoBackend

        built["auto"] = AutoBackend(source, dict(built), batch_sizes, budget_s=budget_s)
    picked = {name: built[name] for name in names if name in built}
    return picked, {name: why for name, why in unavailable.items() if name in names}


def make_backend(name: str, model: SourceLike, example_input: torch.Tensor | None = None, *,
                 threads: int | None = None, batch_sizes: list[int] | tuple[int, ...] = (1, 64),
                 workdir: str | Path | None = None, budget_s: float = 0.3) -> Backend:
    """One backend (see ``make_backends``); ValueError saying why when it cannot run this model."""
    built, unavailable = make_backends([name], model, example_input, threads=threads, batch_sizes=batch_sizes,
                                       workdir=workdir, budget_s=budget_s)
    if name not in built:
        raise UserError(f"backend {name!r} cannot run this model: {unavailable.get(name, 'not built')}")
    return built[name]
