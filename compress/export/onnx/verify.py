"""Checks of an exported file: the ONNX checker, onnxruntime against torch, and pruned zeros per parameter.

Zero-count rule. For each pruned parameter the exported initializer must hold exactly as many
exact zeros as the folded torch weight (``weight_orig * weight_mask``): that is the number of pruned
weights PLUS any surviving weight that is itself exactly 0.0 (a zero-initialised or underflowed
weight), so the count is >= the pruned count and equal only when no survivor is exactly zero. The
initializer must also equal the folded weight value for value, which pins the zeros to the pruned
positions, not just their number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from compress.errors import UserError, first_line
from compress.tolerance import RULE, allowed, judge, max_abs, output_scale


def check_onnx(proto: onnx.ModelProto, what: str, full: bool = True, data: bytes | None = None) -> None:
    """The ONNX checker (``full``: with strict shape inference) and a dynamic batch dimension on every input.

    Shape inference does not understand sparse initializers (it types them ``sparse_tensor`` and
    rejects them as Gemm/Conv inputs), so files with them get the structural check only.
    ``data``: ``proto`` serialised, when the caller has it: the checker reads it as is, where it would
    serialise ``proto`` again (one copy of the weights less; 330 MB for an 86M-parameter model).
    """
    _run_checker(data if data is not None else proto, what, full)
    _check_dynamic_batch(proto, what)


def check_file(data: bytes, what: str) -> None:
    """``data`` through the full ``onnx.checker`` and the dynamic-batch check. Nothing parsed is kept: the
    checker's own parse and shape inference hold two copies of the weights, and onnxruntime, next, a third."""
    _run_checker(data, what, full=True)
    _check_dynamic_batch(onnx.load_from_string(data), what)


def _run_checker(model: onnx.ModelProto | bytes, what: str, full: bool) -> None:
    try:
        onnx.checker.check_model(model, full_check=full)
    except Exception as error:  # ValidationError, InferenceError, ...
        raise UserError(f"{what}: onnx.checker rejected the model: {first_line(error)}") from error


def _check_dynamic_batch(proto: onnx.ModelProto, what: str) -> None:
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].dim_param:
            raise UserError(f"{what}: input {value.name!r} has a fixed batch dimension "
                             f"({dims[0].dim_value}); expected a dynamic one")


# the graph optimisation level of every verifying session, named in each export report (``ort_optimization``)
ORT_OPTIMIZATION = "ORT_ENABLE_EXTENDED"


def session(model_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initializers etc. are not ours to act on
    # every graph rewrite but the CPU layout transform (NCHWc), which copies each convolution's weights into
    # blocked layouts while the session loads -- two more transient copies of them (vgg11: +1.1 GB) to check
    # a file that does not contain that layout; the kernels' arithmetic is the same either way
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_OPTIMIZATION)
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def ort_outputs(model_bytes: bytes, batches: list[torch.Tensor], what: str) -> list[list[np.ndarray]]:
    """onnxruntime's outputs for each batch (one session for all)."""
    try:
        runner = session(model_bytes)
        name = runner.get_inputs()[0].name
        return [runner.run(None, {name: batch.detach().cpu().numpy()}) for batch in batches]
    except Exception as error:  # onnxruntime's own exception types (Fail, InvalidGraph, ...)
        raise UserError(f"{what}: onnxruntime cannot run it: {first_line(error)}") from error


def max_abs_diff(actual: list[np.ndarray], expected: list[torch.Tensor]) -> float:
    if len(actual) != len(expected):
        raise UserError(f"onnxruntime gave {len(actual)} outputs, torch {len(expected)}")
    diff = 0.0
    for got, want in zip(actual, expected, strict=True):
        want_np = want.detach().cpu().numpy()
        if got.shape != want_np.shape:
            raise UserError(f"onnxruntime output shape {got.shape} != torch {want_np.shape}")
        diff = max(diff, float(np.abs(got.astype(np.float64) - want_np.astype(np.float64)).max(initial=0.0)))
    return diff


def reference_scale(reference: list[torch.Tensor]) -> float:
    """``max |reference|`` over every output (``compress.tolerance``)."""
    return output_scale(float(r.detach().abs().max()) if r.numel() else 0.0 for r in reference)


def check_close(diff: float, what: str, tolerance: float, label: str = "|ORT - torch|") -> None:
    """``tolerance``: ``compress.tolerance.allowed(scale)`` for outputs compared with torch's."""
    if not diff <= tolerance:  # also catches NaN
        raise UserError(f"{what}: max {label} = {diff:.3g} exceeds {tolerance:.3g} ({RULE})")


