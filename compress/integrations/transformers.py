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
finds for the same recipe. Not covered: gradient accumulation. ``lottery.retrain`` and ``lottery.early_bird``
work as in an own loop (see the Lightning callback).

Checkpoints: at every Trainer checkpoint the callback writes the search's state (``lottery_search.pt``)
into the checkpoint folder; ``trainer.train(resume_from_checkpoint=...)`` (a checkpoint under
``output_dir``) restores it, and refuses a checkpoint without one or of another recipe.

Schedules: every level must train with the schedule of a fresh training of ``iterations`` steps. A
schedule the Trainer builds (``lr_scheduler_type``) spans ``max_steps``; the callback resizes it to
``iterations`` steps (warm-up included) and rewinds it at each level. A schedule of your own
(``optimizers=(optimizer, scheduler)``) must span ``iterations`` steps itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.nn as nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from compress.errors import UserError
from compress.integrations._engine import (
    checked_steps,
    make_search,
    refuse_replay_with_early_bird,
    rounds_of,
    steps_done,
    total_steps,
    unwrap_optimizer,
    unwrap_scheduler,
)
from compress.integrations.data import TicketBatches

if TYPE_CHECKING:
    from compress.recipe.schema import Recipe

__all__ = ["STATE_FILE", "LotteryTicketCallback", "TicketBatches"]

STATE_FILE = "lottery_search.pt"  # the search's state, beside the Trainer's files in each checkpoint folder


def per_level_schedule(scheduler: Any, iterations: int, args: Any) -> bool:
    """Resize a schedule built by ``transformers.get_scheduler`` (a ``LambdaLR`` of partials taking
    ``num_training_steps``) to ``iterations`` steps, in place (its position and state are kept): the
    schedule of a fresh training, which the search rewinds per level. False when it is not such a one."""
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if not lambdas or not all(isinstance(fn, functools.partial) and "num_training_steps" in fn.keywords
                              for fn in lambdas):
        return False
    warmup = args.get_warmup_steps(iterations)  # an int, or a ratio of the steps it is given
    resized = []
    for fn in lambdas:
        keywords = {**fn.keywords, "num_training_steps": iterations}
        if "num_warmup_steps" in keywords:
            keywords["num_warmup_steps"] = warmup
        resized.append(functools.partial(fn.func, *fn.args, **keywords))
    scheduler.lr_lambdas = resized
    return True


class LotteryTicketCallback(TrainerCallback):
    """Iterative magnitude pruning with rewinding, driven by ``Trainer``'s optimizer steps.

    The prune masks are installed on ``model`` here, at construction: build the Trainer's optimizer (or
    let the Trainer build it) afterwards. ``search`` is the ``LotterySearch`` (``masks``, ``report()``).
    """

    def __init__(self, recipe: Recipe, model: nn.Module, *, where: Callable[[str], str] | None = None,
                 iterations: int | None = None, score_batches: Any = None) -> None:
        self.recipe = recipe
        self._score_batches = score_batches  # lottery.strategy at_init: what snip / grasp / synflow score on
        self.iterations = checked_steps(recipe, iterations, "hf")
        self.rewind_to = recipe.lottery.rewind_to
        self.rounds = rounds_of(recipe)
        self.search = make_search(model, recipe, where, iterations=self.iterations, score_batches=score_batches)

    @property
    def total_steps(self) -> int:
        """``TrainingArguments.max_steps``: every level's optimizer steps together (with ``lottery.early_bird``
        the most they can be; the callback stops training when the search is done)."""
        return total_steps(self.iterations, self.rewind_to, self.rounds)

    def batches(self, split: Any, batch_size: int | None = None, seed: int | None = None,
                x_key: str = "x") -> TicketBatches:
        """The toolkit's batch order as rows ``{x_key: image, "labels": label}``, for
        ``per_device_train_batch_size = batch_size`` (rows re-stacked are bitwise the toolkit's batches).
        Not with ``lottery.early_bird`` (its levels end early): a train dataset of your own then."""
        refuse_replay_with_early_bird(self.recipe)
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
            self._resume(args, state)
        scheduler = None if lr_scheduler is None else unwrap_scheduler(lr_scheduler)
        if scheduler is not None:
            per_level_schedule(scheduler, self.iterations, args)
        # the optimizer and scheduler are built (and, on a fresh start, not stepped yet): the search resets
        # and rewinds them at every level's end
        self.search.watch(None if optimizer is None else unwrap_optimizer(optimizer), scheduler)
        if self.search.done:
            control.should_training_stop = True
        return control

    def on_step_end(self, args, state, control, **kwargs):
        # the Trainer has stepped the optimizer and the LR scheduler by now; at a level's end the search
        # prunes, rewinds, clears the optimizer's state and restarts the scheduler at rewind_to
        if self.search.on_step().done:
            control.should_training_stop = True
        return control

    def _resume(self, args, state) -> None:
        """``train(resume_from_checkpoint=...)``: load the search's state saved beside that checkpoint."""
        from compress.io import load_torch

        path = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}" / STATE_FILE
        if not path.is_file():
            raise UserError(f"the Trainer resumes at step {state.global_step}, the lottery search stands at "
                            f"{steps_done(self.search)}, and {path} is missing: resume from a checkpoint under "
                            "output_dir written with this callback")
        self.search.load_state_dict(load_torch(path))
        if steps_done(self.search) != state.global_step:
            raise UserError(f"{path}: the search stood at step {steps_done(self.search)}, the checkpoint at "
                            f"{state.global_step}: not this checkpoint's search state")

    def on_save(self, args, state, control, **kwargs):
        # the Trainer has just written checkpoint-<global_step>; the search's state goes beside it
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.is_world_process_zero:
            if not folder.is_dir():
                raise UserError(f"on_save: no checkpoint folder {folder} (hyperparameter search runs are not "
                                "supported): the search's state could not be saved beside it")
            from compress.io import save_torch

            save_torch(self.search.state_dict(), folder / STATE_FILE)
        return control
