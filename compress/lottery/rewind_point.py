"""The rewind point of a search: the state survivors go back to at each level, in memory or in a file, and
what a search needs in memory beyond the model (the bound checked before it starts)."""

from __future__ import annotations

import torch
import torch.nn as nn

from compress.errors import UserError
from compress.io import MappedFile, file_backed
from compress.pruning import is_pruned, load_plain_state_dict, plain_state_bytes, plain_state_dict
from compress.pruning.apply import PARAM

OFFLOAD_MARGIN = 1.25  # the rewind point goes to a file when 1.25 x the search's need does not fit


def gradient_bytes(model: nn.Module) -> int:
    """Bytes of the gradients a training step will allocate: one per trainable parameter without one."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad and p.grad is None)


def memory_need(model: nn.Module, names: list[str]) -> int:
    """Bytes a search on ``model`` will allocate at least, beyond the model: per pruned weight not yet masked a
    mask and the masked ``weight`` torch prune computes, a gradient per trainable parameter without one, and
    the rewind point (a copy of the state). Activations and the optimizer's state come on top."""
    modules = dict(model.named_modules())
    fresh = [getattr(modules[name], PARAM) for name in names if not is_pruned(modules[name])]
    masked = 2 * sum(weight.numel() * weight.element_size() for weight in fresh)
    return masked + gradient_bytes(model) + plain_state_bytes(model)


class RewindPointMixin:
    """``snapshot`` / ``rewind`` for ``LotterySearch`` (which sets ``model``, ``offload_rewind``,
    ``rewind_state``, ``_rewind_file`` and ``rewind_to``)."""

    model: nn.Module
    offload_rewind: bool
    rewind_to: int
    rewind_state: dict[str, torch.Tensor] | None
    _rewind_file: MappedFile | None

    def snapshot(self) -> None:
        """Record the current weights, biases and buffers (BatchNorm statistics) as the rewind point."""
        self.keep_rewind_state(plain_state_dict(self.model, clone=False))

    def keep_rewind_state(self, state: dict[str, torch.Tensor] | None) -> None:
        """Make ``state`` the rewind point: a copy in memory, or in a file (``offload_rewind``)."""
        self.rewind_state, self._rewind_file = None, None  # the old point is dropped before the new one is made
        if state is not None and self.offload_rewind:
            self.rewind_state, self._rewind_file = file_backed(state)
        elif state is not None:
            self.rewind_state = {key: value.clone() for key, value in state.items()}

    def rewind(self) -> None:
        """Survivors go back to the snapshot bit for bit; masks stay."""
        if self.rewind_state is None:
            raise UserError(f"no rewind snapshot: call step(i) during level 0 (rewind_to={self.rewind_to})")
        load_plain_state_dict(self.model, self.rewind_state)
        if self._rewind_file is not None:  # the pages just read would stay resident while mapped
            self.rewind_state = None
            self.rewind_state = self._rewind_file.load()
