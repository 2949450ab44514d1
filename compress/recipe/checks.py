"""Value rules beyond types: ranges and choices per key path, shown by ``describe_schema`` too.

Patterns use ``[]`` for any list item and ``*`` for any key of a mapping-typed field.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable

from compress.recipe.schema import (
    DEVICES,
    GRANULARITIES,
    OPTIMIZERS,
    QAT_MODES,
    RETRAINS,
    SCHEDULES,
    SCOPES,
    STRATEGIES,
)
from compress.registry import (
    CONTROLS,
    LOGGERS,
    PREPROCESS_MODES,
    PRUNE_METHOD_NAMES,
    QUANTIZE_MODES,
    Names,
    Registry,
)

Rule = tuple[Callable[[float], bool], str]

POSITIVE: Rule = (lambda v: v > 0, "must be > 0")
NON_NEGATIVE: Rule = (lambda v: v >= 0, "must be >= 0")
FRACTION: Rule = (lambda v: 0 <= v < 1, "must be in [0, 1)")
# An accuracy *fraction*: 1 meant as "1 point" would accept every round as a winning ticket.
TOLERANCE: Rule = (lambda v: 0 <= v <= 0.1, "must be in [0, 0.1], a fraction of accuracy (0.01 = 1 point)")
# Larger sides only exhaust memory; 1024 covers every model family the toolkit targets.
IMAGE_SIDE: Rule = (lambda v: 0 < v <= 1024, "must be in [1, 1024]")
# Opsets exported (inclusive), for export.opset and export_onnx alike, checked at load so a bad value fails
# before training. The TorchScript exporter goes down to 7, but below 9 it keeps every weight as a graph
# input (ONNX IR 3), which the export checks (a dynamic batch dimension on every input) and onnxruntime's
# int8 tools do not take.
OPSET_RANGE = (9, 20)
OPSET: Rule = (lambda v: OPSET_RANGE[0] <= v <= OPSET_RANGE[1],
               f"must be in [{OPSET_RANGE[0]}, {OPSET_RANGE[1]}] (below 9 the exporter keeps weights as graph "
               "inputs, which the export does not verify)")

RANGES: dict[str, Rule] = {
    "seed": NON_NEGATIVE,
    "model.num_classes": POSITIVE,
    "data.validation_size": NON_NEGATIVE,
    "data.image_size": IMAGE_SIDE,
    "data.train_subset": POSITIVE,
    "data.test_subset": POSITIVE,
    "train.iterations": POSITIVE,
    "train.batch_size": POSITIVE,
    "train.eval_every": POSITIVE,
    "train.eval_batch_size": POSITIVE,
    "train.checkpoint_every": POSITIVE,
    "train.optimizer.lr": POSITIVE,
    "train.optimizer.momentum": FRACTION,
    "train.optimizer.weight_decay": NON_NEGATIVE,
    "train.schedule.warmup": NON_NEGATIVE,
    "train.schedule.milestones[]": POSITIVE,
    "train.schedule.gamma": POSITIVE,
    "prune.rates.*": FRACTION,
    "lottery.rounds": NON_NEGATIVE,
    "lottery.rewind_to": NON_NEGATIVE,
    "lottery.ticket_tolerance": TOLERANCE,
    "prune.score_batches": POSITIVE,
    "lottery.early_bird.every": NON_NEGATIVE,
    "lottery.early_bird.distance": FRACTION,
    "lottery.early_bird.patience": POSITIVE,
    "export.opset": OPSET,
    "export.calibration_size": POSITIVE,
    "export.qat_tolerance": TOLERANCE,
    "export.qat_iterations": POSITIVE,
}

# The run folder is runs/<name>-<hash>: a name must not be a path (/abs, ../..) or a hidden file.
NAME_RULE = "a plain folder name: letters, digits, '.', '_', '-', starting with a letter or digit, at most 100 characters"
PATTERNS: dict[str, tuple[re.Pattern[str], str]] = {
    "name": (re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"), NAME_RULE),
}

# A registry is asked when a value is checked (its providers and plugins loaded then): what is registered is valid.
CHOICES: dict[str, tuple[str, ...] | Registry | Names] = {
    "train.optimizer.name": OPTIMIZERS,
    "train.schedule.name": SCHEDULES,
    "train.device": DEVICES,
    "prune.method": PRUNE_METHOD_NAMES,
    "prune.scope": SCOPES,
    "prune.granularity": GRANULARITIES,
    "lottery.controls[]": CONTROLS,
    "lottery.strategy": STRATEGIES,
    "lottery.retrain": RETRAINS,
    "train.log[]": LOGGERS,
    "export.preprocess": PREPROCESS_MODES,
    "export.quantize": QUANTIZE_MODES,
    "export.qat": QAT_MODES,
}

# Shown by describe_schema next to ranges; enforced in validate (they need other keys' values).
CROSS_RULES: dict[str, str] = {
    "lottery.rewind_to": "must be < train.iterations",
    "train.schedule.milestones": "strictly increasing; needed by the step schedule",
    "train.optimizer.nesterov": "needs sgd with momentum > 0",
    "lottery.strategy": "at_init needs lottery.retrain rewind and no early_bird; with one_shot only the last level's density is trained",
    "prune.method": "random_erk, snip, grasp, synflow need lottery.strategy at_init and granularity weight",
}


def check_value(pattern: str, value: object) -> str | None:
    """The problem with ``value`` at ``pattern`` (one line), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number"
    choices = CHOICES.get(pattern)
    if choices is not None and value not in choices:
        close = difflib.get_close_matches(str(value).lower(), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{value!r} is not one of {', '.join(choices)}{hint}"
    rule = RANGES.get(pattern)
    if rule is not None and isinstance(value, (int, float)) and not rule[0](value):
        return f"{value!r} {rule[1]}"
    regex = PATTERNS.get(pattern)
    if regex is not None and isinstance(value, str) and not regex[0].fullmatch(value):
        return f"{value!r} is not {regex[1]}"
    return None


def rule_text(pattern: str, help_text: str = "") -> str:
    """The rules at ``pattern`` in words; choices already spelled out in ``help_text`` are left out."""
    parts = []
    if pattern in RANGES:
        parts.append(RANGES[pattern][1].removeprefix("must be "))
    if pattern in PATTERNS:
        parts.append(PATTERNS[pattern][1])
    if pattern in CHOICES and not all(choice in help_text for choice in CHOICES[pattern]):
        parts.append("one of " + ", ".join(CHOICES[pattern]))
    if pattern in CROSS_RULES:
        parts.append(CROSS_RULES[pattern])
    return "; ".join(parts)
