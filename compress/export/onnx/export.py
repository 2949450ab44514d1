"""``export_onnx``: a pruned model (or ticket) to a verified ONNX file, optionally also compacted."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
import torch.nn as nn

from compress.errors import UserError, first_line
from compress.export.onnx.exporter import EXPORTER, export_graph
from compress.export.onnx.inputs import as_batch, export_flat, needs_flat, returns_mapping
from compress.export.onnx.preprocess import Preprocess, add_metadata, embed_normalisation
from compress.export.onnx.storage import SPARSE_TOLERANCE, weights_and_counts, zeros_and_storage
from compress.export.onnx.verify import (
    ORT_OPTIMIZATION,
    arbitrate,
    check_close,
    check_file,
    check_onnx,
    max_abs_diff,
    ort_outputs,
    reference_scale,
)
from compress.io import save_bytes
from compress.models.unwrap import unwrap_model
from compress.pruning import fold_masks, plain_state_bytes, pruned_counts, zero_counts
from compress.pruning.apply import deepcopy_module
from compress.pruning.compact import Compaction
from compress.pruning.compact import compact as run_compaction
from compress.pruning.macs import count_params, mac_counts
from compress.recipe.checks import OPSET_RANGE
from compress.runtime import ensure_memory, release_cycles
from compress.tolerance import RULE, allowed, exact_outputs

VERIFY_BATCH = 8  # random verification inputs when none are given


@dataclass
class CompactReport:
    """The compacted export: where, how exact, and what it saved."""

    path: str
    max_abs_diff: float  # ORT(compacted) vs torch(original)
    torch_max_abs_diff: float  # torch(compacted) vs torch(original)
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    size_before: int
    size_after: int
    sizes: dict[str, int]
    units: list[dict]
    kept_constant_units: int
    zeros: dict[str, dict] = field(default_factory=dict)


@dataclass
class ExportReport:
    """What ``export_onnx`` wrote and verified. Sizes in bytes; MACs per example."""

    path: str
    opset: int
    exporter: str
    inputs: str  # where the verification inputs came from
    input_shape: list[int]  # of one example
    verify_batch: int
    max_abs_diff: float  # max |ORT - torch| on the verification batch
    tolerance: float  # what ``tolerance_rule`` allows for these outputs (compress.tolerance)
    params: int
    nonzero_params: int
    macs: int
    nonzero_macs: int
    zeros: dict[str, dict]  # per pruned parameter: initializer, matched_by, total, pruned, zeros
    sizes: dict[str, int]  # raw, gzip, sparse, bitmask
    sparse_max_abs_diff: float  # ORT(sparse-initializer file) vs ORT(dense file)
    compact: CompactReport | None = None
    # the input recipe written into metadata_props (compress.export.onnx.preprocess); None: none given
    preprocess: dict | None = None
    embedded_max_abs_diff: float | None = None  # ORT(embedded graph on x * std + mean) vs torch(x)
    # several / integer / named inputs (compress.export.onnx.inputs): names and dtypes of the graph's inputs
    input_names: list[str] | None = None
    input_dtypes: list[str] | None = None
    tolerance_rule: str = RULE  # every output comparison of this export (compress.tolerance)
    # where max_abs_diff exceeds tolerance: the float64 arbiter's errors (ort_error, torch_float32_error)
    float64_check: dict | None = None
    ort_optimization: str = ORT_OPTIMIZATION  # the verifying sessions' graph optimisation level

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _resolve(model_or_ticket) -> tuple[nn.Module, tuple[int, ...] | None]:
    """The model (unwrapped from torch.compile / DDP / DataParallel / EMA), and one example's shape when
    a ticket tells it."""
    if isinstance(model_or_ticket, nn.Module):
        return unwrap_model(model_or_ticket), None
    if isinstance(model_or_ticket, (str, Path, dict)):
        from compress.ticket import read_ticket, ticket_model

        ticket = model_or_ticket if isinstance(model_or_ticket, dict) else read_ticket(Path(model_or_ticket))
        shape = ticket["shape"]
        side = shape["image_size"]
        return ticket_model(ticket), (shape["in_channels"], side, side)
    raise UserError(f"export_onnx takes an nn.Module, a ticket dict or a ticket.pt path, "
                     f"got {type(model_or_ticket).__name__}")


def _outputs(model: nn.Module, x: torch.Tensor, what: str) -> list[torch.Tensor]:
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as error:  # a wrong input shape surfaces as many types
        raise UserError(f"{what}: the model cannot run on inputs of shape {tuple(x.shape)}: "
                         f"{first_line(error)}"
                         ) from error
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if not all(isinstance(o, torch.Tensor) for o in outs):
        raise UserError(f"{what}: the model must return a tensor or a tuple of tensors")
    return outs


def compact_path(path: Path) -> Path:
    """``ticket.onnx`` -> ``ticket.compact.onnx``."""
    return path.with_name(f"{path.stem}.compact{path.suffix or '.onnx'}")


def _export_checked(handed: list[nn.Module], example: torch.Tensor, inputs: torch.Tensor,
                    reference: list[torch.Tensor], opset: int, weights: dict[str, torch.Tensor],
                    pruned: dict[str, int], what: str, disposable: Callable[[], nn.Module]) -> dict:
    """Export the model in ``handed`` (a one-item list, emptied: the caller keeps no reference, so the model
    is freed once exported), check, compare with ``reference``, check zeros, measure sizes; nothing written
    yet. ``disposable``: a fresh copy of the model, for the float64 arbiter (only on a mismatch).

    While onnxruntime loads the bytes nothing else holds the weights but the caller's model and the bytes
    (no exported copy, no parsed graph, no sparse-initializer bytes)."""
    model = handed.pop()
    data, exporter = export_graph(model, example, opset, outputs=len(reference))
    del model
    release_cycles()  # the exporter's graphs, which reference the exported copy's weights
    check_file(data, what)
    # a second batch size besides the traced one, so a batch dimension baked in anywhere shows up
    full, single = ort_outputs(data, [inputs, inputs[:1]], what)
    diff, float64 = _check_outputs(disposable, inputs, full, single, reference, what)
    zeros, sizes, sparse_bytes = zeros_and_storage(data, weights, pruned, what)
    sparse_diff = 0.0  # nothing converted: the sparse-initializer file is this file
    if sparse_bytes is not None:
        (sparse_out,) = ort_outputs(sparse_bytes, [inputs], f"{what} (sparse initializers)")
        sparse_diff = max_abs_diff(sparse_out, [torch.from_numpy(o) for o in full])
        check_close(sparse_diff, f"{what} (sparse initializers)", SPARSE_TOLERANCE, "|sparse - dense|")
    return {"bytes": data, "diff": diff, "zeros": zeros, "sizes": sizes, "sparse_diff": sparse_diff,
            "exporter": exporter, "float64": float64}


def _check_outputs(disposable: Callable[[], nn.Module], inputs: torch.Tensor, full: list, single: list,
                   reference: list[torch.Tensor], what: str) -> tuple[float, dict | None]:
    """max |ORT - torch| on the batch and on its first row, under ``compress.tolerance`` (``arbitrate``)."""
    diff = max(max_abs_diff(full, reference), max_abs_diff(single, [r[:1] for r in reference]))
    errors = arbitrate(diff, reference_scale(reference), reference, full, single,
                       lambda: exact_outputs(disposable(), inputs, lambda m, x: _outputs(m, x, what)), what)
    return diff, errors


def export_onnx(model_or_ticket: nn.Module | dict | str | Path, path: str | Path,
                example_input: torch.Tensor | None = None, *, opset: int = 17,
                verify_inputs: Any = None, compact: bool = False,
                preprocess: Preprocess | None = None) -> ExportReport:
    """Export a (pruned) model to ``path`` and verify it; ``compact`` also writes ``<stem>.compact.onnx``.

    A wrapped model -- ``torch.compile``, ``DistributedDataParallel``, ``DataParallel``, an EMA
    wrapper -- is unwrapped first (``compress.models.unwrap.unwrap_model``); the compiled graph is never
    run, the plain module inside it is what gets exported.

    The masks are folded into plain weights on a copy (the given model keeps its prune
    reparametrisation). The file is written -- atomically -- only after every check passed:
    ``onnx.checker`` (full), a dynamic batch dimension, onnxruntime vs torch on ``verify_inputs``
    (default: ``VERIFY_BATCH`` seeded normal inputs) within ``compress.tolerance.RULE``, the zero-count rule per pruned
    parameter (``compress.export.onnx.verify``), and the sparse-initializer form giving the same outputs.
    A failed check raises ValueError naming it. ``example_input`` (a batch) fixes the traced shape;
    it defaults to two rows of ``verify_inputs`` or, for a ticket, to the ticket's input shape.

    ``preprocess`` (``compress.export.onnx.preprocess.Preprocess``) is written into ``metadata_props`` of every
    file; with ``preprocess.embedded`` the normalisation is also prepended to the graph, which then takes
    ``pixel / 255``, checked again against torch on ``inputs * std + mean``. ``verify_inputs`` are always
    normalised tensors, as the model was trained on.

    ``verify_inputs`` may also be integer tensors (token ids), a tuple of tensors or a dict of them (a
    tokenizer's ``BatchEncoding``), and the model may return a tuple or a dict (``ModelOutput``): the
    graph then takes every input in its own dtype, named after the dict's keys
    (``compress.export.onnx.inputs``); ``compact`` and ``preprocess`` are for one float input.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give the ONNX file to write (e.g. {path / 'model.onnx'})")
    model, ticket_shape = _resolve(model_or_ticket)
    low, high = OPSET_RANGE
    if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
        below = " (opsets 7 and 8 keep the weights as graph inputs, which this export does not verify)" \
            if isinstance(opset, int) and 7 <= opset < low else ""
        raise UserError(f"opset must be an int from {low} to {high}, got {opset!r}{below}")
    # names and counts: a copy of every mask is not needed; a model without masks (``make_permanent``) has its
    # exact zeros checked the same way
    pruned = pruned_counts(model) or zero_counts(model)
    release_cycles()  # a failed export's frames (an earlier call) may still hold its copy of the model
    # at least two copies of the plain weights: the ONNX bytes and onnxruntime's initializers (the folded model
    # shares the given one's tensors)
    ensure_memory(2 * plain_state_bytes(model), torch.device("cpu"), f"export_onnx ({type(model).__name__})")
    folded = _folded_copy(model)
    compaction = _compact_first(model, example_input) if compact else None  # fail on an unsupported model before any work

    if verify_inputs is not None and (needs_flat(verify_inputs) or returns_mapping(folded, verify_inputs)):
        return _export_flat(folded, path, verify_inputs, opset, pruned, example_input, compaction, preprocess)
    generator = torch.Generator().manual_seed(0)
    if verify_inputs is not None:
        inputs, source = verify_inputs.detach().cpu().float(), "given"
    else:
        shape = tuple(example_input.shape[1:]) if example_input is not None else ticket_shape
        if shape is None:
            raise UserError("export_onnx needs example_input or verify_inputs for a module (its input shape "
                             "is unknown)")
        inputs, source = torch.randn(VERIFY_BATCH, *shape, generator=generator), "random normal (seed 0)"
    example = example_input.detach().cpu().float() if example_input is not None else inputs[:2]
    if inputs.dim() < 2 or inputs.shape[0] < 1 or tuple(example.shape[1:]) != tuple(inputs.shape[1:]):
        raise UserError(f"verify_inputs {tuple(inputs.shape)} and example_input {tuple(example.shape)} must be "
                         "batches of the same example shape")

    reference = _outputs(folded, inputs, path.name)
    params, nonzero_params = count_params(folded), count_params(folded, nonzero=True)
    macs, nonzero_macs = mac_counts(folded, example)
    # the zero check reads the given model's own (refreshed) weights, so the folded copy can go once exported
    weights, counts = weights_and_counts(model, pruned)
    handed = [folded]
    del folded
    dense = _export_checked(handed, example, inputs, reference, opset, weights, counts, path.name,
                            lambda: _folded_copy(model))
    compact_report, compact_bytes = None, None
    if compaction is not None:
        compact_report, compact_bytes = _compact_export(compaction, example, inputs, reference, opset, path,
                                                        before=(params, macs, dense["sizes"]["raw"]))
        compact_bytes, _ = finish_preprocess(compact_bytes, preprocess, inputs, reference, compact_report.path)
    final_bytes, embedded_diff = finish_preprocess(dense["bytes"], preprocess, inputs, reference, path.name)
    save_bytes(final_bytes, path)
    if compact_report is not None:
        save_bytes(compact_bytes, Path(compact_report.path))
    release_cycles()  # the exporter's graphs (hundreds of MB on a large model) sit in reference cycles
    return ExportReport(
        path=str(path), opset=opset, exporter=dense["exporter"], inputs=source, input_shape=list(inputs.shape[1:]),
        verify_batch=int(inputs.shape[0]), max_abs_diff=dense["diff"], tolerance=allowed(reference_scale(reference)),
        params=params, nonzero_params=nonzero_params,
        macs=macs, nonzero_macs=nonzero_macs,
        zeros=dense["zeros"], sizes=dense["sizes"], sparse_max_abs_diff=dense["sparse_diff"],
        compact=compact_report, preprocess=preprocess.metadata() if preprocess is not None else None,
        embedded_max_abs_diff=embedded_diff, float64_check=dense["float64"])


def finish_preprocess(data: bytes, preprocess: Preprocess | None, inputs: torch.Tensor,
                      reference: list[torch.Tensor], what: str) -> tuple[bytes, float | None]:
    """The verified graph with its preprocessing recorded (and, when embedded, prepended and re-checked)."""
    if preprocess is None:
        return data, None
    proto = onnx.load_from_string(data)
    diff = None
    if preprocess.embedded:
        proto = embed_normalisation(proto, preprocess.mean, preprocess.std)
        check_onnx(proto, f"{what} (embedded preprocessing)")
        channels = len(preprocess.mean)
        mean = torch.tensor(preprocess.mean).view(1, channels, 1, 1)
        std = torch.tensor(preprocess.std).view(1, channels, 1, 1)
        (outputs,) = ort_outputs(proto.SerializeToString(), [inputs * std + mean], f"{what} (embedded)")
        diff = max_abs_diff(outputs, reference)
        check_close(diff, f"{what} (embedded preprocessing)", allowed(reference_scale(reference)))
    add_metadata(proto, preprocess)
    return proto.SerializeToString(), diff


def _compact_first(model: nn.Module, example_input: torch.Tensor | None) -> Compaction:
    compaction = run_compaction(unwrap_model(model), example_input)
    compaction.module = _export_ready(compaction.module)
    return compaction


def _folded_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with its masks folded into plain weights, ready to export. Its pruned weights are
    ``model``'s cached ``weight`` tensors (``fold_masks(share=True)``: no copy of them; the copy is dropped once
    exported), where ``model`` is float32 on the CPU -- ``_plain_zeros`` then turns -0.0 into +0.0 in that
    cache too, the same values, recomputed at its next forward anyway."""
    return _export_ready(fold_masks(model, share=True))


def _export_ready(model: nn.Module) -> nn.Module:
    """What every exported module is: on the CPU, float32, in eval mode, without -0.0 (``_plain_zeros``)."""
    return _plain_zeros(model.cpu().float().eval())


@torch.no_grad()
def _plain_zeros(model: nn.Module) -> nn.Module:
    """-0.0 -> +0.0 in every parameter. Folding ``weight_orig * mask`` leaves -0.0 wherever a pruned
    weight was negative; numerically the same, but the random sign bits cost ~30% of the gzip size."""
    for param in model.parameters():
        param.masked_fill_(param == 0, 0.0)  # in place: where() would hold two more copies of the largest layer
    return model


def _compact_export(compaction: Compaction, example: torch.Tensor, inputs: torch.Tensor,
                    reference: list[torch.Tensor], opset: int, path: Path,
                    before: tuple[int, int, int]) -> tuple[CompactReport, bytes]:
    """Check the compacted torch model against the original outputs, then export and check it.

    ``before``: params, MACs and raw file size of the uncompacted export."""
    target = compact_path(path)
    small = compaction.module
    outputs = _outputs(small, inputs, target.name)
    torch_diff = max_abs_diff([o.numpy() for o in outputs], reference)
    if not torch_diff <= allowed(reference_scale(reference)):
        raise RuntimeError(f"{target.name}: compaction is not exact: max |compacted - original| = {torch_diff:.3g} "
                           f"> {allowed(reference_scale(reference)):.3g} ({RULE})")
    weights = {f"{name}.weight": module.weight.detach() for name, module in small.named_modules()
               if isinstance(module, (nn.Linear, nn.Conv2d))}
    # no masks any more: every exact zero left in the compacted weights must survive the export
    result = _export_checked([small], example, inputs, reference, opset, weights, {}, target.name,
                             lambda: deepcopy_module(small))
    report = CompactReport(
        path=str(target), max_abs_diff=result["diff"], torch_max_abs_diff=torch_diff,
        params_before=before[0], params_after=count_params(small),
        macs_before=before[1], macs_after=mac_counts(small, example)[0],
        size_before=before[2], size_after=result["sizes"]["raw"], sizes=result["sizes"],
        units=compaction.units, kept_constant_units=compaction.kept_constant, zeros=result["zeros"])
    return report, result["bytes"]


class _FirstInput(nn.Module):
    """Runs a several-input model on its first input (the other inputs bound): for ``mac_counts``."""

    def __init__(self, model: nn.Module, rest: tuple[torch.Tensor, ...], names: tuple[str, ...] | None) -> None:
        super().__init__()
        self.model, self.rest, self.names = model, rest, names

    def forward(self, first: torch.Tensor) -> Any:
        tensors = (first, *(t[: first.shape[0]] for t in self.rest))
        return self.model(**dict(zip(self.names, tensors, strict=True))) if self.names else self.model(*tensors)


def _export_flat(folded: nn.Module, path: Path, verify_inputs: Any, opset: int, pruned: dict[str, int],
                 example_input: Any, compaction: Any, preprocess: Preprocess | None) -> ExportReport:
    if example_input is not None or compaction is not None or preprocess is not None:
        raise UserError("export_onnx: example_input, compact and preprocess are for a model of one float input; "
                        "with integer, several or named inputs (or dict outputs) give verify_inputs only")
    fields = export_flat(folded, path, verify_inputs, opset, pruned)
    batch, names = as_batch(verify_inputs)
    macs, nonzero_macs = mac_counts(_FirstInput(folded, batch[1:], names), batch[0])
    return ExportReport(path=str(path), opset=opset, exporter=EXPORTER, params=count_params(folded),
                        nonzero_params=count_params(folded, nonzero=True), macs=macs, nonzero_macs=nonzero_macs,
                        **fields)
