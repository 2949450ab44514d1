"""Which weights are pruned, at which rate per round, and in which pool (layer-wise or global).

Every prunable module (Conv2d / Linear) gets a role: ``stem`` (the first layer), ``output`` (the
classifier) or ``hidden``. Roles are what ``@stem`` / ``@classifier`` select, and ``output`` is the
layer kind that ``prune.rates.output`` applies to.

The output layer is ``prune.output`` when the recipe sets it; otherwise it is inferred:

1. timm models: ``model.get_classifier()`` (or ``pretrained_cfg['classifier']``).
2. Otherwise the candidates are the Linear and 1x1 (ungrouped) Conv2d modules defined after the
   last other prunable module (the last feature layer); of these, a candidate whose output width
   is the input width of a later candidate feeds it (an MLP layer, a squeeze-excite gate), so it
   is not the output. One candidate left: that is the output layer.
3. Several left (a projection head beside the classifier): the one with ``model.num_classes``
   outputs, with a warning naming the candidates; without ``num_classes`` or with no such
   candidate, a ``UserError`` names the candidates and asks for ``prune.output``.
4. No candidate (the model ends in a 3x3 conv): no layer is ``output``, with a warning.

The stem is timm's ``pretrained_cfg['first_conv']``, otherwise the first prunable module.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from compress.errors import UserError
from compress.pruning.affine import is_affine_in_weight
from compress.pruning.pools import rate_pools
from compress.pruning.selectors import Selector, names_under, prunable_modules
from compress.recipe.schema import GRANULARITIES, LAYER_KINDS, SCOPES, PruneConfig
from compress.registry import PRUNE_METHOD_NAMES

ROLES = ("stem", "hidden", "output")


@dataclass(frozen=True)
class Target:
    """One prunable weight: the module's name, its kind and the fraction of survivors pruned per round."""

    name: str
    kind: str
    rate: float
    group: str  # targets sharing a group are pruned together when the scope is global
    role: str = "hidden"  # stem / hidden / output


@dataclass(frozen=True)
class LayerPlan:
    """Every prunable module, pruned or not: ``reason`` says why one is not ("" when it is pruned)."""

    name: str
    kind: str
    role: str
    rate: float
    reason: str = ""


