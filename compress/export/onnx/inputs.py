"""``export_onnx`` for models with several, integer or named inputs and tuple / dict outputs (HF models).

A Hugging Face model takes ``input_ids`` (int64) and ``attention_mask`` and returns a ``ModelOutput``
(a dict). The model is wrapped in ``FlatModel``: positional tensors in, a flat tuple of tensors out, so
the TorchScript exporter sees plain tensors; the graph's inputs are named after the dict's keys
(``input_ids``, ...), its outputs after the output keys. Inputs keep their dtype (only floating ones
become float32, as the folded model is float32), and onnxruntime is checked on the same tensors, at
two batch sizes, within the tolerance of ``export_onnx``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from compress.errors import UserError, first_line
from compress.export.onnx.storage import SPARSE_TOLERANCE, weights_and_counts, zeros_and_storage
from compress.export.onnx.verify import (
    arbitrate,
    check_close,
    check_file,
    reference_scale,
    session,
)
from compress.io import save_bytes
from compress.pruning.apply import deepcopy_module
from compress.tolerance import RULE, allowed, exact_outputs

Batch = tuple[torch.Tensor, ...]


def as_batch(inputs: Any) -> tuple[Batch, tuple[str, ...] | None]:
    """A tensor, a tuple / list of tensors, or a mapping of name -> tensor (``BatchEncoding``) as
    ``(tensors, names or None)``; floating tensors as float32 on the CPU, integer ones as they are."""
    if isinstance(inputs, torch.Tensor):
        tensors, names = (inputs,), None
    elif isinstance(inputs, Mapping):
        names = tuple(str(key) for key in inputs)
        tensors = tuple(inputs[key] for key in inputs)
    elif isinstance(inputs, (tuple, list)):
        tensors, names = tuple(inputs), None
    else:
        raise UserError(f"verify_inputs: a tensor, a tuple of tensors or a dict of tensors, got "
                        f"{type(inputs).__name__}")
    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, torch.Tensor):
            raise UserError(f"verify_inputs[{names[i] if names else i}]: not a tensor ({type(tensor).__name__})")
        if tensor.dim() < 1 or tensor.shape[0] != tensors[0].shape[0]:
            raise UserError(f"verify_inputs: every input must be a batch of the same size, got shapes "
                            f"{[tuple(t.shape) for t in tensors]}")
    return tuple(t.detach().cpu().float() if t.is_floating_point() else t.detach().cpu() for t in tensors), names


def needs_flat(inputs: Any) -> bool:
    """True unless ``inputs`` is one floating-point tensor (the image-model path of ``export_onnx``)."""
    return not (inputs is None or (isinstance(inputs, torch.Tensor) and inputs.is_floating_point()))


def returns_mapping(model: nn.Module, inputs: torch.Tensor) -> bool:
    """True when ``model`` returns a dict (an HF ``ModelOutput``) on two rows of ``inputs``."""
    with torch.no_grad():
        try:
            return isinstance(model(inputs[:2].detach().cpu().float()), Mapping)
        except Exception:  # the ordinary path reports a failing forward with its own message
            return False


def flat_outputs(out: Any) -> tuple[tuple[torch.Tensor, ...], tuple[str, ...]]:
    """A tensor, tuple / list or dict (``ModelOutput``) of tensors as a flat tuple with names; None
    entries (an HF output without a loss) are left out."""
    if isinstance(out, torch.Tensor):
        return (out,), ("output",)
    if isinstance(out, Mapping):
        items = [(str(k), v) for k, v in out.items() if v is not None]
    elif isinstance(out, (tuple, list)):
        items = [(f"output_{i}", v) for i, v in enumerate(out) if v is not None]
    else:
        raise UserError(f"the model returns {type(out).__name__}: export needs tensors, tuples or dicts of them")
    if not all(isinstance(v, torch.Tensor) for _, v in items):
        raise UserError("the model's outputs must be tensors (nested outputs are not exported)")
    return tuple(v for _, v in items), tuple(k for k, _ in items)


class FlatModel(nn.Module):
    """``model`` taking positional tensors (``names``: passed as keywords) and returning a tuple."""

    def __init__(self, model: nn.Module, names: tuple[str, ...] | None) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(**dict(zip(self.names, tensors, strict=True))) if self.names else self.model(*tensors)
        return flat_outputs(out)[0]


def run_torch(model: FlatModel, batch: Batch, what: str) -> tuple[torch.Tensor, ...]:
    try:
        with torch.no_grad():
            return model(*batch)
    except UserError:
        raise
    except Exception as error:  # a wrong shape or dtype surfaces as many types
        text = first_line(error)
        kind = "dtype" if any(w in text.lower() for w in ("dtype", "scalar type", "type", "long", "int")) else "shape"
        raise UserError(f"{what}: the model cannot run on inputs of {kind} "
                        f"{[(tuple(t.shape), str(t.dtype).removeprefix('torch.')) for t in batch]}: {text}") from error


def ort_run(data: bytes, batch: Batch, what: str) -> list:
    runner = session(data)
    feeds = runner.get_inputs()
    if len(feeds) != len(batch):
        raise UserError(f"{what}: the ONNX graph takes {len(feeds)} inputs, {len(batch)} were given")
    try:
        return runner.run(None, {feed.name: t.numpy() for feed, t in zip(feeds, batch, strict=True)})
    except Exception as error:  # onnxruntime's own types (InvalidArgument: unexpected input data type, ...)
        text = first_line(error)
        kind = "dtype problem" if "type" in text.lower() else "onnxruntime cannot run it"
        raise UserError(f"{what}: {kind}: {text}") from error


def diff_of(actual: list, expected: tuple[torch.Tensor, ...]) -> float:
    if len(actual) != len(expected):
        raise UserError(f"onnxruntime gave {len(actual)} outputs, torch {len(expected)}")
    diff = 0.0
    for got, want in zip(actual, expected, strict=True):
        if got.shape != tuple(want.shape):
            raise UserError(f"onnxruntime output shape {got.shape} != torch {tuple(want.shape)}")
        if got.size:
            diff = max(diff, float(abs(got.astype("float64") - want.double().numpy()).max()))
    return diff


def export_flat(folded: nn.Module, path: Path, inputs: Any, opset: int, pruned: dict[str, int]) -> dict:
    """Export and verify ``folded`` (masks folded, float32, eval) on ``inputs`` of their own dtypes; writes
    ``path`` only after every check passed. ``pruned``: masked-out entries per module (``pruned_counts``).
    Returns the fields ``ExportReport`` needs."""
    batch, names = as_batch(inputs)
    flat = FlatModel(folded, names).eval()
    what = path.name
    reference = run_torch(flat, batch, what)
    _, out_names = flat_outputs(folded(**dict(zip(names, batch, strict=True))) if names else folded(*batch))
    in_names = list(names) if names else [f"input_{i}" if len(batch) > 1 else "input" for i in range(len(batch))]
    example = tuple(t[:2] for t in batch)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="It is recommended that constant folding be turned off")
        try:
            torch.onnx.export(flat, example, buffer, dynamo=False, opset_version=opset, input_names=in_names,
                              output_names=list(out_names),
                              dynamic_axes={n: {0: "batch"} for n in [*in_names, *out_names]},
                              training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True)
        except Exception as error:
            raise UserError(f"ONNX export (opset {opset}) failed: {first_line(error)}") from error
    data = buffer.getvalue()
    check_file(data, what)
    full, single = ort_run(data, batch, what), ort_run(data, tuple(t[:1] for t in batch), what)
    diff = max(diff_of(full, reference), diff_of(single, tuple(r[:1] for r in reference)))
    scale = reference_scale([r for r in reference if torch.is_floating_point(r)])
    tolerance = allowed(scale)
    float64 = arbitrate(diff, scale, reference, full, single,
                        lambda: exact_outputs(deepcopy_module(flat), batch, lambda m, b: list(run_torch(m, tuple(b), what))),
                        what)
    zeros, sizes, sparse_bytes = zeros_and_storage(data, *weights_and_counts(folded, pruned), what)
    sparse_diff = 0.0  # nothing converted: the sparse-initializer file is this file
    if sparse_bytes is not None:
        sparse_diff = diff_of(ort_run(sparse_bytes, batch, f"{what} (sparse initializers)"), reference)
        check_close(sparse_diff, f"{what} (sparse initializers)", SPARSE_TOLERANCE, "|sparse - dense|")
    save_bytes(data, path)
    return {"inputs": "given", "input_shape": [list(t.shape[1:]) for t in batch],
            "input_dtypes": [str(t.dtype).removeprefix("torch.") for t in batch], "input_names": in_names,
            "verify_batch": int(batch[0].shape[0]), "max_abs_diff": diff, "tolerance": tolerance,
            "tolerance_rule": RULE, "float64_check": float64,
            "zeros": zeros, "sizes": sizes, "sparse_max_abs_diff": sparse_diff}
