"""Width arithmetic: how many units a rate prunes, and the kept count aligned to a channel multiple.

A leaf: plain integers in and out, so masks, plans and the structured path all use it without importing each
other. ``count_to_prune`` follows torch.nn.utils.prune (an int is a count, a float a fraction of the
survivors); ``aligned_keep`` rounds the kept count to the nearest multiple of N (halves up), never below N and
never above ``alive`` (masks only shrink); a group narrower than N is not pruned at all.
"""

from __future__ import annotations

import math

from compress.errors import UserError


def count_to_prune(amount: int | float, surviving: int) -> int:
    """torch's convention: int = count, float = fraction (rounded) of ``surviving``."""
    if isinstance(amount, bool) or amount < 0:
        raise UserError(f"amount must be a non-negative int or a float in [0, 1], got {amount!r}")
    if isinstance(amount, float):
        if amount > 1:
            raise UserError(f"fractional amount must be in [0, 1], got {amount}")
        return round(amount * surviving)
    if amount > surviving:
        raise UserError(f"cannot prune {amount} of {surviving} surviving entries")
    return amount


def resolve_multiple(value: int | str) -> int:
    """``prune.channel_multiple``: an int >= 1, or ``auto`` = onnxruntime's block on this CPU (16 / 8 / 1)."""
    if value == "auto":
        from compress.runtime import vector_block

        return vector_block()
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"prune.channel_multiple: {value!r} must be an int >= 1 or 'auto'")
    return value


def aligned_keep(alive: int, rate: float, multiple: int = 1) -> int:
    """Units kept when ``rate`` of the ``alive`` units is pruned, aligned to ``multiple`` (module docstring)."""
    keep = alive - count_to_prune(rate, alive)
    if multiple > 1:
        if alive <= multiple:
            return alive
        keep = min(alive, max(multiple, multiple * math.floor(keep / multiple + 0.5)))
    return max(1, keep)
