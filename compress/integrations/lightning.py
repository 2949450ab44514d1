"""A Lightning callback that runs a lottery-ticket search inside one ``Trainer.fit``.

    ticket = LotteryTicketCallback(recipe, module="net")          # prune pl_module.net per the recipe
    trainer = L.Trainer(max_steps=ticket.total_steps, callbacks=[ticket])
    trainer.fit(lit_module, train_dataloaders=DataLoader(ticket.batches(data.train), batch_size=None))

Each level trains ``iterations`` optimizer steps (level 0) or ``iterations - rewind_to`` (later levels,
rewound to the weights at step ``rewind_to``). After the level's last step the callback prunes per the
recipe, rewinds the survivors, clears the optimizer's per-parameter state and restarts its step-interval
LR scheduler at ``rewind_to``; after the last level it stops the fit (``trainer.should_stop``). One
optimizer, one optimizer step per batch (``accumulate_grad_batches=1``). ``lottery.retrain: lr_rewind |
finetune`` keep the trained survivors and replay the schedule from ``rewind_to`` or hold it at its final
rate; with ``lottery.early_bird`` a level ends at the step its masks converge (``search.early_bird_steps``).

Any dataloader works. ``ticket.batches(split)`` replays the toolkit's batch order (rewound with the
weights at every level, resumed at the right batch from a checkpoint); with it and the recipe's model,
optimizer and schedule (``compress.training.build_optimizer`` / ``build_schedule``) the masks are bit for
bit those ``find_ticket.py`` finds for the same recipe.

Unlike Lightning's ``ModelPruning(use_lottery_ticket_hypothesis=True)``, which resets to the weights of
the start of a fit, this rewinds to any step k, prunes with the recipe's rates, granularity and method,
and its state lives in Lightning checkpoints: ``trainer.fit(..., ckpt_path=...)`` continues the search.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch.nn as nn

from compress.errors import UserError
from compress.integrations._engine import (
    checked_steps,
    make_search,
    refuse_replay_with_early_bird,
    rounds_of,
    steps_done,
    total_steps,
)
from compress.integrations.data import ResumableSampler, TicketBatches

if TYPE_CHECKING:
    from compress.recipe.schema import Recipe

__all__ = ["LotteryTicketCallback", "ResumableSampler", "TicketBatches", "ticket_state_dict"]

NOT_RESUMABLE = ("resumed mid-level with a DataLoader that cannot resume: masks follow the recipe's plan, but the "
                 "batches after the resume differ from an uninterrupted fit, so the masks may too; for an exact "
                 "resume use sampler=ticket.sampler(len(dataset), batch_size) or ticket.batches(split)")


def _resumable(loader: Any) -> bool:
    """Whether ``loader`` replays its batches from the search's position (``ResumableSampler`` / ``TicketBatches``)."""
    loaders = loader if isinstance(loader, (list, tuple)) else list(loader.values()) if isinstance(loader, dict) \
        else [loader]
    for one in loaders:
        batch_sampler = getattr(one, "batch_sampler", None)
        samplers = (getattr(one, "sampler", None), getattr(batch_sampler, "sampler", None))
        if not (isinstance(getattr(one, "dataset", None), TicketBatches)
                or any(isinstance(s, ResumableSampler) for s in samplers)):
            return False
    return True


