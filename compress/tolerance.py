"""The one verification tolerance: how far two computations of the same model's outputs may differ.

Used by every check that compares outputs computed two ways -- the compacted model against the masked
one (torch vs torch), and onnxruntime against torch -- and recorded in export.json (``tolerance``,
``tolerance_rule``). Float32 kernels that sum in another order differ by rounding, which grows with the
magnitude of what is summed, so a fixed absolute bound fails on models whose outputs are large (a
randomly initialised DLA-34 emits logits near 1e7) while being far too loose for tiny ones. The rule:

    max |a - b|  <=  ABSOLUTE + RELATIVE * max |reference|

over all outputs of the verification batch; NaN never passes. A leaf module: imports nothing of compress.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

ABSOLUTE = 1e-4  # outputs near 0: onnxruntime's float32 kernels differ from torch's by ~1e-6
RELATIVE = 1e-5  # ~100 float32 ulps of the largest output: rounding over long sums, far below any real bug
RULE = f"max |a - b| <= {ABSOLUTE:g} + {RELATIVE:g} * max |reference|"


def output_scale(values: Iterable[float]) -> float:
    """``max |reference|`` from per-output maxima of the absolute value (0 for no outputs)."""
    return max((abs(float(v)) for v in values), default=0.0)


def allowed(scale: float) -> float:
    """The largest difference accepted for outputs whose largest magnitude is ``scale``."""
    return ABSOLUTE + RELATIVE * (scale if math.isfinite(scale) else 0.0)


def within(diff: float, scale: float) -> bool:
    return diff <= allowed(scale)  # False for NaN
