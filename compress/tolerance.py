"""The one verification tolerance: how far two computations of the same model's outputs may differ.

Used by every check that compares outputs computed two ways -- the compacted model against the masked
one (torch vs torch), and onnxruntime against torch -- and recorded in export.json (``tolerance``,
``tolerance_rule``). Float32 kernels that sum in another order differ by rounding, which grows with the
magnitude of what is summed, so a fixed absolute bound fails on models whose outputs are large (a
randomly initialised DLA-34 emits logits near 1e7) while being far too loose for tiny ones. The rule:

    max |a - b|  <=  ABSOLUTE + RELATIVE * max |reference|

over all outputs of the verification batch; NaN never passes.

The reference is torch's float32 result, which is itself rounded: on an ill-conditioned model (a randomly
initialised MixNet after a few steps: logits near 3e4, computed as differences of far larger numbers) torch
float32 is 1.5 away from the exact outputs while onnxruntime is 0.4 away, and the rule above would blame
onnxruntime. So where it fails, the model is run again in float64 (the exact outputs, to float32's
purposes) and the file passes when its outputs are about as accurate as torch's float32 ones -- within
FLOAT32_FACTOR times their error, plus the same allowance. Torch's error is one sample of float32 rounding,
and its size swings by an order of magnitude with the summation order: on a MixNet weight ticket (outputs
near 1e4, AVX-512 CPU) torch float32 is 1.6 from the exact outputs on one thread, 3.1 on two, 2.8 one row at
a time, while onnxruntime's own kernels land 13.5 away -- all of it rounding, about 1e-3 of the outputs.
A factor of 2 refused that correct file on one thread and passed it on two; 16 holds it with room to spare:

    max |b - exact|  <=  ABSOLUTE + RELATIVE * max |reference|  +  FLOAT32_FACTOR * max |a - exact|

A real export bug (a wrong split, a baked-in shape) is off by the outputs' own magnitude, far beyond either
term. A leaf module: imports nothing of compress.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

ABSOLUTE = 1e-4  # outputs near 0: onnxruntime's float32 kernels differ from torch's by ~1e-6
RELATIVE = 1e-5  # ~100 float32 ulps of the largest output: rounding over long sums, far below any real bug
FLOAT32_FACTOR = 16.0  # torch float32's own error varies ~10x with the summation order (module docstring)
RULE = (f"max |a - b| <= {ABSOLUTE:g} + {RELATIVE:g} * max |reference|; where that fails, max |b - exact| <= "
        f"{ABSOLUTE:g} + {RELATIVE:g} * max |reference| + {FLOAT32_FACTOR:g} * max |a - exact| (exact: the model in "
        "float64)")


def output_scale(values: Iterable[float]) -> float:
    """``max |reference|`` from per-output maxima of the absolute value (0 for no outputs)."""
    return max((abs(float(v)) for v in values), default=0.0)


def allowed(scale: float) -> float:
    """The largest difference accepted for outputs whose largest magnitude is ``scale``."""
    return ABSOLUTE + RELATIVE * (scale if math.isfinite(scale) else 0.0)


def within(diff: float, scale: float) -> bool:
    return diff <= allowed(scale)  # False for NaN


def within_float32_error(error: float, reference_error: float, scale: float) -> bool:
    """The float64 arbiter: ``error`` (of the computation checked) and ``reference_error`` (torch float32's)
    against the exact outputs; False for NaN."""
    return error <= allowed(scale) + FLOAT32_FACTOR * reference_error


def exact_outputs(disposable: torch.nn.Module, inputs: torch.Tensor | Sequence[torch.Tensor],
                  run: Callable[[torch.nn.Module, object], list[torch.Tensor]]) -> list[torch.Tensor] | None:
    """``run(model, inputs)`` in float64, on ``disposable`` (a copy the caller gives up: it is converted in
    place): the exact outputs the arbiter measures against. None when the model cannot run in float64 (an
    operator without a float64 kernel): then the first rule's verdict stands."""
    def widened(x):
        return x.double() if torch.is_tensor(x) and torch.is_floating_point(x) else x

    try:
        model = disposable.double()
        with torch.no_grad():
            outputs = run(model, widened(inputs) if torch.is_tensor(inputs) else [widened(x) for x in inputs])
        return [o.double() for o in outputs]
    except Exception:  # noqa: BLE001 -- any failure leaves the float32 rule's verdict in place
        return None


def max_abs(actual: Sequence[torch.Tensor], exact: Sequence[torch.Tensor]) -> float:
    """max |actual - exact| over paired outputs (float64 arithmetic); NaN propagates."""
    return max((float((torch.as_tensor(a).double() - e).abs().max()) if e.numel() else 0.0
                for a, e in zip(actual, exact, strict=True)), default=0.0)


@dataclass(frozen=True)
class Verdict:
    """``judge``'s answer: ``passes``, and where the relative rule failed and the model ran in float64, the
    checked computation's error and torch float32's against the exact outputs (else None)."""

    passes: bool
    error: float | None = None
    reference_error: float | None = None


def judge(diff: float, scale: float, reference: Sequence[torch.Tensor],
          error_against: Callable[[list[torch.Tensor]], float],
          exact: Callable[[], list[torch.Tensor] | None]) -> Verdict:
    """The whole rule for one check at ``diff`` = max |checked - reference| on outputs of magnitude ``scale``:
    the relative rule, and where it fails the float64 arbiter. ``exact()`` (the model run again in float64,
    ``exact_outputs``) is called only then; ``error_against(exact)`` is the checked computation's error."""
    if within(diff, scale):
        return Verdict(True)
    outputs = exact()
    if outputs is None:  # no float64 run: the relative rule's verdict stands
        return Verdict(False)
    error, reference_error = error_against(outputs), max_abs(reference, outputs)
    return Verdict(within_float32_error(error, reference_error, scale), error, reference_error)
