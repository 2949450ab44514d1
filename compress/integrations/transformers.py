"""A Hugging Face ``transformers.Trainer`` callback that runs a lottery-ticket search in one ``train()``.

    ticket = LotteryTicketCallback(recipe, model.net)             # the module to prune
    args = TrainingArguments(output_dir, max_steps=ticket.total_steps, max_grad_norm=0, ...)
    Trainer(model=model, args=args, train_dataset=dataset, callbacks=[ticket]).train()

After each optimizer step (``on_step_end``) the search counts the step; at a level's end it prunes per the
recipe and rewinds the survivors to step ``rewind_to``, and the callback clears the optimizer's
per-parameter state and restarts the Trainer's LR scheduler at ``rewind_to``; after the last level it
stops training (``control.should_training_stop``).

Any train dataset works. ``ticket.batches(split)`` yields the toolkit's batch order row by row (rewound
with the weights at every level); with it, the recipe's optimizer and schedule passed as
``Trainer(optimizers=(build_optimizer(...), build_schedule(...)))`` and ``max_grad_norm=0`` (the toolkit
does not clip; the Trainer clips at 1.0 by default) the masks are bit for bit those ``find_ticket.py``
finds for the same recipe. Not covered: ``train(resume_from_checkpoint=...)`` (the search's state is not
in the Trainer's checkpoints; the callback refuses to continue a resumed run) and gradient accumulation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch.nn as nn
from transformers import TrainerCallback

from compress.errors import UserError
from compress.integrations._engine import (
    checked_steps,
    make_search,
    rounds_of,
    steps_done,
    total_steps,
    unwrap_optimizer,
    unwrap_scheduler,
)
from compress.integrations.data import TicketBatches

if TYPE_CHECKING:
    from compress.recipe.schema import Recipe

__all__ = ["LotteryTicketCallback", "TicketBatches"]


class LotteryTicketCallback(TrainerCallback):
    """Iterative magnitude pruning with rewinding, driven by ``Trainer``'s optimizer steps.

    The prune masks are installed on ``model`` here, at construction: build the Trainer's optimizer (or
    let the Trainer build it) afterwards. ``search`` is the ``LotterySearch`` (``masks``, ``report()``).
    """

    def __init__(self, recipe: Recipe, model: nn.Module, *, where: Callable[[str], str] | None = None,
                 iterations: int | None = None) -> None:
        self.recipe = recipe
        self.iterations = checked_steps(recipe, iterations, "hf")
        self.rewind_to = recipe.lottery.rewind_to
        self.rounds = rounds_of(recipe)
        self.search = make_search(model, recipe, where, iterations=self.iterations)

    @property
    def total_steps(self) -> int:
        """``TrainingArguments.max_steps``: every level's optimizer steps together."""
        return total_steps(self.iterations, self.rewind_to, self.rounds)

    def batches(self, split: Any, batch_size: int | None = None, seed: int | None = None,
                x_key: str = "x") -> TicketBatches:
        """The toolkit's batch order as rows ``{x_key: image, "labels": label}``, for
        ``per_device_train_batch_size = batch_size`` (rows re-stacked are bitwise the toolkit's batches)."""
        return TicketBatches(split, batch_size or self.recipe.train.batch_size,
                             self.recipe.seed if seed is None else seed, iterations=self.iterations,
                             rewind_to=self.rewind_to, rounds=self.rounds,
                             position=lambda: steps_done(self.search), samples=True, x_key=x_key)

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        if args.gradient_accumulation_steps != 1:
            raise UserError("LotteryTicketCallback counts optimizer steps: use gradient_accumulation_steps=1")
        if 0 < args.max_steps < self.total_steps:
            raise UserError(f"TrainingArguments(max_steps={args.max_steps}) stops before the lottery search "
                            f"ends: it needs {self.total_steps} optimizer steps; set max_steps=callback.total_steps")
        if state.global_step != steps_done(self.search):
            raise UserError(f"the Trainer stands at step {state.global_step}, the lottery search at "
                            f"{steps_done(self.search)}: resuming train(resume_from_checkpoint=...) does not "
                            "restore the search (its state is not in the Trainer's checkpoints)")
        # the optimizer and scheduler are built (and not stepped yet): the search resets / rewinds them
        self.search.watch(None if optimizer is None else unwrap_optimizer(optimizer),
                          None if lr_scheduler is None else unwrap_scheduler(lr_scheduler))
        if self.search.done:
            control.should_training_stop = True
        return control

    def on_step_end(self, args, state, control, **kwargs):
        # the Trainer has stepped the optimizer and the LR scheduler by now; at a level's end the search
        # prunes, rewinds, clears the optimizer's state and restarts the scheduler at rewind_to
        if self.search.on_step().done:
            control.should_training_stop = True
        return control
