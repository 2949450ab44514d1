"""What each level of a ``LotterySearch`` cost to train, driven by any loop (own loop, callbacks).

``find_ticket.py`` counts a round's compute from its run dir (``experiment.training_compute``); a loop the
toolkit does not own has no run dir, so the search counts it itself: one optimizer step per ``on_step()`` /
``step(i)`` call, and the masks each level trained under. ``report(example_batch=...)`` turns the counts
into FLOPs with the same rule (3 x forward MACs x batch x iterations, dense-equivalent and at the mask's
nonzero MACs) and the same "compute to this ticket" as ``summary.json`` (``add_compute_to_ticket``).
"""

from __future__ import annotations

from typing import Any

import torch

from compress.errors import UserError, one_line
from compress.lottery.experiment import training_compute
from compress.lottery.summary import add_compute_to_ticket
from compress.pruning.macs import layer_macs


class ComputeMixin:
    """Per-level step counts and kept weights of ``LotterySearch`` (``level_compute``)."""

    recipe: Any
    model: torch.nn.Module
    names: list[str]
    _modules: list[torch.nn.Module]
    level: int
    step_count: int
    early_bird_steps: dict[int, int | None]

    def _init_compute(self) -> None:
        self.level_steps = 0  # optimizer steps counted in the current level (on_step / step calls)
        self._closed: dict[int, dict] = {}  # level -> {"iterations_trained", "final_iteration", "kept"}

    def _kept(self) -> dict[str, int]:
        return {name: int(module.weight_mask.sum()) for name, module in zip(self.names, self._modules, strict=True)}

    def _close_level(self, final_step: int) -> None:
        """The level that just finished trained ``level_steps`` steps, up to ``final_step``, under these masks."""
        self._closed[self.level] = {"iterations_trained": self.level_steps, "final_iteration": final_step,
                                    "kept": self._kept()}
        self.level_steps = 0

    def level_compute(self, example_batch: torch.Tensor | None = None) -> list[dict]:
        """Per level (the one training included, so far): ``iterations_trained`` (optimizer steps counted),
        ``final_iteration``, ``early_bird_step``, and ``compute_to_ticket`` (cumulative over the levels the
        ticket needed, as ``summary.json`` counts it). With ``example_batch`` (the inputs of one training
        batch: its length is the batch size) also ``train_flops`` / ``train_flops_sparse`` and FLOPs in
        ``compute_to_ticket``. Controls are not counted (they do not produce the ticket)."""
        entries = {level: dict(closed) for level, closed in self._closed.items()}
        if self.level not in entries:  # the level training now (0 steps right after a rewind)
            entries[self.level] = {"iterations_trained": self.level_steps, "final_iteration": self.step_count,
                                   "kept": self._kept()}
        macs = None if example_batch is None else self._layer_macs(example_batch)
        dense = None if macs is None else sum(d for d, _ in macs.values())
        rows = []
        for level in sorted(entries):
            entry = entries[level]
            kept = entry.pop("kept")
            row = {"round": level, **entry, "early_bird_step": self.early_bird_steps.get(level)}
            if macs is not None:
                # a pruned layer multiplies each kept weight at every output position: its dense MACs x kept share
                nonzero = sum(macs[name][0] * kept[name] / self._numel(name) if name in kept else macs[name][1]
                              for name in macs)
                row.update(training_compute(dense, round(nonzero), len(example_batch), row["iterations_trained"]))
            rows.append(row)
        add_compute_to_ticket(self.recipe, rows)
        return [{"level": row.pop("round"), **row} for row in rows]

    def _numel(self, name: str) -> int:
        return self._modules[self.names.index(name)].weight_mask.numel()

    def _layer_macs(self, example_batch: torch.Tensor) -> dict[str, tuple[int, int]]:
        if not isinstance(example_batch, torch.Tensor) or example_batch.dim() < 2 or len(example_batch) < 1:
            shown = tuple(example_batch.shape) if isinstance(example_batch, torch.Tensor) else type(example_batch).__name__
            raise UserError(f"report(example_batch=...): the inputs of one training batch (a tensor N x ...), "
                            f"got {shown}")
        try:
            macs = layer_macs(self.model, example_batch)
        except (RuntimeError, TypeError, ValueError) as error:  # the model refused it: a shape or dtype it cannot take
            raise UserError(f"report(example_batch=...): the model cannot run a batch of shape "
                            f"{tuple(example_batch.shape)}: {one_line(error)}") from None
        missing = [name for name in self.names if name not in macs]
        if missing:  # a pruned layer the forward never ran: its FLOPs would be silently left out
            raise UserError(f"report(example_batch=...): the forward pass never ran {missing} "
                            "(not this model's input?)")
        return macs

    def _compute_state(self) -> dict:
        return {"level_steps": self.level_steps, "closed": {level: dict(c) for level, c in self._closed.items()}}

    def _load_compute_state(self, state: dict | None) -> None:
        """A state saved before compute was counted restores empty counts (its levels report 0 steps)."""
        state = state or {}
        self.level_steps = int(state.get("level_steps", 0))
        self._closed = {int(level): dict(c) for level, c in dict(state.get("closed") or {}).items()}
