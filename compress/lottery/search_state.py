"""Two seams of ``LotterySearch``: the optimizer / LR scheduler it watches (reset and rewound at every
rewind), and its checkpoint (``state_dict`` / ``load_state_dict``: level, step, masks, rewind point)."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch

from compress.errors import UserError
from compress.lottery.events import STATE_FORMAT, check_state
from compress.pruning import apply_masks, is_pruned
from compress.runtime import model_device


class WatchMixin:
    """The optimizer and scheduler of a user's loop, reset / rewound at every rewind (``watch``)."""

    @staticmethod
    def reset_optimizer(optimizer: torch.optim.Optimizer) -> None:
        """Forget per-parameter state (Adam moments, momentum buffers) before a new level."""
        optimizer.state.clear()

    def watch(self, optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None) -> None:
        """Reset ``optimizer`` and rewind ``scheduler`` automatically at every rewind (``on_step`` and
        ``prune_and_rewind`` call ``reset_optimizer`` / ``rewind_scheduler``).

        At level 0, step 0 (build them, then watch, before the first step) the scheduler's state and its
        optimizer's hyperparameters (lr, momentum, ...) are recorded as the schedule's start, which
        ``state_dict`` saves; later (a resumed run) the start comes from ``load_state_dict``.
        """
        if scheduler is not None:
            if self._replays_schedule and isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                raise UserError(f"watch(scheduler): ReduceLROnPlateau follows a metric, which the search cannot "
                                f"replay to {self._replay_target}; watch(optimizer) alone and rebuild the "
                                "scheduler each level, or use lottery.rewind_to: 0 with retrain: rewind")
            if self.level == 0 and self.step_count == 0:
                self._schedule_start = _schedule_state(scheduler)
            elif self._schedule_start is None:
                raise UserError(f"watch(scheduler) at level {self.level}, step {self.step_count}: the search must "
                                "see the schedule's start; watch it before the first step, or load a search state "
                                "saved with a watched scheduler first")
        self._optimizer = optimizer
        self._scheduler = scheduler
        self._rewatch = None
        self._cadence_origin = None

    @property
    def _replays_schedule(self) -> bool:
        """Whether a rewind steps the watched scheduler (to rewind_to, or to the final rate), rather than only
        restoring its start -- then the scheduler must step once per optimizer step, as the search counts."""
        return self.rewind_to > 0 or self.retrain == "finetune"

    @property
    def _replay_target(self) -> str:
        return "its final rate (retrain: finetune)" if self.retrain == "finetune" else f"step {self.rewind_to}"

    def _check_schedule_cadence(self, step: int) -> None:
        """Level 0: refuse a watched scheduler that steps, but not once per optimizer step (per epoch,
        Lightning's ``frequency``), where a rewind replays it step by step -- silently wrong otherwise. Counted
        from the first step this process saw (a resumed run's count does not matter). One that never steps
        is no error: the rewind then restores its start (``_schedule_at``)."""
        if self._scheduler is None or self.level != 0 or not self._replays_schedule:
            return
        count = _step_count(self._scheduler)
        if count is None:
            return  # not a torch LR scheduler: nothing to count
        if self._cadence_origin is None:
            self._cadence_origin = (step, count)
            return
        first_step, first_count = self._cadence_origin
        stepped = count - first_count
        if stepped and stepped != step - first_step:
            raise UserError(f"the watched LR scheduler stepped {stepped} times in {step - first_step} optimizer "
                            f"steps: a rewind replays it once per optimizer step to {self._replay_target}; call "
                            "scheduler.step() after every optimizer.step(), or watch(optimizer) alone and rebuild "
                            "your schedule each level")

    def rewind_scheduler(self, scheduler: Any) -> None:
        """Restart a torch LR scheduler at ``start_step``: restore the start ``watch`` recorded (with the
        optimizer's lr), then ``scheduler.step()`` ``start_step`` times -- the same arithmetic as the first
        run, so the rewound level's learning rates equal the dense level's from ``rewind_to`` on, bit for
        bit. For schedulers stepped once per optimizer step, without arguments (one stepped otherwise is
        refused at level 0; one never stepped is only restored to its start)."""
        self._schedule_at(scheduler, self.start_step)

    def hold_final_lr(self, scheduler: Any) -> None:
        """``lottery.retrain: finetune``: the schedule's final learning rate, constant. The scheduler is put
        where a full level's last step had it (``iterations - 1`` steps from the start: the learning rates
        of step ``iterations``), and back there after every step of a fine-tuning level, so your loop's
        ``scheduler.step()`` neither decays it further, nor climbs a cosine's next period, nor steps a
        ``OneCycleLR`` past its end."""
        if self._final_schedule is None:
            self._schedule_at(scheduler, self.iterations - 1)
            self._final_schedule = _schedule_state(scheduler)
            return
        _load_schedule_state(scheduler, self._final_schedule)

    def _schedule_at(self, scheduler: Any, steps: int) -> None:
        if self._schedule_start is None:
            raise UserError("rewind_scheduler: call search.watch(optimizer, scheduler) right after building "
                            "the scheduler, so the search knows where the schedule starts")
        start_count, count = self._schedule_start.get("count"), _step_count(scheduler)
        if start_count is not None and count == start_count:
            steps = 0  # never stepped since the start: the dense level trained at the start's rates throughout
        _load_schedule_state(scheduler, self._schedule_start)
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
            warnings.simplefilter("ignore")
            for _ in range(steps):
                scheduler.step()