def _widths(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    return module.out_channels, module.in_channels


def _head_like(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1) and module.groups == 1


def _named(names: object) -> list[str]:
    if isinstance(names, str):
        return [names]
    if isinstance(names, (list, tuple)):
        return [n for n in names if isinstance(n, str)]
    return []


def _timm_cfg(model: nn.Module, key: str) -> list[str]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    return _named(cfg.get(key)) if isinstance(cfg, dict) else []


def _describe(name: str, module: nn.Module) -> str:
    out_width, in_width = _widths(module)
    return f"{name} ({in_width}->{out_width})"


def infer_stem(model: nn.Module) -> list[str]:
    """timm's ``pretrained_cfg['first_conv']`` (a parent module covers its children), else the first layer."""
    modules = prunable_modules(model)
    names = [name for name, _ in modules]
    found = names_under(dict(model.named_modules()), names, _timm_cfg(model, "first_conv"))
    return found or names[:1]


def infer_output(model: nn.Module) -> list[str]:
    """The classifier by the rule in this module's docstring; warns when it had to choose."""
    modules = prunable_modules(model)
    names = [name for name, _ in modules]
    every = dict(model.named_modules())
    if hasattr(model, "get_classifier"):
        classifier = model.get_classifier()
        heads = classifier if isinstance(classifier, (list, tuple)) else (classifier,)
        roots = [name for name, module in every.items() if any(module is head for head in heads) and name]
        found = names_under(every, names, roots)
        if found:
            return found
    found = names_under(every, names, _timm_cfg(model, "classifier"))
    if found:
        return found
    last_feature = max((i for i, (_, m) in enumerate(modules) if not _head_like(m)), default=-1)
    tail = modules[last_feature + 1:]
    sinks = [(name, m) for i, (name, m) in enumerate(tail)
             if not any(_widths(m)[0] == _widths(later)[1] for _, later in tail[i + 1:])]
    if not sinks:
        if modules:
            warnings.warn(f"{type(model).__name__}: no Linear or 1x1 conv after the last feature layer "
                          f"{names[-1]}, so no layer has role 'output'; set prune.output if the model has a "
                          "classifier", stacklevel=3)
        return []
    if len(sinks) == 1:
        return [sinks[0][0]]
    candidates = ", ".join(_describe(name, m) for name, m in sinks)
    num_classes = getattr(model, "num_classes", None)
    if isinstance(num_classes, int) and not isinstance(num_classes, bool):
        matching = [name for name, m in sinks if _widths(m)[0] == num_classes]
        if matching:
            chosen = matching[-1]
            warnings.warn(f"{type(model).__name__}: output layer {chosen!r} chosen by num_classes = {num_classes} "
                          f"among candidates {candidates}; set prune.output to make it explicit", stacklevel=3)
            return [chosen]
    raise UserError(f"prune.output: cannot tell which layer of {type(model).__name__} is the classifier; "
                    f"candidates: {candidates}; set prune.output to its name (or a selector)")


def plan_layers(model: nn.Module, config: PruneConfig,
                where: Callable[[str], str] | None = None) -> list[LayerPlan]:
    """Every prunable module with its role, kind and per-round rate; a selector that matches nothing
    is an error. ``where`` maps a recipe key path to ``file:line`` so messages point into the YAML."""
    locate = where or (lambda _path: "")
    for key, allowed in (("scope", SCOPES), ("method", PRUNE_METHOD_NAMES), ("granularity", GRANULARITIES)):
        value = getattr(config, key)
        if value not in allowed:
            raise UserError(f"prune.{key}: {value!r} is not one of {', '.join(allowed)}")
    try:
        from compress.pruning.widths import resolve_multiple

        resolve_multiple(config.channel_multiple)
    except UserError as error:
        raise UserError(_at(locate, "prune.channel_multiple") + str(error)) from None
    modules = prunable_modules(model)
    every = dict(model.named_modules())
    stem = infer_stem(model)
    roles: dict[str, list[str]] = {"@stem": stem}

    def check_matches(selector_text: str, key_path: str) -> Selector:
        try:
            selector = Selector(selector_text)
        except UserError as error:
            raise UserError(_at(locate, key_path) + f"{key_path}: {error}") from None
        if not any(selector.covers(name, every, roles) for name, _ in modules):
            names = ", ".join(name for name, _ in modules[:6]) + (", ..." if len(modules) > 6 else "")
            raise UserError(_at(locate, key_path) + f"{key_path}: selector {selector_text!r} matches no "
                            f"prunable module (prunable: {names})")
        return selector

    def inferred() -> list[str]:
        try:
            return infer_output(model)
        except UserError as error:
            raise UserError(_at(locate, "prune.output") + str(error)) from None

    if config.output is not None:
        roles["@classifier"] = inferred() if config.output == "@classifier" else []
        chosen = check_matches(config.output, "prune.output")
        output = [name for name, _ in modules if chosen.covers(name, every, roles)]
    else:
        output = inferred()
    roles["@classifier"] = output
    keep = [(check_matches(text, f"prune.{key}[{i}]"), f"prune.{key}[{i}] {text}")
            for key in ("keep", "exclude") for i, text in enumerate(getattr(config, key))]
    by_selector = [(check_matches(key, f"prune.rates.{key}"), rate)
                   for key, rate in config.rates.items() if key not in LAYER_KINDS]
    layers, transforming = [], set()
    for name, module in modules:
        role = "output" if name in output else "stem" if name in stem else "hidden"
        kind = "output" if role == "output" else "conv" if isinstance(module, nn.Conv2d) else "linear"
        kept_by = next((label for selector, label in keep if selector.covers(name, every, roles)), "")
        rate = config.rates.get(kind, 0.0)
        for selector, selector_rate in by_selector:
            if selector.covers(name, every, roles):
                rate = selector_rate
        reason = ""
        if kept_by:
            rate, reason = 0.0, f"kept ({kept_by})"
        elif config.granularity == "channel" and kind == "output":
            rate, reason = 0.0, "output (channel pruning would remove classes)"
        elif rate <= 0.0:
            rate, reason = 0.0, "rate 0"
        elif not is_affine_in_weight(module):
            rate, reason = 0.0, (f"kept ({type(module).__name__} transforms its weight in forward: a pruned "
                                 "zero would not stay zero)")
            transforming.add(type(module).__name__)
        layers.append(LayerPlan(name=name, kind=kind, role=role, rate=rate, reason=reason))
    if transforming:
        warnings.warn(f"prune: {', '.join(sorted(transforming))} transform their weight in forward (e.g. "
                      "standardise it), so masking does not prune them: kept whole (--dry-run lists them)",
                      stacklevel=3)
    return layers


def build_plan(model: nn.Module, config: PruneConfig,
               where: Callable[[str], str] | None = None) -> list[Target]:
    """The pruned modules of ``plan_layers``, as targets; see there."""
    layers = [layer for layer in plan_layers(model, config, where) if layer.rate > 0.0]
    pools = rate_pools({layer.name: layer.rate for layer in layers}, config.scope == "global")
    return [Target(name=layer.name, kind=layer.kind, rate=layer.rate, role=layer.role, group=pools[layer.name])
            for layer in layers]


def expected_remaining(counts: dict[str, int], targets: list[Target], rounds: int) -> list[float]:
    """Fraction of all prunable weights expected to survive after each round 0..rounds (layer-wise view)."""
    total = sum(counts.values())
    rates = {t.name: t.rate for t in targets}
    return [sum(n * (1 - rates.get(name, 0.0)) ** r for name, n in counts.items()) / total
            for r in range(rounds + 1)]


def _at(locate: Callable[[str], str], key_path: str) -> str:
    origin = locate(key_path)
    return f"{origin}: " if origin else ""
