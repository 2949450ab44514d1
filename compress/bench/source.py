"""What gets benchmarked: a pruned model, a ticket (dict, ticket.pt or run dir) or an ONNX file.

Also the facts recorded next to each timing: fraction of weights and of MACs that remain.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from compress import paths
from compress.errors import UserError, first_line
from compress.pruning import PRUNABLE_TYPES, apply_masks, fold_masks, magnitude_masks, prunable_modules


@dataclass
class Source:
    """``model`` (masks installed or folded; None for an ONNX file) or ``onnx_path``, and one example."""

    label: str
    model: nn.Module | None = None
    onnx_path: Path | None = None
    example_input: torch.Tensor | None = None  # a batch of one
    _compact: nn.Module | str | None = field(default=None, repr=False)  # the module, or why not

    def compacted(self) -> nn.Module:
        """``compress.pruning.compact.compact_model`` of the model, computed once; ValueError when unsupported."""
        if self._compact is None:
            from compress.pruning.compact import compact_model

            try:
                self._compact = compact_model(self.model).cpu().float().eval()
            except ValueError as error:
                self._compact = first_line(error)
        if isinstance(self._compact, str):
            raise UserError(self._compact)
        return self._compact

    def require_example(self, what: str) -> torch.Tensor:
        if self.example_input is None:
            raise UserError(f"{what} needs example_input (a batch of one input) for a plain nn.Module")
        return self.example_input


SourceLike = nn.Module | dict | str | Path | Source


def _ticket_example(ticket: dict) -> torch.Tensor:
    shape = ticket["shape"]
    side = shape["image_size"]
    return torch.randn(1, shape["in_channels"], side, side, generator=torch.Generator().manual_seed(0))


def resolve_source(source: SourceLike, example_input: torch.Tensor | None = None,
                   label: str | None = None) -> Source:
    """Accept a module, a ticket dict, a ``ticket.pt``, a run directory holding one, or a ``.onnx`` file."""
    example = example_input[:1].detach().cpu().float() if example_input is not None else None
    if isinstance(source, Source):
        if example is None:
            return source
        return Source(label or source.label, source.model, source.onnx_path, example)
    if isinstance(source, nn.Module):
        return Source(label or type(source).__name__.lower(), model=source, example_input=example)
    if isinstance(source, dict):
        from compress.ticket import ticket_model

        return Source(label or source["model"]["name"], model=ticket_model(source),
                      example_input=example if example is not None else _ticket_example(source))
    if not isinstance(source, (str, Path)):
        raise UserError(f"expected an nn.Module, a ticket dict or a path, got {type(source).__name__}")
    path = Path(source)
    if path.suffix == ".onnx":
        return onnx_source(path, example, label)
    if path.is_dir():
        if not (path / paths.TICKET).is_file():
            raise UserError(f"{path}: no {paths.TICKET} in this directory (a run writes it after its first round)")
        label = label or path.name
        path = path / paths.TICKET
    from compress.ticket import read_ticket, ticket_model

    ticket = read_ticket(path)
    return Source(label or ticket["model"]["name"], model=ticket_model(ticket),
                  example_input=example if example is not None else _ticket_example(ticket))


def onnx_source(path: str | Path, example_input: torch.Tensor | None = None, label: str | None = None) -> Source:
    """An ONNX file to run as given (whatever its suffix); ``UserError`` naming it when it is not one."""
    path = Path(path)
    example = example_input[:1].detach().cpu().float() if example_input is not None else None
    graph = _onnx_graph(path)
    return Source(label or path.stem, onnx_path=path,
                  example_input=example if example is not None else onnx_example(path, graph))


def _onnx_graph(path: Path):
    """The file's ONNX graph (external data not loaded), or a one-line ``UserError`` naming the file."""
    import onnx
    from google.protobuf.message import DecodeError

    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, UnicodeDecodeError, ValueError, OSError) as error:
        reason = first_line(error)
        raise UserError(f"{path}: not an ONNX model ({reason})") from None
    if model.ir_version <= 0 or not model.graph.node or not model.graph.input:
        raise UserError(f"{path}: not an ONNX model (no graph with inputs and nodes in it)")
    _check_external_data(path, model)
    _check_inputs(path, model.graph)
    return model.graph


# a random input batch larger than this is refused before it is allocated: a 103-byte ONNX file declaring
# [N, 3, 20000, 20000] asked for 4.8 GB per example
MAX_INPUT_BYTES = 1 << 30


def _check_external_data(path: Path, model) -> None:
    from compress.export.onnx.external import check_external_data

    check_external_data(model, path.parent, path)


