"""Placing the search: stand ``LotterySearch`` where a round starts, from the run's files alone.

The runner keeps no IMP state of its own: before a round it loads the level, masks, rewind point and step
count into the search (``state_dict`` / ``load_state_dict``), then takes the same transitions a user's loop takes.
"""

from __future__ import annotations

import sys

import torch

from compress import distributed, paths
from compress.io import save_torch
from compress.pruning import apply_masks, load_plain_state_dict


class SearchPlacement:
    """The placement half of ``LotteryRun`` (which provides ``search``, ``run_dir``, ``begin``, ``init_state``,
    ``rewind_state`` and ``_load``)."""

    def _place_search(self, level: int, masks: dict, step_count: int) -> None:
        """Stand the search at ``level`` with ``masks`` and the run's rewind point (weights untouched)."""
        if self.begin == 0:
            rewind = self.init_state
        elif level > 0:
            rewind = self.rewind_state()
        else:  # the dense round takes the snapshot itself; a resumed one may already have it
            rewind = self._load(self.run_dir / paths.REWIND) if (self.run_dir / paths.REWIND).exists() else None
        state = self.search.state_dict()
        state.update(level=level, step_count=step_count, done=False, rewind=rewind,
                     masks={name: masks[name] for name in self.search.names})
        self.search.load_state_dict(state)

    def _level_start(self, round_index: int, masks: dict) -> torch.nn.Module:
        """The search's model as round ``round_index`` starts: its masks, and init or the rewound weights."""
        self._place_search(round_index, masks, 0 if round_index == 0 else self.begin)
        if round_index == 0:
            load_plain_state_dict(self.search.model, self.init_state)
        elif self.recipe.lottery.retrain != "rewind":  # lr_rewind / finetune: the trained survivors go on
            previous = paths.round_dir(self.run_dir, round_index - 1)
            self.search.model.load_state_dict(self._load(previous / paths.FINAL, recompute=self._retrain(round_index - 1),
                                                         also=(previous / paths.RESULT,)))
            apply_masks(self.search.model, masks)
        else:
            self.search.rewind()
        return self.search.model

    def _dense_start(self, masks: dict) -> torch.nn.Module:
        checkpoint = paths.round_dir(self.run_dir, 0) / paths.CHECKPOINT
        if self.begin > 0 and not (self.run_dir / paths.REWIND).exists() and checkpoint.exists():
            # a checkpoint is only ever written after the rewind point it needs; without that file the
            # snapshot cannot be taken again from the middle of the round: train the round from the start
            distributed.barrier()
            if distributed.is_main():
                checkpoint.unlink()
                print(f"warning: {paths.REWIND} is missing; round 0 restarts from iteration 0", file=sys.stderr)
            distributed.barrier()
        return self._level_start(0, masks)

    def _dense_step(self, iteration: int, model: torch.nn.Module) -> None:
        """The dense round steps the search, which snapshots at ``rewind_to``; the snapshot goes to a file."""
        had_snapshot = self.search.rewind_state is not None
        self.search.step(iteration)
        target = self.run_dir / paths.REWIND
        if not had_snapshot and self.search.rewind_state is not None and not target.exists() and distributed.is_main():
            save_torch(self.search.rewind_state, target)
