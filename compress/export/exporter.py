"""torch -> ONNX bytes with a dynamic batch dimension, and which module to blame when that fails.

Exporter choice: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``).
Measured with torch 2.14 / onnx 1.23 / onnxruntime 1.32 on every model we ship (LeNet-300-100,
LeNet-5, Conv-2/4/6, VGG-19, ResNet-20) and timm resnet18, mobilenetv3_small_050, efficientnet_b0
and vit_tiny_patch16_224 (dynamic batch, checked in onnxruntime on another batch size):

* TorchScript exporter: all of them export at the opset asked for (17, the recipe default),
  in 0.1-1.5 s each, max |ORT - torch| <= 2e-5.
* dynamo exporter: also runs on all of them, but it only implements opset >= 18 and down-converts;
  for every model with a global average pool (ResNet-20, VGG-19, all timm CNNs) that conversion fails
  ("axes_input_to_attribute ... No initializer or constant input") and it silently keeps opset 18,
  so ``opset=17`` would not be honoured. It is also 3-10x slower (3-11 s per model), and its
  optimiser renames or merges initializers (LeNet's three zero biases came out as one ``val_5``),
  which defeats mapping initializers back to parameters for the zero-count check.

We pass ``training=PRESERVE`` on a model already in eval mode: that exports eval-mode semantics but
skips the exporter's Conv+BatchNorm folding, so every pruned weight stays a named initializer equal
to the folded torch weight (ONNX Runtime fuses Conv+BN itself when it loads the graph, so inference
loses nothing). The legacy exporter emits a DeprecationWarning in torch >= 2.9; it is still shipped
and is the one that honours the opset, so we silence that warning here.
"""

from __future__ import annotations

import io
import warnings

import torch
import torch.nn as nn

EXPORTER = "torch.onnx.export(dynamo=False) (TorchScript)"
INPUT_NAME = "input"


def output_names(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _export(model: nn.Module, args: tuple, opset: int, outputs: int) -> bytes:
    buffer = io.BytesIO()
    inputs = [INPUT_NAME] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]
    names = output_names(outputs)
    with warnings.catch_warnings():
        # the legacy-exporter DeprecationWarning, and tracer warnings about Python values baked into
        # the graph: the onnxruntime check on another batch size catches any that matter
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # aimed at models exported in training mode; ours is in eval mode, so folding is safe
        warnings.filterwarnings("ignore", message="It is recommended that constant folding be turned off")
        torch.onnx.export(model, args, buffer, dynamo=False, opset_version=opset, input_names=inputs,
                          output_names=names, dynamic_axes={name: {0: "batch"} for name in inputs + names},
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True)
    return buffer.getvalue()


def to_onnx(model: nn.Module, example_input: torch.Tensor, opset: int, outputs: int = 1) -> bytes:
    """Serialised ONNX of ``model`` (in eval mode, on CPU) with batch dimension 0 dynamic.

    On failure: ValueError naming the innermost module that cannot be exported on its own.
    """
    try:
        return _export(model, (example_input,), opset, outputs)
    except Exception as error:  # the exporter raises many types (RuntimeError, OnnxExporterError, ...)
        reason = _first_line(error)
        culprit = failing_module(model, example_input, opset)
        if culprit:
            name, kind = culprit
            raise ValueError(f"cannot export module {name!r} ({kind}) to ONNX opset {opset}: {reason}") from error
        raise ValueError(f"ONNX export (opset {opset}) failed: {reason}") from error


def failing_module(model: nn.Module, example_input: torch.Tensor, opset: int) -> tuple[str, str] | None:
    """The deepest submodule whose own export fails, found by exporting each with its recorded inputs."""
    recorded: dict[str, tuple] = {}
    hooks = [module.register_forward_hook(lambda _m, args, _out, name=name: recorded.setdefault(name, args))
             for name, module in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(example_input)
    except Exception:  # the forward may itself be what fails; whatever was recorded still helps
        pass
    finally:
        for hook in hooks:
            hook.remove()
    modules = dict(model.named_modules())
    for name in sorted(recorded, key=lambda n: n.count("."), reverse=True):
        args = recorded[name]
        if not args or not all(isinstance(arg, torch.Tensor) for arg in args):
            continue
        try:
            _export(modules[name], args, opset, 1)
        except Exception:
            return name, type(modules[name]).__name__
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
