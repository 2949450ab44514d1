"""What the data-reading scorers feed a model and take back, for any model a user brings.

A scorer batch is ``(inputs, labels)``: ``inputs`` one tensor (``model(inputs)``) or a mapping of keyword
tensors (``model(**inputs)``: a Hugging Face batch, whose ``labels`` entry is split off first). A model's
output is its logits, or what carries them: a mapping or ``ModelOutput`` with ``logits``, or a tuple whose
first item they are. Sequence outputs (``[batch, positions, classes]`` with ``[batch, positions]`` labels)
are scored per position, labels of -100 left out (the Hugging Face convention).

GraSP needs a Hessian-vector product. It is exact (double backward; attention on its math kernel, which has
second derivatives) unless the model holds an op torch has no second derivative for (timm's hardsigmoid,
for one): then a central difference of two gradients stands in, with a warning naming the op.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from compress.errors import UserError

Inputs = torch.Tensor | dict[str, torch.Tensor]
Batch = tuple[Inputs, torch.Tensor]
IGNORE_INDEX = -100
# central difference step, relative to |w| / |v| (float32: the cube root of its epsilon balances the
# rounding error against the truncation error)
FINITE_DIFFERENCE_STEP = 1e-2


def scorer_batch(batch: Any, device: torch.device | None = None) -> Batch:
    """One batch as ``(inputs, labels)`` (on ``device`` when given); a one-line UserError otherwise."""
    if isinstance(batch, Mapping):
        inputs: Any = {key: value for key, value in batch.items() if key != "labels"}
        labels = batch.get("labels")
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        inputs, labels = batch[0], batch[1]
    else:
        raise UserError("score batches: each batch must be (inputs, labels) or a mapping with 'labels', "
                        f"not a {type(batch).__name__}")
    tensors = inputs.values() if isinstance(inputs, Mapping) else [inputs]
    if not (labels is None or torch.is_tensor(labels)) or not all(torch.is_tensor(t) for t in tensors):
        raise UserError("score batches: inputs and labels must be tensors (a mapping of tensors for inputs)")
    if device is not None:
        inputs = {k: v.to(device) for k, v in inputs.items()} if isinstance(inputs, Mapping) else inputs.to(device)
        labels = None if labels is None else labels.to(device)
    return inputs, labels


def scorer_batches(batches: Iterable[Any] | None, device: torch.device | None = None) -> list[Batch]:
    return [scorer_batch(batch, device) for batch in batches or []]


def forward(model: nn.Module, inputs: Inputs) -> Any:
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's output (see the module docstring); a one-line UserError when there are none."""
    if torch.is_tensor(output):
        return output
    found = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if found is None and isinstance(output, (tuple, list)) and output:
        found = output[0]
    if not torch.is_tensor(found):
        raise UserError(f"scorer: the model returns a {type(output).__name__} without logits: return a tensor, "
                        "a mapping or ModelOutput with 'logits', or a tuple whose first item is the logits")
    return found


