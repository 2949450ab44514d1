"""Control experiments from any driver: the one way their start state and masks are made.

``find_ticket.py`` (the runner) and a user's own loop (``LotterySearch.control_models``) both call
``control_start``, so a control of level r has the same masks, the same re-initialisation or random
mask and the same rewind point wherever it is trained. Any control registered in
``compress.lottery.controls.CONTROLS`` works.

Own loop, after ``prune_and_rewind()`` into level r >= 1::

    for name, control in search.control_models(make_model).items():   # make_model(seed) -> a fresh model
        train(control, steps=range(search.start_step + 1, search.iterations + 1))   # like the ticket
        search.record(name, accuracy=evaluate(control))
    search.record("ticket", accuracy=...)            # the ticket's own result of the level
    search.report()["levels"]                        # one row per level: ticket and control columns
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from compress.errors import UserError
from compress.lottery.controls import CONTROLS, ControlInput, control_seed
from compress.lottery.strategies import own_inverted_masks
from compress.pruning import Masks, apply_masks, load_plain_state_dict
from compress.pruning.groups import ChannelGroup


def control_start(name: str, level: int, masks: Masks, start_state: dict[str, torch.Tensor], seed: int,
                  granularity: str, make_model: Callable[..., nn.Module],
                  inverted: Callable[[], Masks] | None = None,
                  groups: Sequence[ChannelGroup] | None = None) -> tuple[dict[str, torch.Tensor], Masks]:
    """The start state and masks control ``name`` trains at ``level`` (the ticket's ``masks`` and rewind
    point ``start_state``; ``seed`` the recipe's); ``make_model(seed)`` builds a fresh model; ``inverted()``
    gives the level's masks ranked the other way (the ``invert`` control; only a run dir has the scores);
    ``groups``: the search's channel groups, reused by the structured ``random_prune`` (no second trace)."""
    control = CONTROLS.get(name)
    return control(ControlInput(round_index=level, masks=masks, start_state=start_state,
                                seed=control_seed(seed, level), granularity=granularity, make_model=make_model,
                                inverted=inverted, groups=groups))


def build_control(make_model: Callable[..., nn.Module], seed: int, start_state: dict[str, torch.Tensor],
                  masks: Masks) -> nn.Module:
    """A fresh model with ``masks`` installed (torch prune) and ``start_state`` loaded: what trains."""
    model = make_model(seed)
    apply_masks(model, masks)
    load_plain_state_dict(model, start_state)
    return model


class ControlsMixin:
    """``LotterySearch``'s control models and the results recorded per level (``record``)."""

    recipe: Any
    level: int
    rewind_state: dict[str, torch.Tensor] | None
    prune_config: Any
    seed: int
    masks: Masks
    structure: Any  # StructuredPlan | None

    def control_names(self) -> tuple[str, ...]:
        """The recipe's ``lottery.controls``."""
        return tuple(self.recipe.lottery.controls)

    def control_models(self, make_model: Callable[[int], nn.Module],
                       names: tuple[str, ...] | None = None) -> dict[str, nn.Module]:
        """The control models of the current level, exactly as ``find_ticket.py`` builds them: the level's
        masks (``random_prune``: random ones of the same count), the rewind point (``reinit``: a fresh
        init from ``make_model(seed)``), prune reparametrisation installed. Train each like the ticket of
        this level, from ``start_step`` to ``iterations``, with a fresh optimizer and the schedule rewound
        to ``start_step``; then ``record(name, ...)``. Level 0 has none (the dense level is the control)."""
        if self.level == 0:
            raise UserError("control_models(): level 0 is the dense network; controls start at level 1, after "
                            "prune_and_rewind()")
        if self.rewind_state is None:
            raise UserError("control_models(): no rewind snapshot yet")
        names = self.control_names() if names is None else tuple(names)
        masks = {name: mask.detach().clone() for name, mask in self.masks.items()}
        models = {}
        for name in names:
            start, control_masks = control_start(name, self.level, masks, self.rewind_state, self.seed,
                                                 self.prune_config.granularity, make_model,
                                                 inverted=lambda: own_inverted_masks(self, masks),
                                                 groups=self.structure.groups if self.structure else None)
            models[name] = build_control(make_model, control_seed(self.seed, self.level), start, control_masks)
        return models

    def record(self, name: str, **metrics: float) -> None:
        """Record the current level's result of ``name`` (``"ticket"`` or a control) for ``report()``."""
        if name != "ticket" and name not in CONTROLS:
            raise UserError(f"record({name!r}): 'ticket' or a registered control ({', '.join(CONTROLS.list())})")
        results = self.__dict__.setdefault("_results", {})
        results.setdefault(self.level, {})[name] = dict(metrics)

    def level_rows(self) -> list[dict]:
        """One row per level so far: ``{"level", "ticket": {...}, <control>: {...} or None}``; a control
        the recipe asks for and nobody recorded is None, so a missing one shows."""
        results = self.__dict__.get("_results", {})
        rows = []
        for level in sorted(set(results) | set(range(self.level + 1))):
            row: dict[str, Any] = {"level": level, "ticket": results.get(level, {}).get("ticket")}
            for name in (self.control_names() if level > 0 else ()):
                row[name] = results.get(level, {}).get(name)
            for name, metrics in results.get(level, {}).items():
                row.setdefault(name, metrics)
            rows.append(row)
        return rows
