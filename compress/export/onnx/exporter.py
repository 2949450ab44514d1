"""torch -> ONNX bytes with a dynamic batch dimension, and which module to blame when that fails.

Exporter choice: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``).
Measured with torch 2.14 / onnx 1.23 / onnxruntime 1.32 on every model we ship (LeNet-300-100,
LeNet-5, Conv-2/4/6, VGG-19, ResNet-20) and timm resnet18, mobilenetv3_small_050, efficientnet_b0
and vit_tiny_patch16_224 (dynamic batch, checked in onnxruntime on another batch size):

* TorchScript exporter: all of them export at the opset asked for (17, the recipe default),
  in 0.05-1.5 s each, max |ORT - torch| <= 2e-5.
* dynamo exporter: also exports all of them, but it only implements opset >= 18 and down-converts;
  for every model with a global average pool (ResNet-20, VGG-19, all timm CNNs) that conversion fails
  ("axes_input_to_attribute ... No initializer or constant input") and it silently keeps opset 18,
  so ``opset=17`` would not be honoured. It is also 3-10x slower (1.5-11 s per model), and its
  graph optimiser rewrites initializers (LeNet-300-100's all-zero biases vanish from the graph), which
  makes the file a less literal image of the parameters we verify.

We pass ``training=PRESERVE`` on a model already in eval mode: that exports eval-mode semantics but
skips the exporter's Conv+BatchNorm folding, so every pruned weight stays a named initializer equal
to the folded torch weight (ONNX Runtime fuses Conv+BN itself when it loads the graph, so inference
loses nothing). The legacy exporter emits a DeprecationWarning in torch >= 2.9; it is still shipped
and is the one that honours the opset, so we silence that warning here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import torch
import torch.nn as nn

from compress.errors import UserError, first_line
from compress.models.unwrap import unwrap_model
from compress.runtime import release_cycles

EXPORTER = "torch.onnx.export(dynamo=False) (TorchScript)"
DYNAMO_EXPORTER = "torch.onnx.export(dynamo=True) (torch.export)"
INPUT_NAME = "input"


def output_names(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


class _Captured:
    """A writable file that keeps the bytes object it is given instead of copying it into a buffer:
    ``BytesIO`` would hold the model twice more (its buffer, then ``getvalue``'s copy)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(data)
        return len(data)

    def flush(self) -> None:
        pass

    def getvalue(self) -> bytes:
        return self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)


def _export(model: nn.Module, args: tuple, opset: int, outputs: int) -> bytes:
    buffer = _Captured()
    inputs = [INPUT_NAME] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]
    names = output_names(outputs)
    with warnings.catch_warnings():
        # the legacy-exporter DeprecationWarning, and tracer warnings about Python values baked into
        # the graph: the onnxruntime check on another batch size catches any that matter
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # aimed at models exported in training mode; ours is in eval mode, so folding is safe
        warnings.filterwarnings("ignore", message="It is recommended that constant folding be turned off")
        with _log_to_stderr():
            torch.onnx.export(model, args, buffer, dynamo=False, opset_version=opset, input_names=inputs,
                              output_names=names, dynamic_axes={name: {0: "batch"} for name in inputs + names},
                              training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True)
    return buffer.getvalue()


@contextlib.contextmanager
def _log_to_stderr():
    """The TorchScript exporter always turns its log on (torch checks the truthiness of the function
    ``_jit_is_onnx_log_enabled`` instead of calling it) and dumps the whole IR graph to stdout on a
    failure; keep stdout for our report. Its default stream is stdout, restored afterwards."""
    setter = getattr(torch._C, "_jit_set_onnx_log_output_stream", None)
    if setter is None:
        yield
        return
    setter("stderr")
    try:
        yield
    finally:
        setter("stdout")


def to_onnx(model: nn.Module, example_input: torch.Tensor, opset: int, outputs: int = 1) -> bytes:
    """Serialised ONNX of ``model`` (in eval mode, on CPU) with batch dimension 0 dynamic (``export_graph``)."""
    return export_graph(model, example_input, opset, outputs)[0]