def batch_loss(model: nn.Module, batch: Batch, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy of ``model`` on ``batch`` at logit ``temperature`` (per position for sequence outputs)."""
    inputs, labels = batch
    if labels is None:
        raise UserError("score batches: snip and grasp read the loss: give each batch labels ((inputs, labels), "
                        "or a mapping with 'labels')")
    logits = logits_of(forward(model, inputs)).float() / temperature
    if logits.dim() > 2 and labels.dim() == logits.dim() - 1:
        logits, labels = logits.flatten(0, -2), labels.flatten()
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def ones_input(batch: Batch, dtype: torch.dtype) -> Inputs:
    """SynFlow's all-ones input: one example shaped like the batch's, every float tensor ones (in ``dtype``)."""
    inputs, _ = batch
    named = inputs if isinstance(inputs, Mapping) else {"": inputs}
    if not any(t.is_floating_point() for t in named.values()):
        kinds = ", ".join(f"{key or 'inputs'}: {t.dtype}" for key, t in named.items())
        raise UserError(f"prune.method 'synflow' feeds the network all-ones float inputs; this model's are not "
                        f"float ({kinds}, e.g. token ids): use snip, grasp or magnitude")
    ones = {key: torch.ones((1, *t.shape[1:]), dtype=dtype, device=t.device) if t.is_floating_point() else t[:1]
            for key, t in named.items()}
    return ones if isinstance(inputs, Mapping) else ones[""]


def summed_gradients(model: nn.Module, tensors: Sequence[torch.Tensor], batches: Sequence[Batch],
                     temperature: float = 1.0) -> list[torch.Tensor]:
    """The gradient of the loss at ``temperature`` with respect to ``tensors``, summed over ``batches``."""
    total = [torch.zeros_like(t) for t in tensors]
    for batch in batches:
        for acc, grad in zip(total, torch.autograd.grad(batch_loss(model, batch, temperature), tensors),
                             strict=True):
            acc += grad
    return total


def _exact_hvp(model, tensors, batches, vector, temperature) -> list[torch.Tensor]:
    total = [torch.zeros_like(t) for t in tensors]
    for batch in batches:
        grads = torch.autograd.grad(batch_loss(model, batch, temperature), tensors, create_graph=True)
        product = sum((grad * v).sum() for grad, v in zip(grads, vector, strict=True))
        for acc, grad in zip(total, torch.autograd.grad(product, tensors), strict=True):
            acc += grad
    return total


def _finite_difference_hvp(model, tensors, batches, vector, temperature) -> list[torch.Tensor]:
    """``(grad(w + h v) - grad(w - h v)) / 2h``; ``tensors`` are restored exactly afterwards."""
    norm = torch.sqrt(sum((v.double() ** 2).sum() for v in vector))
    if float(norm) == 0.0:
        return [torch.zeros_like(t) for t in tensors]
    scale = torch.sqrt(sum((t.detach().double() ** 2).sum() for t in tensors))
    step = FINITE_DIFFERENCE_STEP * float(max(scale, torch.ones((), dtype=torch.float64))) / float(norm)
    saved = [t.detach().clone() for t in tensors]
    devices = sorted({t.device.index or 0 for t in tensors if t.is_cuda})
    try:
        # both passes draw the same dropout masks, or their difference would be noise
        with torch.random.fork_rng(devices=devices):
            seed = int(torch.randint(2**62, ()))
            gradients = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for t, s, v in zip(tensors, saved, vector, strict=True):
                        t.copy_(s).add_(v, alpha=sign * step)
                torch.manual_seed(seed)
                gradients.append(summed_gradients(model, tensors, batches, temperature))
        plus, minus = gradients
    finally:
        with torch.no_grad():
            for t, s in zip(tensors, saved, strict=True):
                t.copy_(s)
    return [(p - m) / (2 * step) for p, m in zip(plus, minus, strict=True)]


def _missing_second_derivative(error: RuntimeError) -> str | None:
    text = str(error)
    if "derivative for" in text and "not implemented" in text:
        return text.split("derivative for", 1)[1].split("is not implemented", 1)[0].strip()
    return None


def hessian_vector_product(model: nn.Module, tensors: Sequence[torch.Tensor], batches: Sequence[Batch],
                           vector: Sequence[torch.Tensor], temperature: float = 1.0) -> list[torch.Tensor]:
    """``H v`` of the summed loss over ``batches`` with respect to ``tensors`` (see the module docstring)."""
    try:
        with sdpa_kernel(SDPBackend.MATH):
            return _exact_hvp(model, tensors, batches, vector, temperature)
    except RuntimeError as error:
        op = _missing_second_derivative(error)
        if op is None:
            raise
    warnings.warn(f"grasp: torch has no second derivative of {op} in this model; its Hessian-gradient "
                  "product is a central difference of two gradients instead", stacklevel=3)
    return _finite_difference_hvp(model, tensors, batches, vector, temperature)