def _schedule_state(scheduler: Any) -> dict:
    """A scheduler's state, its optimizer's hyperparameters (lr, momentum, ...) and its step count, as
    ``watch`` records them."""
    groups = [{k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
              for group in scheduler.optimizer.param_groups]
    return {"state": copy.deepcopy(scheduler.state_dict()), "groups": groups, "count": _step_count(scheduler)}


def _step_count(scheduler: Any) -> int | None:
    """How many times a torch LR scheduler has stepped (``last_epoch``); None for other objects."""
    if not hasattr(scheduler, "last_epoch") and getattr(scheduler, "_schedulers", None):
        scheduler = scheduler._schedulers[0]  # ChainedScheduler counts nothing itself; it steps all of them
    count = getattr(scheduler, "last_epoch", None)
    return count if isinstance(count, int) and not isinstance(count, bool) else None


def _load_schedule_state(scheduler: Any, saved: dict) -> None:
    for group, hyper in zip(scheduler.optimizer.param_groups, saved["groups"], strict=True):
        group.update(copy.deepcopy(hyper))
    scheduler.load_state_dict(copy.deepcopy(saved["state"]))


class StateMixin:
    """Checkpoint and resume of a search."""

    def state_dict(self) -> dict:
        """Level, step count, done, rewind snapshot, masks, the watched schedule's start, the settings and
        the steps counted per level; loads with ``torch.load(weights_only=True)``."""
        rewind = None if self.rewind_state is None else {k: v.clone() for k, v in self.rewind_state.items()}
        return {"format": STATE_FORMAT, "settings": copy.deepcopy(self.settings), "level": self.level,
                "step_count": self.step_count, "done": self.done, "rewind": rewind,
                "schedule_start": copy.deepcopy(self._schedule_start),
                "watched": [self._optimizer is not None, self._scheduler is not None]
                if self._rewatch is None else list(self._rewatch),
                "results": copy.deepcopy(self.__dict__.get("_results", {})),
                "early_bird": None if self.early_bird is None else self.early_bird.state_dict(),
                "early_bird_steps": dict(self.early_bird_steps),
                "compute": self._compute_state(),
                "masks": {name: module.weight_mask.detach().clone()
                          for name, module in zip(self.names, self._modules, strict=True)}}

    def load_state_dict(self, state: dict, optimizer: torch.optim.Optimizer | None = None,
                        scheduler: Any = None) -> None:
        """Continue a saved search: installs its masks, rewind snapshot and position. Weights are the
        model's business (``model.load_state_dict``). A state of other prune / lottery settings is refused.

        A search saved while it watched an optimizer / scheduler refuses to rewind until ``watch`` sees
        them again: pass them here, or call ``search.watch(optimizer, scheduler)`` afterwards."""
        shapes = {name: tuple(module.weight_mask.shape) for name, module in zip(self.names, self._modules, strict=True)}
        check_state(state, self.settings, self.names, shapes, self.rounds, self.iterations, self.rewind_to)
        for name, module in zip(self.names, self._modules, strict=True):
            if not is_pruned(module):
                raise UserError(f"{name!r} lost its torch prune reparametrisation; build a new search")
        apply_masks(self.model, state["masks"])
        rewind = state["rewind"]
        self.keep_rewind_state(rewind)
        self.level, self.step_count, self.done = state["level"], state["step_count"], state["done"]
        if state.get("schedule_start") is not None:
            self._schedule_start = copy.deepcopy(state["schedule_start"])
        self._final_schedule = None  # recomputed from the start when a fine-tuning level needs it
        self.__dict__["_results"] = {int(k): dict(v) for k, v in dict(state.get("results") or {}).items()}
        self._optimizer = self._scheduler = None
        watched = tuple(bool(w) for w in state.get("watched", (False, False)))
        self._rewatch = watched if any(watched) else None
        if optimizer is not None or scheduler is not None:
            self.watch(optimizer, scheduler)
            if watched[1] and scheduler is None:
                self._rewatch = watched
        if self.early_bird is not None and state.get("early_bird") is not None:
            self.early_bird.load_state_dict(state["early_bird"], model_device(self.model))
        self.early_bird_steps = dict(state.get("early_bird_steps") or {})
        self._load_compute_state(state.get("compute"))