def arbitrate(diff: float, scale: float, reference: Sequence[torch.Tensor], full: list[np.ndarray],
              single: list[np.ndarray], exact: Callable[[], list[torch.Tensor] | None], what: str) -> dict | None:
    """``compress.tolerance`` for onnxruntime's outputs (``full``: on the batch, ``single``: on its first row)
    at ``diff`` = max |ORT - torch|: None when the relative rule holds; else the float64 arbiter's two errors
    when it accepts, a UserError naming both when it does not. ``exact()``: the outputs in float64 (the model
    run again), called only then; None from it keeps the relative rule's verdict."""
    verdict = judge(diff, scale, reference, lambda exact_out: max(
        max_abs([torch.from_numpy(o) for o in full], exact_out),
        max_abs([torch.from_numpy(o) for o in single], [e[:1] for e in exact_out])), exact)
    if verdict.error is None:  # the relative rule held, or no float64 run: it decides
        check_close(diff, what, allowed(scale))
        return None
    if not verdict.passes:
        raise UserError(f"{what}: max |ORT - torch| = {diff:.3g} exceeds {allowed(scale):.3g}, and against the "
                        f"model in float64 ORT is off by {verdict.error:.3g} where torch float32 is off by "
                        f"{verdict.reference_error:.3g} ({RULE})")
    return {"ort_error": verdict.error, "torch_float32_error": verdict.reference_error}


def _match(array: np.ndarray, weight: np.ndarray) -> str | None:
    """How ``array`` (an initializer) holds ``weight``: 'values', 'transposed' or None."""
    if array.shape == weight.shape and np.array_equal(array, weight):
        return "values"
    if weight.ndim == 2 and array.shape == weight.shape[::-1] and np.array_equal(array, weight.T):
        return "transposed"  # a Linear applied as MatMul gets its weight pre-transposed by constant folding
    return None


def _same_zeros(array: np.ndarray, weight: np.ndarray) -> bool:
    if array.shape == weight.shape:
        return np.array_equal(array == 0, weight == 0)
    return weight.ndim == 2 and array.shape == weight.shape[::-1] and np.array_equal(array == 0, weight.T == 0)


def check_zero_counts(proto: onnx.ModelProto, weights: dict[str, torch.Tensor],
                      pruned: dict[str, int], what: str) -> dict[str, dict]:
    """Find each parameter of ``weights`` among the initializers and check its zeros (module docstring).

    Mapping: by name when the exporter kept it, else by value (also transposed), else -- for a weight
    the exporter rescaled -- by shape and identical zero pattern. A parameter found nowhere, or one
    whose zeros differ, is an error naming it.
    """
    # one array at a time (all at once would be another copy of the model): by name first; the value and
    # zero-pattern fallbacks only look at initializers of the same size
    tensors = {init.name: init for init in proto.graph.initializer}
    for sparse in proto.graph.sparse_initializer:
        tensors[sparse.values.name] = sparse
    sizes: dict[int, list[str]] = {}
    for key, tensor in tensors.items():
        sizes.setdefault(int(np.prod(tensor.dims, dtype=np.int64)), []).append(key)

    def array(key: str) -> np.ndarray:
        return numpy_helper.to_array(tensors[key])

    result: dict[str, dict] = {}
    for name, tensor in weights.items():
        weight = tensor.detach().cpu().float().numpy()  # the given model may be half / bfloat16
        found, how, candidate = None, None, None
        if name in tensors:
            found, candidate = name, array(name)
            how = _match(candidate, weight)
            if how is None:
                raise UserError(f"{what}: zero-count check: initializer {name!r} differs from the folded "
                                 f"torch weight of parameter {name!r}")
        else:
            same_size = sizes.get(int(weight.size), [])
            found, how = next(((key, kind) for key in same_size
                               if (kind := _match(array(key), weight)) is not None), (None, None))
            if found is None:
                found = next((key for key in same_size if _same_zeros(array(key), weight)), None)
                how = "zero pattern"
        if found is None:
            raise UserError(f"{what}: zero-count check: parameter {name!r} {tuple(weight.shape)} is not among "
                             "the ONNX initializers (the exporter transformed it), so its pruned zeros "
                             "cannot be verified")
        candidate = candidate if candidate is not None else array(found)
        zeros_onnx = int(candidate.size - np.count_nonzero(candidate))
        zeros_torch = int(weight.size - np.count_nonzero(weight))
        n_pruned = int(pruned.get(name, 0))
        if zeros_onnx != zeros_torch or zeros_torch < n_pruned:
            raise UserError(f"{what}: zero-count check failed for parameter {name!r}: {zeros_onnx} exact zeros "
                             f"in initializer {found!r}, expected {zeros_torch} ({n_pruned} pruned + "
                             f"{zeros_torch - n_pruned} surviving weights that are exactly 0)")
        result[name] = {"initializer": found, "matched_by": "name" if found == name else how,
                        "total": int(weight.size), "pruned": n_pruned, "zeros": zeros_onnx}
    return result

