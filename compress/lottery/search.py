"""Iterative magnitude pruning with rewinding: the one IMP state machine behind every driver.

The CLI runner, a user's own loop and trainer callbacks all drive this class. Two ways to drive it:

Step-driven (callbacks; one call per optimizer step, the search counts)::

    search = compress.LotterySearch(model, recipe)          # iterations per level: recipe.train.iterations
    search.watch(optimizer, scheduler)                      # optional: reset / rewind them at each rewind
    while not search.done:
        ...                                                 # one training step (batch number search.step_count)
        event = search.on_step()                            # snapshot at rewind_to; prune + rewind at the end

Level-driven (the README's loop)::

    for level in search.levels():            # level 0 is dense; one level per pruning round after it
        optimizer = make_optimizer(model)    # fresh optimizer state every level (see below)
        for i, batch in enumerate(my_batches, start=1):
            ...                              # the user's own step
            search.step(i)                   # snapshots the rewind point when i == rewind_to
        search.prune_and_rewind()

Optimizer state on rewind: ``rewind()`` restores weights, biases and BatchNorm buffers only. The
optimizer's per-parameter state (Adam moments, momentum) belongs to the trajectory being thrown
away, so a level must start with fresh state: build a new optimizer, or call
``reset_optimizer(opt)``. Parameters keep their identity (``weight_orig``) across levels, so an
optimizer or a DistributedDataParallel wrapper built once stays attached to the right tensors.

Checkpoints: save ``search.state_dict()`` beside the model's and optimizer's; to resume, build the
model, then the search (it installs the prune reparametrisation, so a pruned ``model.state_dict()``
loads), then ``search.load_state_dict(...)`` and ``model.load_state_dict(...)``.

Copies: ``on_step`` / ``step`` detach the pruned ``weight`` tensors, so ``copy.deepcopy(model)`` works
between steps (a copy's forward recomputes ``weight`` from ``weight_orig * weight_mask``). An EMA of the
model averages the 0/1 mask buffers too; call ``search.copy_masks_to(ema_model)`` after each EMA update.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from compress.errors import UserError
from compress.io import MappedFile
from compress.lottery.control_runs import ControlsMixin
from compress.lottery.events import StepEvent, search_settings
from compress.lottery.planning import (
    one_shot_rates,
    plan_memory_need,
    plan_rows,
    planned_rounds,
    structured_plan,
)
from compress.lottery.rewind_point import OFFLOAD_MARGIN, RewindPointMixin, gradient_bytes, memory_need
from compress.lottery.search_compute import ComputeMixin
from compress.lottery.search_state import StateMixin, WatchMixin
from compress.lottery.strategies import EarlyBird, at_init_masks, device_batches, remember_for_invert
from compress.models.unwrap import unwrap_model
from compress.pruning import (
    EffectiveWeights,
    Masks,
    apply_masks,
    build_plan,
    check_shrinks,
    folded_state_dict,
    get_masks,
    ones_masks,
    plain_state_bytes,
    refresh_weights,
    sparsity_report,
)
from compress.pruning.masks import PRUNING_METHODS
from compress.pruning.plan import plan_layers
from compress.pruning.structured import plan_targets
from compress.pruning.widths import resolve_multiple
from compress.runtime import ensure_memory, model_device, short_of_memory

if TYPE_CHECKING:
    from compress.recipe.schema import Recipe


class LotterySearch(ControlsMixin, WatchMixin, StateMixin, RewindPointMixin, ComputeMixin):
    """Masks installed with torch.nn.utils.prune, a rewind snapshot, and the IMP schedule of levels."""

    def __init__(self, model: nn.Module, recipe: Recipe, where: Callable[[str], str] | None = None, *,
                 iterations: int | None = None, entry_point: str | None = "search",
                 example_inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
                 offload_rewind: bool | None = None) -> None:
        """``example_inputs``: a batch the model accepts, to trace its channel groups under
        ``prune.granularity: channel`` (default: shaped like the recipe's data, ``data.image_size``).
        ``offload_rewind``: keep the rewind point in a file (mapped, read at each rewind) rather than in
        memory -- the same values, one copy of the model less while it trains; None: only when the search
        would not fit in memory otherwise (its need, with a margin ``OFFLOAD_MARGIN`` for what training adds)."""
        from compress.recipe.support import enforce, steps_per_level

        # every recipe key is honoured, refused or warned about here (compress/recipe/support.py)
        iterations = steps_per_level(recipe, iterations)
        if entry_point is not None:  # None: the caller (a callback) enforced its own column already
            enforce(recipe, entry_point)
        self.recipe = recipe
        model = unwrap_model(model)  # torch.compile / DDP: the masks live on the module they wrap
        self.model = model
        self.prune_config = recipe.prune
        self.rounds = planned_rounds(recipe)
        self.total_rounds = recipe.lottery.rounds
        self.rewind_to = recipe.lottery.rewind_to
        self.one_shot = recipe.lottery.one_shot
        self.seed = recipe.seed
        self.iterations = iterations
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise UserError(f"iterations: {self.iterations!r} must be a positive int (steps per level)")
        if self.rewind_to >= self.iterations:
            raise UserError(f"lottery.rewind_to = {self.rewind_to} must be < iterations per level "
                            f"({self.iterations}): the rewind point would never be reached")
        self.strategy, self.retrain = recipe.lottery.strategy, recipe.lottery.retrain
        # find_ticket.py trains a fine-tuning level at the final rate itself (strategies.finetune_config)
        self._hold_unwatched = recipe.lottery.retrain == "finetune" and entry_point != "find_ticket"
        # imp prunes trained weights with a registered method; at_init scores the init (strategies.py)
        self.method = PRUNING_METHODS.get(recipe.prune.method) if self.strategy == "imp" else None
        self.score_batches: list | None = None
        self.early_bird = EarlyBird(recipe.lottery.early_bird) if recipe.lottery.early_bird.every else None
        self.early_bird_steps: dict[int, int | None] = {}  # level -> the step its mask converged at
        device = model_device(model)
        plan_need = plan_memory_need(model, recipe)
        what = (f"LotterySearch ({type(model).__name__}: {'channel plan, ' if plan_need else ''}masks, masked weights, "
                "gradients, rewind point)")
        # bounds that need no plan, before a channel plan traces and probes the model: its probe's two copies,
        # then the gradients of training
        ensure_memory(max(plan_need, gradient_bytes(model)), device, what)
        # channel granularity on a graph that is not an nn.Sequential: whole channel groups / heads
        self.structure = structured_plan(model, recipe, where, example_inputs)
        self.targets = (plan_targets(model, self.structure, recipe.prune, where) if self.structure is not None
                        else build_plan(model, recipe.prune, where))
        multiple = resolve_multiple(recipe.prune.channel_multiple)  # only passed when set: custom methods keep working
        self._multiple = {"channel_multiple": multiple} if multiple > 1 and recipe.prune.granularity == "channel" else {}
        if recipe.prune.global_normalize:  # passed only when set, like channel_multiple
            self._multiple["global_normalize"] = True
        if not self.targets:
            raise UserError("prune: no module is pruned (every rate is 0 or every module excluded)")
        self.names = [target.name for target in self.targets]
        self.settings = search_settings(recipe, self.names, self.iterations)
        need = memory_need(model, self.names)
        if offload_rewind is None:  # the need counts the search's own tensors; training adds activations,
            # the optimizer's state and transients (gemma4_vit_167m, plain SGD: +8% at its peak) -- a margin
            offload_rewind = short_of_memory(int(need * OFFLOAD_MARGIN), device)
        self.offload_rewind = bool(offload_rewind)
        ensure_memory(need - plain_state_bytes(model) if self.offload_rewind else need, device, what)
        # Install the reparametrisation now, with all-ones masks, so parameters never change identity.
        apply_masks(model, ones_masks(model, self.names))
        modules = dict(model.named_modules())
        self._modules = [modules[name] for name in self.names]  # on_step touches these without a lookup
        self._attributes = [vars(module) for module in self._modules]
        self.level = 0
        self.done = False
        self.step_count = 0
        self.rewind_state: dict[str, torch.Tensor] | None = None
        self._rewind_file: MappedFile | None = None  # where an offloaded rewind point lives
        self._optimizer: torch.optim.Optimizer | None = None
        self._scheduler: Any = None
        # the watched scheduler's state and its optimizer's hyperparameters at level 0, step 0
        self._schedule_start: dict | None = None
        self._final_schedule: dict | None = None  # finetune: where the scheduler is held (hold_final_lr)
        # (optimizer, scheduler) watched when a loaded state was saved, until watch() sees them again
        self._rewatch: tuple[bool, bool] | None = None
        self._cadence_origin: tuple[int, int] | None = None  # (step, scheduler.last_epoch) first seen at level 0
        self._warned_restart = False  # step(i) at a rewound level with i <= start_step
        self._init_compute()
        if self.rewind_to == 0:
            self.snapshot()

    @property
    def start_step(self) -> int:
        """The step count a level starts at: 0 for the dense level, ``rewind_to`` after a rewind."""
        return 0 if self.level == 0 else self.rewind_to

    # -- driving it, step by step ---------------------------------------------------------------------
    def on_step(self) -> StepEvent:
        """Call once after every optimizer step; the search counts the steps itself.

        At level 0 it snapshots the rewind point when the count reaches ``rewind_to``; when it reaches
        ``iterations`` the level is finished: prune + rewind (+ the watched optimizer and scheduler), or,
        after the last level, ``done``. Cheap (no tensor arithmetic on ordinary steps).
        """
        if self.done:
            raise UserError(f"on_step() after the search is done (level {self.rounds} was the last)")
        step = self.step_count + 1
        self._check_schedule_cadence(step)
        self.level_steps += 1
        self._detach_weights()
        if self.level > 0 and self.retrain == "finetune" and self._scheduler is not None:
            self.hold_final_lr(self._scheduler)  # undo the step your loop's scheduler.step() just took
        taken = False
        if self.level == 0 and step == self.rewind_to and self.rewind_state is None:
            self.snapshot()
            taken = True
        if self._early_bird_converged(step):  # the level ends here
            self._advance(step)
            return StepEvent(step, taken, True, False, self.level)
        if step < self.iterations:
            self.step_count = step
            return StepEvent(step, taken, False, False, self.level)
        if self.level >= self.rounds:
            self._close_level(step)
            self.step_count, self.done = step, True
            return StepEvent(step, taken, True, True, self.level)
        self._advance(step)  # sets step_count to the new level's start; on failure nothing moved
        return StepEvent(step, taken, True, False, self.level)

    def _detach_weights(self) -> None:
        # After a training step ``weight`` is a non-leaf tensor of the last forward, which deepcopy refuses.
        # Detaching only frees that forward's graph node early (the hook's next setattr would); recomputing
        # orig * mask here would cost 2-5% of a LeNet step. The prune hook recomputes ``weight`` at the next
        # forward (``compress.pruning.refresh_weights`` does it now). Written straight into the module's
        # __dict__, where the hook keeps ``weight``: nn.Module.__setattr__ costs microseconds per layer.
        for attributes in self._attributes:
            weight = attributes.get("weight")
            if weight is not None and weight.requires_grad:
                attributes["weight"] = weight.detach()

    # -- driving it, level by level -------------------------------------------------------------------
    def step(self, iteration: int) -> bool:
        """Call after each optimizer step with the 1-based step count of the current level.

        Snapshots the rewind point at ``rewind_to`` during level 0 (a step past it without a snapshot is an
        error at once); levels end with ``prune_and_rewind()``, not here. With ``lottery.early_bird`` it draws
        the next masks every ``every`` steps and returns True when the draws converged (the step goes to
        ``early_bird_steps``): end the level there to save the rest of its compute; trained on, the next
        level still starts from the converged draw (as ``find_ticket.py``'s rounds do).
        """
        if self.done:
            raise UserError("step() after the search is done")
        self._check_schedule_cadence(iteration)
        if self.level == 0 and self.rewind_state is None:
            if iteration == self.rewind_to:
                self.snapshot()
            elif iteration > self.rewind_to:
                raise UserError(f"missed the rewind snapshot at step {self.rewind_to}: step({iteration}) came "
                                "first; is your step counter 0-based? call search.step(i) after every optimizer "
                                "step with i = 1, 2, ...")
        elif self.level > 0 and iteration <= self.start_step and not self._warned_restart:
            self._warned_restart = True  # a loop's own length is its call: warned once, not refused
            warnings.warn(f"step({iteration}) at level {self.level}: this level was rewound to step "
                          f"{self.start_step} and resumes at {self.start_step + 1} (search.start_step); a counter "
                          f"restarted at 1 trains {self.start_step} steps more than find_ticket.py's level",
                          stacklevel=2)
        self.step_count = iteration
        self.level_steps += 1
        self._detach_weights()
        return self._early_bird_converged(iteration)

    def _early_bird_converged(self, step: int) -> bool:
        """Draw the next masks when due; True (and the step recorded) when the draws converged."""
        if self.early_bird is None or self.level >= self.rounds or not self.early_bird.due(step):
            return False
        if not self.early_bird.check(step, self.next_masks()):
            return False
        self.early_bird_steps[self.level] = step
        return True

    def levels(self) -> Iterator[int]:
        """Yields the current level (0 dense, then 1 .. rounds) until ``done``; train, then ``prune_and_rewind``."""
        while not self.done:
            level = self.level
            yield level
            if not self.done and self.level == level:
                raise UserError(f"level {level} ended without prune_and_rewind(): call it after training each level")

    def prune_and_rewind(self) -> bool:
        """Prune the trained model, rewind it and advance ``level``; False (and ``done``) after the last level.
        The finished level's gradients are dropped (``.grad = None``, as ``optimizer.zero_grad()`` does)."""
        if self.done:
            raise UserError(f"prune_and_rewind() after the search is done (level {self.rounds} was the last)")
        if self.level >= self.rounds:
            self._close_level(self.step_count)
            self.done = True
            return False
        self._advance(self.step_count)
        return True

    def _advance(self, final_step: int) -> None:
        """Prune + rewind into the next level (the finished one ended at ``final_step``); every check runs
        before anything changes."""
        if self.rewind_state is None:
            raise UserError(f"missed the rewind snapshot at step {self.rewind_to}: call search.step(i) (1-based) "
                            "or search.on_step() after every optimizer step of level 0")
        if self._rewatch is not None:
            what = " and ".join(n for n, w in zip(("optimizer", "scheduler"), self._rewatch, strict=True) if w)
            raise UserError(f"this search was saved watching an {what}: call search.watch(optimizer, scheduler) "
                            "after load_state_dict (or load_state_dict(state, optimizer, scheduler)) so the rewind "
                            "resets them")
        # the finished level's gradients belong to weights about to be pruned and rewound: dropped (as
        # optimizer.zero_grad() does) before the masks are computed, not held beside them -- a model's worth
        for parameter in self.model.parameters():
            parameter.grad = None
        remember_for_invert(self)
        masks = self.early_bird.masks if self.early_bird is not None and self.early_bird.masks else self.next_masks()
        self._close_level(final_step)  # under the masks it trained with, before the new ones go in
        apply_masks(self.model, masks)
        if self.retrain == "rewind":
            self.rewind()  # lr_rewind / finetune keep the trained survivors (Renda et al. 2020)
        self.early_bird_steps.setdefault(self.level, None)
        self.level += 1
        self.step_count = self.start_step
        if self.early_bird is not None:
            self.early_bird.reset()
        if self._optimizer is not None:
            self.reset_optimizer(self._optimizer)
        if self._scheduler is not None and self.retrain == "finetune":
            self.hold_final_lr(self._scheduler)
        elif self._scheduler is not None:
            self.rewind_scheduler(self._scheduler)
        elif self._hold_unwatched:
            self._hold_unwatched = False  # once per search
            warnings.warn("lottery.retrain 'finetune': no scheduler is watched, so the search cannot hold the "
                          "learning rate at the schedule's final value; train levels 1.. at that rate, constant "
                          "(or call search.watch(optimizer, scheduler) and it does)", stacklevel=3)

    # -- pruning --------------------------------------------------------------------------------------
    @property
    def masks(self) -> Masks:
        return get_masks(self.model)

    def rates(self) -> dict[str, float]:
        rates = {target.name: target.rate for target in self.targets}
        return one_shot_rates(rates, self.total_rounds) if self.one_shot else rates

    def next_masks(self) -> Masks:
        """Masks for the next level from the current (trained) weights; pure, nothing is applied."""
        if self.strategy == "at_init":
            return at_init_masks(self, self.level + 1)
        # the live buffers, not copies: the methods are pure (they return new tensors), and a copy of every
        # mask would be one more copy of the model in memory while the next masks are computed
        current = {name: module.weight_mask.detach() for name, module in zip(self.names, self._modules, strict=True)}
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.level)
        if self.structure is not None:
            rates = one_shot_rates(self.structure.rates, self.total_rounds) if self.one_shot else None
            new = self.structure.step(EffectiveWeights(self.model, self.names), current, rates,
                                      method=self.prune_config.method, generator=generator)
            check_shrinks(current, new)
            return new
        new = self.method(EffectiveWeights(self.model, self.names), current, self.rates(),
                          groups={t.name: t.group for t in self.targets},
                          granularity=self.prune_config.granularity, generator=generator,
                          **self._multiple)
        check_shrinks(current, new)
        return new

    def score_at_init(self, batches) -> None:
        """Give the data-needing scorers (``prune.method`` snip / grasp / synflow under ``lottery.strategy:
        at_init``) their batches of ``(inputs, labels)``; kept (on the model's device) for every level."""
        device = model_device(self.model)
        self.score_batches = device_batches(batches, device)

    def prune(self, masks: Masks | None = None) -> Masks:
        """Apply ``masks`` (default: ``next_masks()``); low level: neither rewinds nor advances ``level``."""
        masks = self.next_masks() if masks is None else masks
        apply_masks(self.model, masks)
        return masks

    def copy_masks_to(self, model: nn.Module) -> None:
        """Give ``model`` (an EMA or other copy of this model) exactly this search's 0/1 masks.

        An EMA update averages every float buffer, the mask buffers included; call this after each update.
        """
        modules = dict(model.named_modules())
        masks = {}
        for name, own in zip(self.names, self._modules, strict=True):
            if name not in modules:
                raise UserError(f"copy_masks_to: the model has no module {name!r} (not a copy of the searched model)")
            masks[name] = own.weight_mask.detach()
        apply_masks(model, masks)

    # -- results --------------------------------------------------------------------------------------
    def folded_state_dict(self) -> dict[str, torch.Tensor]:
        """Plain state dict with the masks folded in: a fresh, unpruned model loads it to be the ticket."""
        return folded_state_dict(self.model)

    def plan(self) -> list[dict]:
        """Every prunable parameter: name, role (stem / hidden / output), shape, rate per level, the fraction
        of its weights left after each level 0..rounds, and why it is not pruned (kept, output, rate 0)."""
        return plan_rows(self.model, plan_layers(self.model, self.prune_config), self.rates(), self.rounds)

    def report(self, example_batch: torch.Tensor | None = None) -> dict:
        """Sparsity per layer and in total; ``levels``: per level the ``record``-ed results of the ticket and
        of each control (None where the recipe asks for a control nobody recorded); ``compute``: per level
        what its training cost (``level_compute``; FLOPs with ``example_batch``, one training batch's inputs)."""
        refresh_weights(self.model)
        return {**sparsity_report(self.model, self.names), "levels": self.level_rows(),
                "compute": self.level_compute(example_batch)}