def ticket_state_dict(checkpoint: Any, module: str | None = "net") -> dict:
    """A plain, folded state dict of the pruned submodule ``module`` of a Lightning checkpoint (a path or
    the loaded dict): ``weight = weight_orig * weight_mask``, no prune keys, so a fresh model of your
    own loads it (``net.load_state_dict(...)``) for inference or ``compress.export_onnx``.

    ``LightningModule.load_from_checkpoint`` cannot load a pruned checkpoint into an unpruned module (its
    keys are ``weight_orig`` / ``weight_mask``): build the module, then load this."""
    from compress.io import load_torch

    state = load_torch(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    weights = state.get("state_dict") if isinstance(state, dict) else None
    if not isinstance(weights, dict):
        raise UserError(f"{checkpoint}: not a Lightning checkpoint (no 'state_dict')")
    prefix = "" if module is None else f"{module}."
    own = {key[len(prefix):]: value for key, value in weights.items() if key.startswith(prefix)}
    if not own:
        raise UserError(f"{checkpoint}: no entries under {module!r}; the module path given to the callback")
    plain = {}
    for key, value in own.items():
        if key.endswith("_orig") and f"{key[:-5]}_mask" in own:
            plain[key[:-5]] = value * own[f"{key[:-5]}_mask"]
        elif not (key.endswith("_mask") and f"{key[:-5]}_orig" in own):
            plain[key] = value
    return plain


class LotteryTicketCallback(pl.Callback):
    """Iterative magnitude pruning with rewinding, driven by ``Trainer.fit``'s optimizer steps.

    ``module``: the attribute path of the submodule to prune (``"net"``, ``"backbone.encoder"``); None
    prunes the LightningModule itself. ``where``/``iterations`` as for ``compress.LotterySearch``
    (``iterations`` defaults to ``recipe.train.iterations``). ``search`` is the ``LotterySearch`` once
    the fit is set up (``search.masks``, ``search.report()``).
    """

    def __init__(self, recipe: Recipe, module: str | None = None, *, where: Callable[[str], str] | None = None,
                 iterations: int | None = None, score_batches: Any = None) -> None:
        super().__init__()
        self.recipe = recipe
        self._score_batches = score_batches  # lottery.strategy at_init: what snip / grasp / synflow score on
        self.module = module
        self.where = where
        self.iterations = checked_steps(recipe, iterations, "lightning")
        self.rewind_to = recipe.lottery.rewind_to
        self.rounds = rounds_of(recipe)
        self.search: Any = None
        self._pending: dict | None = None  # a checkpoint's state, loaded before the search exists

    @property
    def state_key(self) -> str:
        """Where a checkpoint keeps this callback's state: one per pruned submodule."""
        return self._generate_state_key(module=self.module)

    @property
    def total_steps(self) -> int:
        """``max_steps`` for the Trainer: every level's optimizer steps together (with ``lottery.early_bird``
        the most they can be: a level may end early, and the callback stops the fit when the search is done)."""
        return total_steps(self.iterations, self.rewind_to, self.rounds)

    @property
    def steps_done(self) -> int:
        return 0 if self.search is None else steps_done(self.search)

    def sampler(self, size: int, batch_size: int, seed: int | None = None) -> ResumableSampler:
        """A sampler for a dataset of your own (``DataLoader(dataset, batch_size, sampler=...)``) that
        resumes exactly: a mid-epoch checkpoint continues with the batches an uninterrupted fit would see."""
        return ResumableSampler(size, batch_size, self.recipe.seed if seed is None else seed, self.total_steps,
                                position=lambda: self.steps_done)

    def batches(self, split: Any, batch_size: int | None = None, seed: int | None = None) -> TicketBatches:
        """The toolkit's batch order for the whole search (``DataLoader(..., batch_size=None)``); from a
        checkpoint it resumes at the batch of the step the search stands at. Not with ``lottery.early_bird``."""
        refuse_replay_with_early_bird(self.recipe)
        return TicketBatches(split, batch_size or self.recipe.train.batch_size,
                             self.recipe.seed if seed is None else seed, iterations=self.iterations,
                             rewind_to=self.rewind_to, rounds=self.rounds, position=lambda: self.steps_done)

    # -- Lightning hooks ----------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        model: nn.Module = pl_module if self.module is None else pl_module.get_submodule(self.module)
        if self.search is not None:  # a second fit continues the search, on the same model only
            if self.search.model is not model:
                raise UserError("a LotteryTicketCallback drives one model: make a new callback for this one")
            return
        # installed now, before configure_optimizers and before a checkpoint's weights are loaded: the
        # module's state dict then has the weight_orig / weight_mask entries a checkpoint holds
        self.search = make_search(model, self.recipe, self.where, iterations=self.iterations,
                                  score_batches=self._score_batches)
        if self._pending is not None:
            self.search.load_state_dict(self._pending)  # on_fit_start watches the optimizer and scheduler again
            self._pending = None
            self._resumed = not self.search.done and self.steps_done > 0
        max_steps = trainer.max_steps
        if max_steps is not None and 0 <= max_steps < self.total_steps:
            warnings.warn(f"Trainer(max_steps={max_steps}) stops before the lottery search ends: it needs "
                          f"{self.total_steps} optimizer steps ({self.rounds + 1} levels); set "
                          "max_steps=callback.total_steps", stacklevel=2)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the optimizer and schedulers exist now; a checkpoint's optimizer / scheduler state loads after
        # this hook, so the search records where the schedule starts, as ``watch`` wants
        if len(trainer.optimizers) > 1:
            raise UserError("LotteryTicketCallback drives one optimizer; configure_optimizers returned "
                            f"{len(trainer.optimizers)}")
        configs = trainer.lr_scheduler_configs
        if len(configs) > 1 or any(config.interval != "step" or config.frequency != 1 for config in configs):
            raise UserError("LotteryTicketCallback rewinds one LR scheduler stepped every optimizer step: return "
                            "{'scheduler': ..., 'interval': 'step', 'frequency': 1} from configure_optimizers")
        self.search.watch(trainer.optimizers[0] if trainer.optimizers else None,
                          configs[0].scheduler if configs else None)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.accumulate_grad_batches != 1:
            raise UserError("LotteryTicketCallback counts optimizer steps as batches: use "
                            "accumulate_grad_batches=1")
        if self.search.done:
            trainer.should_stop = True
        if getattr(self, "_resumed", False) and not _resumable(trainer.train_dataloader):
            warnings.warn(NOT_RESUMABLE, stacklevel=2)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Lightning has stepped the optimizer and the step-interval scheduler by now; at a level's end the
        # search prunes, rewinds, clears the optimizer's state and restarts the scheduler at rewind_to
        event = self.search.on_step()
        if event.level_finished and trainer.logger is not None:
            # the search's progress goes where the user's own metrics go (TensorBoard, MLflow, W&B, CSV)
            trainer.logger.log_metrics({"lottery/level": event.level,
                                        "lottery/weights_remaining": self.search.report()["weights_remaining"]},
                                       step=trainer.global_step)
        if event.done:
            trainer.should_stop = True

    # -- checkpoints --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {} if self.search is None else {"search": self.search.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "search" not in state_dict:
            return
        if self.search is None:
            self._pending = state_dict["search"]
        else:
            self.search.load_state_dict(state_dict["search"])  # on_fit_start watches them again
            self._resumed = not self.search.done and self.steps_done > 0
