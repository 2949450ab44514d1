"""Which entry point honours, refuses or warns about each recipe key: the one source of truth.

Four entry points read recipes: ``tools/find_ticket.py`` (the whole experiment), ``LotterySearch`` in
a user's own loop, and the Lightning and Hugging Face callbacks. Every schema key has a row here saying,
per entry point, one of

- ``honoured``: the entry point applies the key's value;
- ``refused``: a value other than the schema default is a one-line ``UserError`` (continuing would
  give a silently different result);
- ``warned``: the key belongs to code the entry point does not own (the user's optimizer, data,
  export); a value other than the default is named in one warning, so it is never dropped unseen.

``enforce(recipe, entry_point)`` does the refusing and warning from this table; each entry point calls
it once. ``tests/recipe/test_support.py`` fails when a schema key has no row, and checks that the table
in docs/own-code.md (``python -m compress.recipe.support --write``) is this one.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from pathlib import Path
from typing import Any

from compress.errors import UserError
from compress.recipe.keys import field_types, strip_optional
from compress.recipe.schema import Recipe

ENTRY_POINTS = ("find_ticket", "search", "lightning", "hf")
ENTRY_TITLES = {"find_ticket": "find_ticket.py", "search": "LotterySearch", "lightning": "Lightning callback",
                "hf": "HF callback"}
STATUSES = ("honoured", "refused", "warned")

H, R, W = "honoured", "refused", "warned"
_OWN = (H, W, W, W)  # find_ticket.py applies it; in your own code it is your code's to apply
_ALL = (H, H, H, H)
_NO_CONTROLS = (H, H, R, R)

# key path -> (status per entry point in ENTRY_POINTS order, why). A key of a mapping type (prune.rates,
# model.kwargs) has one row for the whole mapping.
SUPPORT: dict[str, tuple[tuple[str, str, str, str], str]] = {
    "name": (_ALL, "a label: names find_ticket.py's run dir; nothing for other entry points to apply"),
    "seed": (_ALL, "seeds random masks, controls and ticket.batches()"),
    "model.name": (_OWN, "your code builds the model"),
    "model.num_classes": (_OWN, "your code builds the model"),
    "model.pretrained": (_OWN, "your code builds the model"),
    "model.kwargs": (_OWN, "your code builds the model"),
    "data.name": (_ALL, "channel granularity traces an input of this dataset's shape; your data otherwise"),
    "data.root": (_OWN, "your code loads the data"),
    "data.validation_size": (_OWN, "your code splits the data"),
    "data.augment": (_OWN, "your code loads the data"),
    "data.image_size": (_ALL, "channel granularity traces an input of this side; your data otherwise"),
    "data.train_subset": (_OWN, "your code loads the data"),
    "data.test_subset": (_OWN, "your code loads the data"),
    "data.download": (_OWN, "your code loads the data"),
    "train.iterations": (_ALL, "steps per level (or iterations=); a partial recipe must give one of them"),
    "train.batch_size": (_OWN, "your DataLoader's (ticket.batches() of the callbacks uses it)"),
    "train.optimizer.name": (_OWN, "your optimizer (compress.training.build_optimizer builds the recipe's)"),
    "train.optimizer.lr": (_OWN, "your optimizer"),
    "train.optimizer.momentum": (_OWN, "your optimizer"),
    "train.optimizer.nesterov": (_OWN, "your optimizer"),
    "train.optimizer.weight_decay": (_OWN, "your optimizer"),
    "train.schedule.name": (_OWN, "your LR schedule (rewound per level by watch())"),
    "train.schedule.warmup": (_OWN, "your LR schedule"),
    "train.schedule.milestones": (_OWN, "your LR schedule"),
    "train.schedule.gamma": (_OWN, "your LR schedule"),
    "train.eval_every": (_OWN, "your evaluation"),
    "train.eval_batch_size": (_OWN, "your evaluation"),
    "train.checkpoint_every": (_OWN, "your checkpoints (search.state_dict() goes in them)"),
    "train.device": (_OWN, "your model's device"),
    "train.bf16": (_OWN, "your autocast"),
    "train.channels_last": (_OWN, "your memory format"),
    "train.sync_batchnorm": (_OWN, "your DDP set-up"),
    "train.log": (_OWN, "your trainer's logger (Lightning's logger, HF's report_to); the Lightning callback "
                        "logs the search's progress there"),
    "train.compile": (_OWN, "your torch.compile(model) (the search unwraps it)"),
    "prune.method": (_ALL, ""),
    "prune.scope": (_ALL, ""),
    "prune.granularity": (_ALL, ""),
    "prune.global_normalize": (_ALL, ""),
    "prune.rates": (_ALL, ""),
    "prune.output": (_ALL, ""),
    "prune.keep": (_ALL, ""),
    "prune.exclude": (_ALL, ""),
    "prune.channel_multiple": (_ALL, ""),
    "prune.score_batches": (_OWN, "own loop: search.score_at_init(batches); callbacks: score_batches="),
    "lottery.rounds": (_ALL, ""),
    "lottery.rewind_to": (_ALL, ""),
    "lottery.strategy": (_ALL, "at_init with snip / grasp / synflow needs batches: score_at_init / score_batches="),
    "lottery.retrain": (_ALL, "lr_rewind / finetune keep the trained weights; the watched scheduler is replayed "
                              "from rewind_to (lr_rewind) or held at its final rate (finetune)"),
    "lottery.early_bird.every": (_ALL, "a level ends when its masks converge; the callbacks stop the fit when the "
                                       "search is done (total_steps is then an upper bound)"),
    "lottery.early_bird.distance": (_ALL, "see lottery.early_bird.every"),
    "lottery.early_bird.patience": (_ALL, "see lottery.early_bird.every"),
    "lottery.controls": (_NO_CONTROLS, "own loop: search.control_models() + record(), report() shows a "
                                       "missing one as None; the callbacks refuse (no second training loop)"),
    "lottery.one_shot": (_ALL, ""),
    "lottery.ticket_tolerance": (_OWN, "find_ticket.py picks the ticket; search.report() has no pick"),
    "lottery.executor": (_OWN, "where find_ticket.py trains controls; yours train where your code runs"),
    "export.onnx": (_OWN, "call compress.export_onnx yourself"),
    "export.compact": (_OWN, "call compress.pruning.compact yourself"),
    "export.opset": (_OWN, "export_onnx(opset=...)"),
    "export.preprocess": (_OWN, "find_ticket.py's export"),
    "export.quantize": (_OWN, "find_ticket.py's export"),
    "export.calibration_size": (_OWN, "find_ticket.py's export"),
    "export.qat": (_OWN, "find_ticket.py's export"),
    "export.qat_tolerance": (_OWN, "find_ticket.py's export"),
    "export.qat_iterations": (_OWN, "find_ticket.py's export"),
}


def schema_keys(cls: type = Recipe, prefix: str = "") -> list[str]:
    """Every leaf key path of the schema (a mapping-typed field is one leaf), in schema order."""
    keys = []
    for name, hint in field_types(cls).items():
        bare, _ = strip_optional(hint)
        if isinstance(bare, type) and dataclasses.is_dataclass(bare):
            keys += schema_keys(bare, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def status(key: str, entry_point: str) -> str:
    """``honoured`` / ``refused`` / ``warned`` for ``key`` at ``entry_point``; a key without a row is an error."""
    if entry_point not in ENTRY_POINTS:
        raise ValueError(f"entry point {entry_point!r}: one of {', '.join(ENTRY_POINTS)}")
    if key not in SUPPORT:
        raise KeyError(f"recipe key {key!r} has no row in compress/recipe/support.py: add one")
    return SUPPORT[key][0][ENTRY_POINTS.index(entry_point)]


def _value(recipe: Any, key: str) -> Any:
    for part in key.split("."):
        recipe = getattr(recipe, part)
    return recipe


def changed_keys(recipe: Recipe) -> list[str]:
    """Leaf keys whose value differs from the schema default."""
    default = Recipe()
    changed = []
    for key in schema_keys():
        if _value(recipe, key) != _value(default, key):
            changed.append(key)
    return changed


def enforce(recipe: Recipe, entry_point: str, ignore: tuple[str, ...] = ()) -> None:
    """Refuse (one ``UserError``) or warn (one warning) per this table for ``recipe`` at ``entry_point``.

    ``ignore``: keys the caller handles itself (e.g. ``train.iterations`` when ``iterations=`` is given).
    """
    from compress.recipe.loader import where

    changed = [key for key in changed_keys(recipe) if key not in ignore]
    title = ENTRY_TITLES[entry_point]
    refused = [key for key in changed if status(key, entry_point) == R]
    if refused:
        key = refused[0]
        at = where(recipe, key)
        raise UserError(f"{at + ': ' if at else ''}{key} = {_value(recipe, key)!r} is not supported by the "
                        f"{title} ({SUPPORT[key][1]}); see docs/own-code.md")
    warned = [key for key in changed if status(key, entry_point) == W]
    if warned:
        warnings.warn(f"{title} does not apply these recipe keys; your code must: {', '.join(warned)} "
                      "(table: docs/own-code.md)", stacklevel=3)


def steps_per_level(recipe: Recipe, iterations: int | None) -> int:
    """Optimizer steps per level: ``iterations`` or ``train.iterations``. A partial recipe
    (``load_recipe(..., sections=PARTIAL_SECTIONS)``) never supplies the schema's default budget: it
    must set ``train.iterations`` (read even in partial mode) or the caller must pass ``iterations=``."""
    sections = getattr(recipe, "_recipe_sections", None)
    if sections is None or "train" in sections:
        return recipe.train.iterations if iterations is None else iterations
    given = bool(getattr(recipe, "_recipe_budget_given", False))
    if iterations is None and not given:
        raise UserError(f"a partial recipe (sections={list(sections)}) sets no steps per level: pass "
                        "iterations=N (LotterySearch / the callbacks) or set train.iterations in the recipe")
    if iterations is not None and given and iterations != recipe.train.iterations:
        raise UserError(f"iterations={iterations} and the recipe's train.iterations = {recipe.train.iterations} "
                        "disagree: give the steps per level in one place")
    return recipe.train.iterations if iterations is None else iterations


# -- the table in docs/own-code.md ---------------------------------------------------------------------
BEGIN = "<!-- support-table:begin (generated by python -m compress.recipe.support --write) -->"
END = "<!-- support-table:end -->"
DOC = Path(__file__).resolve().parents[2] / "docs" / "own-code.md"


def markdown_table() -> str:
    """The table as Markdown: a row per schema key, a column per entry point."""
    head = "| key | " + " | ".join(ENTRY_TITLES[e] for e in ENTRY_POINTS) + " | why |"
    lines = [head, "|" + "---|" * (len(ENTRY_POINTS) + 2)]
    for key in schema_keys():
        statuses, why = SUPPORT[key]
        lines.append(f"| `{key}` | " + " | ".join(statuses) + f" | {why} |")
    return "\n".join(lines)


def render(text: str) -> str:
    """``text`` with the table between the markers replaced by the current one."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"{DOC} has no {BEGIN!r} ... {END!r} markers")
    before, rest = text.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    return f"{before}{BEGIN}\n{markdown_table()}\n{END}{after}"


def main(argv: list[str]) -> int:
    text = DOC.read_text()
    new = render(text)
    if "--write" in argv:
        from compress.io import save_text

        save_text(new, DOC)
        return 0
    print(markdown_table())
    return 0 if new == text else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
