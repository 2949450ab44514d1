"""Which pruned units are ranked together: each layer (or channel group) alone, or under ``prune.scope:
global`` every one that shares a rate. A leaf module: plan.py and structured.py both ask it."""

from __future__ import annotations

import math
from collections.abc import Mapping

# rates a recipe means as one (0.2 written once as a literal and once as 1 - 0.8) must share a pool, rates a
# user wrote differently (0.2 and 0.21) must not: closer than one part in a million is the same rate
SAME_RATE = 1e-6


def rate_pools(rates: Mapping[str, float], scope_global: bool) -> dict[str, str]:
    """``{name: pool}``: ``name`` itself per layer, else ``"global:<i>"`` for the i-th distinct rate met."""
    if not scope_global:
        return {name: name for name in rates}
    distinct: list[float] = []
    pools = {}
    for name, rate in rates.items():
        index = next((i for i, seen in enumerate(distinct) if math.isclose(rate, seen, rel_tol=SAME_RATE)), None)
        if index is None:
            distinct.append(float(rate))
            index = len(distinct) - 1
        pools[name] = f"global:{index}"
    return pools
