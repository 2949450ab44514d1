"""Which weights are pruned, at which rate per round, and in which pool (layer-wise or global)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from compress.errors import UserError
from compress.models import output_layer_name
from compress.pruning.selectors import Selector, prunable_modules
from compress.recipe.schema import GRANULARITIES, LAYER_KINDS, METHODS, SCOPES, PruneConfig


@dataclass(frozen=True)
class Target:
    """One prunable weight: the module's name, its kind and the fraction of survivors pruned per round."""

    name: str
    kind: str
    rate: float
    group: str  # targets sharing a group are pruned together when the scope is global


def _kind(name: str, module: nn.Module, output_name: str | None) -> str:
    if name == output_name:
        return "output"
    return "conv" if isinstance(module, nn.Conv2d) else "linear"


def build_plan(model: nn.Module, config: PruneConfig,
               where: Callable[[str], str] | None = None) -> list[Target]:
    """Resolve ``config`` against ``model``; a selector that matches nothing is an error.

    ``where`` maps a recipe key path to ``file:line`` so the message can point into the YAML.
    """
    locate = where or (lambda _path: "")
    for key, allowed in (("scope", SCOPES), ("method", METHODS), ("granularity", GRANULARITIES)):
        value = getattr(config, key)
        if value not in allowed:
            raise UserError(f"prune.{key}: {value!r} is not one of {', '.join(allowed)}")
    modules = prunable_modules(model)
    output_name = output_layer_name(model)

    def check_matches(selector_text: str, key_path: str) -> Selector:
        selector = Selector(selector_text)
        if not any(selector.matches(name, module) for name, module in modules):
            origin = locate(key_path)
            prefix = f"{origin}: " if origin else ""
            names = ", ".join(name for name, _ in modules[:6]) + (", ..." if len(modules) > 6 else "")
            raise UserError(f"{prefix}{key_path}: selector {selector_text!r} matches no prunable module "
                             f"(prunable: {names})")
        return selector

    excluded = [check_matches(text, f"prune.exclude[{i}]") for i, text in enumerate(config.exclude)]
    by_selector = [(check_matches(key, f"prune.rates.{key}"), rate)
                   for key, rate in config.rates.items() if key not in LAYER_KINDS]
    targets = []
    for name, module in modules:
        if any(selector.matches(name, module) for selector in excluded):
            continue
        kind = _kind(name, module, output_name)
        rate = config.rates.get(kind, 0.0)
        for selector, selector_rate in by_selector:
            if selector.matches(name, module):
                rate = selector_rate
        if config.granularity == "channel" and kind == "output":
            rate = 0.0  # removing output neurons would remove classes
        if rate <= 0.0:
            continue
        # global: one pool per rate *value* (to 6 significant digits: 0.2 and 0.2000001 are one pool)
        group = f"rate={float(rate):.6g}" if config.scope == "global" else name
        targets.append(Target(name=name, kind=kind, rate=rate, group=group))
    return targets


def expected_remaining(counts: dict[str, int], targets: list[Target], rounds: int) -> list[float]:
    """Fraction of all prunable weights expected to survive after each round 0..rounds (layer-wise view)."""
    total = sum(counts.values())
    rates = {t.name: t.rate for t in targets}
    return [sum(n * (1 - rates.get(name, 0.0)) ** r for name, n in counts.items()) / total
            for r in range(rounds + 1)]