def export_graph(model: nn.Module, example_input: torch.Tensor, opset: int, outputs: int = 1) -> tuple[bytes, str]:
    """ONNX bytes of ``model`` with batch dimension 0 dynamic, and the exporter that made them.

    The TorchScript exporter first (see the module docstring); then the same with timm's explicit attention;
    then the dynamo exporter, which traces through ``torch.export`` and so handles what the TorchScript
    symbolics cannot with a dynamic batch (``nn.Unfold``, adaptive pools of non-divisible sizes, ``F.fold``,
    antialiased bicubic resizes: timm HaloNet, CSATv2, VOLO, NaFlexViT). It exports at opset 18 and
    down-converts; where that fails the export is refused naming the opset that works, never silently raised.
    On failure: UserError naming the innermost module that cannot be exported on its own.
    A torch.compile / DDP / DataParallel / EMA wrapper is unwrapped first.
    """
    model = unwrap_model(model)
    try:
        return _export(model, (example_input,), opset, outputs), EXPORTER
    except Exception as caught:  # the exporter raises many types (RuntimeError, OnnxExporterError, ...)
        # the fallbacks run after this block: inside it the failed export's frames (its half-built graph,
        # a copy of the weights) would stay alive through each further export
        error = _without_frames(caught)
    release_cycles()  # what the failed export built (a copy of the weights) sits in reference cycles
    exported = _export_unfused(model, example_input, opset, outputs)
    if exported is not None:
        return exported, EXPORTER
    reason = first_line(error)
    release_cycles()
    dynamo = _export_dynamo(model, example_input, opset, outputs)
    if dynamo is not None:
        data, written = dynamo
        if written == opset:
            return data, DYNAMO_EXPORTER
        del data, dynamo  # not held by the refusal's traceback while the caller exports again
        raise UserError(f"ONNX export at opset {opset} failed ({reason}); the dynamo exporter exports this "
                         f"model at opset {written}: set export.opset: {written} (or --opset {written})"
                         ) from error
    culprit = failing_module(model, example_input, opset)
    if culprit:
        name, kind = culprit
        raise UserError(f"cannot export module {name!r} ({kind}) to ONNX opset {opset}: {reason}") from error
    raise UserError(f"ONNX export (opset {opset}) failed: {reason}") from error


def _without_frames(error: BaseException) -> BaseException:
    """``error`` and the exceptions chained to it without their tracebacks: the message and types stay for
    the report, the frames (and every tensor they reference) go."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__
    return error


def _export_dynamo(model: nn.Module, example_input: torch.Tensor, opset: int,
                   outputs: int) -> tuple[bytes, int] | None:
    """The dynamo exporter's bytes and the opset it wrote, or None when it fails too (the TorchScript error is the one reported)."""
    inputs = [INPUT_NAME]
    names = output_names(outputs)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            # its progress lines ("[torch.onnx] Obtain model graph ...") go to stdout; keep stdout for our report
            warnings.simplefilter("ignore")
            # asked for an opset below 18 it exports at 18 and down-converts, keeping 18 when that fails
            program = torch.onnx.export(model, (example_input,), dynamo=True, opset_version=opset,
                                        input_names=inputs, output_names=names, verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch")},), optimize=False)
        proto = program.model_proto
        del program  # its exported graph is not needed to serialise the proto
    except Exception:  # noqa: BLE001  (the TorchScript error is the one reported)
        return None
    finally:
        quiet.setLevel(level)
    written = next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), opset)
    return proto.SerializeToString(), int(written)


def _export_unfused(model: nn.Module, example_input: torch.Tensor, opset: int, outputs: int) -> bytes | None:
    """The export again with timm's attention on its explicit (matmul, softmax) path: timm's switch for
    export, since ``scaled_dot_product_attention`` with a traced ``is_causal`` does not trace (DINOv3,
    EVA). The same function, so the onnxruntime check against the (fused) torch model still applies.
    None when no module has the switch or the export fails again."""
    fused = [module for module in model.modules() if getattr(module, "fused_attn", None) is True]
    if not fused:
        return None
    for module in fused:
        module.fused_attn = False
    try:
        return _export(model, (example_input,), opset, outputs)
    except Exception:  # noqa: BLE001  (the first error is the one reported)
        return None
    finally:
        for module in fused:
            module.fused_attn = True


def failing_module(model: nn.Module, example_input: torch.Tensor, opset: int) -> tuple[str, str] | None:
    """The innermost submodule whose own export fails: walk down from the root, at each level into the
    first child that fails when exported alone with the inputs it received in a forward pass. Top-down,
    so a big model costs a few exports per level, not one per module. None: only the root's own code fails.
    """
    model = unwrap_model(model)
    recorded: dict[str, tuple] = {}

    def recorder(name: str):
        def hook(_module: nn.Module, args: tuple, _output) -> None:  # returns None: the output stays as is
            recorded.setdefault(name, args)
        return hook

    hooks = [module.register_forward_hook(recorder(name)) for name, module in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(example_input)
    except Exception:  # the forward may itself be what fails; whatever was recorded still helps
        pass
    finally:
        for hook in hooks:
            hook.remove()

    def fails(name: str, module: nn.Module) -> bool:
        args = recorded.get(name)
        if not args or not all(isinstance(arg, torch.Tensor) for arg in args):
            return False  # never ran, or takes non-tensor inputs: cannot be exported alone
        try:
            _export(module, args, opset, 1)
        except Exception:
            return True
        return False

    name, module = "", model
    while True:
        children = [(f"{name}.{child}" if name else child, sub) for child, sub in module.named_children()]
        culprit = next(((n, m) for n, m in children if fails(n, m)), None)
        if culprit is None:
            return (name, type(module).__name__) if name else None
        name, module = culprit