def _check_inputs(path: Path, graph) -> None:
    """One float32 input (an int64 token input or several inputs: this benchmark makes one float batch)."""
    weights = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in weights]  # IR < 4 lists weights as inputs
    if len(inputs) != 1:
        names = ", ".join(repr(value.name) for value in inputs)
        raise UserError(f"{path}: {len(inputs)} graph inputs ({names}); bench_sparse --onnx times models with "
                        "one float32 input")
    from onnx import TensorProto

    kind = inputs[0].type.tensor_type.elem_type
    if kind != TensorProto.FLOAT:
        name = TensorProto.DataType.Name(kind) if kind in TensorProto.DataType.values() else str(kind)
        raise UserError(f"{path}: input {inputs[0].name!r} is {name}; bench_sparse --onnx times models with one "
                        "float32 input")


def check_input_bytes(shape: list[int] | tuple[int, ...], what: str) -> None:
    """Refuse a float32 batch of ``shape`` above ``MAX_INPUT_BYTES`` before it is allocated."""
    size = 4
    for dim in shape:
        size *= int(dim)  # Python ints: a crafted shape cannot overflow
    if size > MAX_INPUT_BYTES:
        raise UserError(f"{what}: a float32 batch of shape {list(shape)} is {size:,} bytes, over the "
                        f"{MAX_INPUT_BYTES:,}-byte input budget")


def onnx_example(path: Path, graph=None) -> torch.Tensor:
    """A random batch of one for the ONNX file's first input (its non-batch dims must be fixed)."""
    graph = graph if graph is not None else _onnx_graph(Path(path))
    weights = {init.name for init in graph.initializer}
    first = next(value for value in graph.input if value.name not in weights)
    dims = first.type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims][1:]
    if not dims or any(d is None or d <= 0 for d in shape):
        raise UserError(f"{path}: input {first.name!r} has no shape or symbolic non-batch dims; pass an "
                        "example input")
    check_input_bytes([1, *shape], f"{path}: input {first.name!r}")
    return torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))


def weights_remaining(model: nn.Module) -> float:
    """Nonzero fraction of all Conv2d/Linear weights (the effective ones: masks folded)."""
    folded = fold_masks(model)
    total = nonzero = 0
    for _, module in prunable_modules(folded):
        total += module.weight.numel()
        nonzero += int(torch.count_nonzero(module.weight.detach()))
    if not total:
        raise UserError("the model has no Conv2d or Linear layer")
    return nonzero / total


def onnx_weights_remaining(path: Path) -> float:
    """Nonzero fraction of the weight initializers of Conv, Gemm and MatMul nodes."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    initializers = {init.name: init for init in graph.initializer}
    names = {node.input[1] for node in graph.node
             if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in initializers}
    total = nonzero = 0
    for name in names:
        array = numpy_helper.to_array(initializers[name])
        total += array.size
        nonzero += int((array != 0).sum())
    if not total:
        raise UserError(f"{path}: no Conv/Gemm/MatMul weight initializers")
    return nonzero / total


def macs_remaining(model: nn.Module, example_input: torch.Tensor) -> float:
    """MACs of Conv2d/Linear counting only nonzero weights, over the dense count (``count_macs``)."""
    from compress.pruning import count_macs

    folded = fold_masks(model).cpu().float().eval()
    dense = count_macs(folded, example_input)
    return count_macs(folded, example_input, nonzero=True) / dense if dense else 1.0


def batch_of(example: torch.Tensor, batch_size: int, seed: int = 0) -> torch.Tensor:
    """A contiguous random batch shaped like ``example`` (values do not change dense or CSR timings)."""
    if batch_size < 1:
        raise UserError(f"batch sizes must be >= 1, got {batch_size}")
    check_input_bytes([batch_size, *example.shape[1:]], f"batch size {batch_size}")
    return torch.randn(batch_size, *example.shape[1:], generator=torch.Generator().manual_seed(seed))


def magnitude_ticket(model: nn.Module, remaining: float) -> nn.Module:
    """Install torch-prune masks keeping the ``remaining`` largest-|w| fraction of every Conv2d/Linear.

    Layer-wise (each layer keeps the same fraction), one shot; for benchmarks on random weights, where
    only the sparsity pattern's density matters, not what the weights learned.
    """
    if not 0.0 < remaining <= 1.0:
        raise UserError(f"remaining must be in (0, 1], got {remaining}")
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    weights = {name: m.weight.detach() for name, m in layers}
    masks = magnitude_masks(weights, {name: torch.ones_like(w) for name, w in weights.items()},
                            {name: 1.0 - remaining for name in weights}, {name: name for name in weights})
    return apply_masks(model, masks).eval()
