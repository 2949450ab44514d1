"""What ``LotterySearch.on_step`` reports, and the checks behind ``state_dict`` / ``load_state_dict``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from compress.errors import UserError

if TYPE_CHECKING:
    from compress.recipe.schema import Recipe

STATE_FORMAT = "compress.LotterySearch/1"


@dataclass(frozen=True)
class StepEvent:
    """One ``on_step()``: the step count it reached and what happened at it.

    ``level`` is the level current *after* the call: when ``level_finished`` and not ``done``, the
    search has pruned and rewound, and the next step trains level ``level`` from ``start_step``.
    """

    step: int
    snapshot_taken: bool
    level_finished: bool
    done: bool
    level: int


def search_settings(recipe: Recipe, names: list[str], iterations: int) -> dict:
    """Everything that decides which masks a search finds and when it prunes, as plain JSON values.

    Saved in ``state_dict`` so a state is never loaded into a search of other settings; plain values
    (not a hash) so the refusal can name what differs.
    """
    lottery = recipe.lottery
    settings = {"prune": dataclasses.asdict(recipe.prune), "rounds": lottery.rounds, "rewind_to": lottery.rewind_to,
                "one_shot": lottery.one_shot, "seed": recipe.seed, "iterations": iterations, "targets": names}
    if lottery.strategy != "imp" or lottery.retrain != "rewind" or lottery.early_bird.every:
        # only when set: a state saved before these keys existed still loads into a plain IMP search
        settings.update(strategy=lottery.strategy, retrain=lottery.retrain,
                        early_bird=dataclasses.asdict(lottery.early_bird))
    # through JSON: tuples become lists, so the dict compares equal after a torch.save / torch.load
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def check_state(state: object, settings: dict, names: list[str], shapes: dict[str, tuple], rounds: int,
                iterations: int, rewind_to: int) -> dict:
    """Validate a saved search state against this search; returns it. Raises UserError, changes nothing."""
    keys = {"format", "settings", "level", "step_count", "done", "rewind", "masks"}
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or not keys <= set(state):
        raise UserError(f"not a LotterySearch state (expected a dict of format {STATE_FORMAT!r} from "
                        "search.state_dict())")
    if state["settings"] != settings:
        saved = state["settings"] if isinstance(state["settings"], dict) else {}
        changed = sorted(k for k in set(settings) | set(saved) if saved.get(k) != settings.get(k))
        raise UserError(f"this search state was saved with other settings ({', '.join(changed)} differ): it "
                        "belongs to another recipe or model; load it with the recipe it was saved with")
    level, step, done = state["level"], state["step_count"], state["done"]
    if not (isinstance(level, int) and 0 <= level <= rounds and isinstance(step, int) and 0 <= step <= iterations
            and isinstance(done, bool)):
        raise UserError(f"search state: level {level!r} / step_count {step!r} / done {done!r} out of range "
                        f"(rounds {rounds}, iterations {iterations})")
    masks = state["masks"]
    if not isinstance(masks, dict) or set(masks) != set(names):
        raise UserError(f"search state: masks for {sorted(masks) if isinstance(masks, dict) else masks!r}, "
                        f"this search prunes {names}")
    for name, mask in masks.items():
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != shapes[name]:
            raise UserError(f"search state: the mask of {name!r} is not a tensor of shape {shapes[name]}")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise UserError(f"search state: the mask of {name!r} is not 0/1 (an averaged copy?)")
    rewind = state["rewind"]
    if rewind is not None and not isinstance(rewind, dict):
        raise UserError("search state: rewind must be a state dict or None")
    needs_rewind = level > 0 or rewind_to == 0 or step >= rewind_to
    if rewind is None and needs_rewind:
        raise UserError(f"search state: no rewind snapshot at level {level}, step {step} (rewind_to={rewind_to})")
    return state
