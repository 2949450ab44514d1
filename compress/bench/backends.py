"""Ways to run a ticket, each a callable ``backend(x) -> Tensor``, built by ``make_backend(s)``.

* ``torch_dense``  -- masks folded into plain weights, eval, ``torch.inference_mode``.
* ``torch_sparse`` -- every Linear as CSR inside fused feature-major chains (``compress.bench.sparse``);
  convolutions stay dense: unfold + CSR, timed on Conv-4's layers at 10 % density (1 thread), was
  about as fast at batch 1 at best and 4-9x slower at batch 64 (the unfolded matrix is 9x the input).
* ``torch_sparse_compact`` -- the same on ``compress.pruning.compact.compact_model`` of the model (dead units
  removed first, exactly; nn.Sequential models only): fewer rows and columns left to multiply.
* ``ort_dense``    -- ``compress.export.export_onnx`` file in onnxruntime (threads pinned, spinning off).
* ``ort_compact``  -- the same for the compacted model (dead units removed; nn.Sequential models only).
* ``openvino`` / ``openvino_bf16`` -- the same ONNX file in OpenVINO at f32 / bf16 inference precision
  (``compress.export.onnx.openvino``; bf16 is a reduced precision, judged by ``auto`` on accuracy).
* ``ort_int8`` / ``openvino_int8`` -- ``compress.export.quantize_onnx`` of that file (int8: dynamic for
  Linear-only graphs, static QDQ calibrated on ``accuracy_data`` otherwise) in each runtime; reduced precision.
* ``auto``         -- times the others (and a per-layer dense/CSR mix) once, at the batch sizes asked,
  and then always runs the fastest whose outputs match fp32 -- or, for a reduced precision, whose accuracy
  on ``accuracy_data`` stays within ``accuracy_tolerance`` of fp32; its ``choices`` say what it picked and
  why (``compress.bench.auto``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from compress.bench.runners import Backend, OpenVinoBackend, OrtBackend, TorchBackend, _user_onnx
from compress.bench.source import Source, SourceLike, resolve_source
from compress.bench.sparse import linear_chains
from compress.errors import UserError, first_line
from compress.pruning import fold_masks
from compress.registry import BACKENDS

INT8 = ("ort_int8", "openvino_int8")
REDUCED_PRECISION = ("openvino_bf16", *INT8)  # outputs differ from fp32 by design: auto judges them on accuracy
OPENVINO = {"openvino": "f32", "openvino_bf16": "bf16"}
ONNX_FILE_BACKENDS = ("ort_dense", *OPENVINO)  # what runs an ONNX file as given
BASELINE = "ort_dense"  # speedups are reported against this one, measured in the same run
ONNX_NAME = "model.onnx"


class Unavailable(Exception):
    """A backend that cannot run this model; ``str()`` says why (reported, not raised, by ``make_backends``)."""


@dataclass
class BuildPlan:
    """What a backend builder gets: the model, the settings, the backends built before it, one shared export
    (and one int8 file) for every ONNX backend."""
    source: Source
    threads: int
    folder: Path
    wanted: set[str]
    batch_sizes: list[int] | tuple[int, ...]
    budget_s: float
    built: dict[str, Backend] = field(default_factory=dict)
    accuracy_data: tuple[torch.Tensor, torch.Tensor] | None = None
    accuracy_tolerance: float | None = None
    _export: object = None
    _int8: object = None

    def onnx_path(self) -> Path:
        """The ONNX file the ONNX backends run: the user's own file as given, else the export's."""
        return self.source.onnx_path if self.source.onnx_path is not None else Path(self.onnx_export().path)

    def onnx_export(self):
        """One ``export_onnx`` for every ONNX backend (the compacted file comes with the dense one)."""
        if self._export is None:
            from compress.export import export_onnx

            example = self.source.require_example("ONNX export")  # a user error: raised, not reported
            try:
                self._export = export_onnx(self.source.model, self.folder / ONNX_NAME, example,
                                           compact="ort_compact" in self.wanted and self.compacts())
            except ValueError as error:
                self._export = Unavailable(f"ONNX export failed: {first_line(error)}")
        if isinstance(self._export, Unavailable):
            raise self._export
        return self._export

    def int8_file(self) -> tuple[Path, str]:
        """``quantize_onnx`` (mode int8) of the ONNX file, once: its path and the mode used."""
        if self._int8 is None:
            from compress.export import quantize_onnx

            path = self.onnx_path()
            target = Path(self.folder) / "model.int8.onnx"
            calibration = None if self.accuracy_data is None else self.accuracy_data[0].float()[:256].numpy()
            try:
                self._int8 = (target, quantize_onnx(path, target, mode="int8", calibration=calibration).mode)
            except UserError as error:  # a Conv graph without calibration inputs
                self._int8 = Unavailable(f"{error} (pass accuracy_data)")
        if isinstance(self._int8, Unavailable):
            raise self._int8
        return self._int8

    def compacts(self) -> bool:
        try:
            self.source.compacted()  # cheap check first: unsupported models skip only the compact backends
        except ValueError:
            return False
        return True


@dataclass(frozen=True)
class BackendSpec:
    """How to build one backend: ``build(plan)`` returns it or raises ``Unavailable``. ``composite``: built
    after all the others, from them (``auto`` times the others). ``runs_onnx_file``: it can run a user's
    ``.onnx`` file as given."""
    build: Callable[[BuildPlan], Backend]
    composite: bool = False
    runs_onnx_file: bool = False


def register_backend(name: str, *, composite: bool = False, runs_onnx_file: bool = False) -> Callable:
    """Decorator: ``@register_backend("mine")`` on a ``build(plan) -> Backend`` function
    (``compress.registry.BACKENDS``; ``make_backends`` asks it, never a list of names)."""
    def decorator(build: Callable[[BuildPlan], Backend]) -> Callable[[BuildPlan], Backend]:
        BACKENDS.register(name)(BackendSpec(build, composite, runs_onnx_file))
        return build

    return decorator


def _check_names(names: list[str] | tuple[str, ...]) -> None:
    if not names:
        raise UserError(f"no backend asked for; choose from {', '.join(BACKENDS)}")
    unknown = [name for name in names if name not in BACKENDS]
    if unknown:
        raise UserError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")


def _torch_sparse(name: str, model: nn.Module) -> TorchBackend:
    try:
        converted, chains = linear_chains(model)
    except ValueError as error:
        raise Unavailable(str(error)) from None
    layers = {layer: {"shape": list(chain.dense[i].shape), "nonzeros": int(chain.csr[i].values().numel())}
              for chain in chains for i, layer in enumerate(chain.names)}
    return TorchBackend(name, converted, {"csr_layers": layers, "conv": "dense"})


def _compacted(plan: BuildPlan) -> nn.Module:
    try:
        return plan.source.compacted()
    except ValueError as error:
        raise Unavailable(str(error)) from None


@register_backend("torch_dense")
def _build_torch_dense(plan: BuildPlan) -> Backend:
    return TorchBackend("torch_dense", fold_masks(plan.source.model).cpu().float().eval())


@register_backend("torch_sparse")
def _build_torch_sparse(plan: BuildPlan) -> Backend:
    return _torch_sparse("torch_sparse", plan.source.model)


@register_backend("torch_sparse_compact")
def _build_torch_sparse_compact(plan: BuildPlan) -> Backend:
    return _torch_sparse("torch_sparse_compact", _compacted(plan))


@register_backend("ort_dense", runs_onnx_file=True)
def _build_ort_dense(plan: BuildPlan) -> Backend:
    if plan.source.onnx_path is not None:
        return _user_onnx("ort_dense", plan.source.onnx_path, plan.threads)
    report = plan.onnx_export()
    return OrtBackend("ort_dense", report.path, plan.threads,
                      {"max_abs_diff": report.max_abs_diff, "macs": report.macs, "nonzero_macs": report.nonzero_macs})


@register_backend("ort_compact")
def _build_ort_compact(plan: BuildPlan) -> Backend:
    _compacted(plan)
    compact = plan.onnx_export().compact
    if compact is None:
        raise Unavailable("the export made no compacted model")
    return OrtBackend("ort_compact", compact.path, plan.threads,
                      {"max_abs_diff": compact.max_abs_diff, "macs": compact.macs_after,
                       "params": compact.params_after, "params_before": compact.params_before})


def _openvino(name: str, precision: str) -> Callable[[BuildPlan], Backend]:
    def build(plan: BuildPlan) -> Backend:
        from compress.export.onnx import openvino

        reason = openvino.available()
        if reason is not None:
            raise Unavailable(reason)
        try:
            return OpenVinoBackend(name, plan.onnx_path(), precision, plan.threads)
        except UserError as error:
            raise Unavailable(str(error)) from None

    return build


for _name, _precision in OPENVINO.items():
    register_backend(_name, runs_onnx_file=True)(_openvino(_name, _precision))


@register_backend("ort_int8")
def _build_ort_int8(plan: BuildPlan) -> Backend:
    target, mode = plan.int8_file()
    return OrtBackend("ort_int8", target, plan.threads, {"quantization": mode}, reduced_precision=True)


@register_backend("openvino_int8")
def _build_openvino_int8(plan: BuildPlan) -> Backend:
    from compress.export.onnx import openvino

    if openvino.available() is not None:
        raise Unavailable(openvino.available())
    target, mode = plan.int8_file()
    return OpenVinoBackend("openvino_int8", target, "f32", plan.threads, {"quantization": mode},
                           reduced_precision=True)


def make_backends(names: list[str] | tuple[str, ...], model: SourceLike, example_input: torch.Tensor | None = None,
                  *, threads: int | None = None, batch_sizes: list[int] | tuple[int, ...] = (1, 64),
                  workdir: str | Path | None = None, budget_s: float = 0.3,
                  accuracy_data: tuple[torch.Tensor, torch.Tensor] | None = None,
                  accuracy_tolerance: float | None = None) -> tuple[dict[str, Backend], dict[str, str]]:
    """Build the named backends for ``model`` sharing one export; returns (built, {name: why not built}).

    ``model``: an nn.Module (with prune masks or plain), a ticket dict, a ``ticket.pt``, a run directory
    or an ``.onnx`` file (then only the backends that run a file as given: ``ort_dense``, OpenVINO).
    ``example_input``: a batch whose first row fixes the input shape (tickets know theirs). ``threads``: ORT
    intra-op threads (default: torch's current count, which the timing harness pins). ``batch_sizes`` and
    ``budget_s`` (seconds per candidate and batch size) are for ``auto``'s timing. ``workdir`` keeps the ONNX
    files (default: a temporary folder, removed once the sessions are loaded). ``accuracy_data``: labelled
    inputs ``(x, y)`` (normalised, as the model takes them) on which ``auto`` checks a reduced precision
    (bf16, int8) against fp32, admitting it within ``accuracy_tolerance`` (a fraction; default
    ``compress.bench.auto.ACCURACY_TOLERANCE``); without them ``auto`` keeps to exact candidates. Every
    backend is a registered builder (``register_backend``); a composite one (``auto``) is built last.
    """
    _check_names(names)
    source = resolve_source(model, example_input)
    threads = int(threads or torch.get_num_threads())
    built: dict[str, Backend] = {}
    unavailable: dict[str, str] = {}
    specs = {name: BACKENDS.get(name) for name in BACKENDS}
    if source.onnx_path is not None:
        file_backends = [name for name, spec in specs.items() if spec.runs_onnx_file]
        wanted = {name for name in names if specs[name].runs_onnx_file}
        for name in names:
            if name not in wanted:
                unavailable[name] = (f"an ONNX file runs only as given ({', '.join(file_backends)}); pass a "
                                     "ticket for the others")
    else:
        # a composite (auto) times every other backend, so asking for it builds them all
        wanted = set(names) | ({n for n, spec in specs.items() if not spec.composite}
                               if any(specs[n].composite for n in names) else set())
    with tempfile.TemporaryDirectory(prefix="compress-bench-") as tmp:
        folder = Path(workdir) if workdir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        plan = BuildPlan(source, threads, folder, wanted, batch_sizes, budget_s, built, accuracy_data,
                         accuracy_tolerance)
        for composite in (False, True):
            for name, spec in specs.items():
                if name in wanted and spec.composite == composite:
                    try:
                        built[name] = spec.build(plan)
                    except Unavailable as why:
                        unavailable[name] = str(why)
    picked = {name: built[name] for name in names if name in built}
    return picked, {name: why for name, why in unavailable.items() if name in names}


def make_backend(name: str, model: SourceLike, example_input: torch.Tensor | None = None, *,
                 threads: int | None = None, batch_sizes: list[int] | tuple[int, ...] = (1, 64),
                 workdir: str | Path | None = None, budget_s: float = 0.3,
                 accuracy_data: tuple[torch.Tensor, torch.Tensor] | None = None,
                 accuracy_tolerance: float | None = None) -> Backend:
    """One backend (see ``make_backends``); ValueError saying why when it cannot run this model."""
    built, unavailable = make_backends([name], model, example_input, threads=threads, batch_sizes=batch_sizes,
                                       workdir=workdir, budget_s=budget_s, accuracy_data=accuracy_data,
                                       accuracy_tolerance=accuracy_tolerance)
    if name not in built:
        raise UserError(f"backend {name!r} cannot run this model: {unavailable.get(name, 'not built')}")
    return built[name]
