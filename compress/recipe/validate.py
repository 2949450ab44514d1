"""Raw recipe data (nested dicts from YAML, with locations) -> a checked ``Recipe``.

Rules: unknown keys are errors with a did-you-mean; ``null`` means "the schema default" (and
inside a mapping-typed field such as ``prune.rates`` it drops that entry); ints are accepted
for floats, bools are never numbers, strings are never numbers; lists fill tuple fields.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from compress.recipe.checks import check_value
from compress.recipe.errors import RecipeError
from compress.recipe.keys import (
    KeyPath,
    did_you_mean,
    field_types,
    format_path,
    is_mapping,
    is_sequence,
    strip_optional,
    type_name,
)
from compress.recipe.schema import LAYER_KINDS, Recipe
from compress.recipe.yamlio import Locations, LooseInt, loose_int_problem
from compress.registry import DATASETS, MODELS, RECIPE_CHECKS, TIMM_PREFIX, init_only


class Builder:
    def __init__(self, locs: Locations, source: str) -> None:
        self.locs = locs
        self.source = source

    def location(self, path: KeyPath) -> str:
        """The recorded location of ``path`` or of its nearest recorded ancestor, else the source."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.locs:
                return self.locs[path[:end]]
        return self.source

    def error(self, path: KeyPath, problem: str) -> RecipeError:
        return RecipeError(problem, self.location(path), format_path(path))

    def section(self, cls: type, data: Any, path: KeyPath) -> Any:
        if not isinstance(data, dict):
            raise self.error(path, f"expected a mapping (a section), got {_show(data)}")
        fields = field_types(cls)
        values = {}
        for key, value in data.items():
            if not isinstance(key, str):
                raise self.error(path, f"key {key!r} is not a string")
            if key not in fields:
                hint = " (only files may use 'extends')" if key == "extends" and not path else ""
                raise self.error((*path, key), f"unknown key{did_you_mean(key, fields)}{hint}")
            if value is not None:  # null = the schema default
                values[key] = self.value(value, fields[key], (*path, key), _pattern(path, key))
        return cls(**values)

    def value(self, value: Any, hint: Any, path: KeyPath, pattern: str) -> Any:
        bare, _ = strip_optional(hint)
        if isinstance(bare, type) and dataclasses.is_dataclass(bare):
            return self.section(bare, value, path)
        if is_sequence(bare):
            if not isinstance(value, (list, tuple)):
                raise self.error(path, f"expected a list ({type_name(bare)}), got {_show(value)}")
            item = typing.get_args(bare)[0]
            return tuple(self.value(v, item, (*path, i), pattern + "[]") for i, v in enumerate(value))
        if is_mapping(bare):
            if not isinstance(value, dict):
                raise self.error(path, f"expected a mapping ({type_name(bare)}), got {_show(value)}")
            item = typing.get_args(bare)[1]
            out = {}
            for key, entry in value.items():
                if not isinstance(key, str):
                    raise self.error(path, f"key {key!r} is not a string")
                if entry is not None:  # null drops an entry, e.g. one inherited through extends
                    out[str(key)] = self.value(entry, item, (*path, key), pattern + ".*")
            return out
        if bare is Any:
            return self.plain(value, path)
        converted = self.scalar(value, bare, path)
        problem = check_value(pattern, converted)
        if problem:
            raise self.error(path, problem)
        return converted

    def scalar(self, value: Any, bare: type, path: KeyPath) -> Any:
        if isinstance(value, LooseInt):  # 010, 0x10, 1_000, 1:30: text, never a number
            if bare is str:
                return str(value)
            raise self.error(path, loose_int_problem(value))
        ok = {
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, (int, float)) and not isinstance(value, bool),
            str: isinstance(value, str),
        }.get(bare)
        if ok is None:
            raise TypeError(f"schema type {bare!r} at {format_path(path)} is not supported by the loader")
        if not ok:
            raise self.error(path, f"expected {type_name(bare)}, got {_show(value)}")
        return float(value) if bare is float else value

    def plain(self, value: Any, path: KeyPath) -> Any:
        """Free-form values (``model.kwargs``) stay YAML-shaped so dump -> load gives them back equal."""
        if isinstance(value, LooseInt):  # model.kwargs: {depth: 010} would be 8 in YAML 1.1
            raise self.error(path, loose_int_problem(value))
        if value is None or isinstance(value, (str, bool, int, float)):
            return value
        if isinstance(value, (list, tuple)):
            return [self.plain(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str):
                    raise self.error(path, f"key {key!r} is not a string")
            return {str(k): self.plain(v, (*path, k)) for k, v in value.items()}
        raise self.error(path, f"{_show(value)} is not a plain YAML value")


# The sections a recipe for one's own training loop needs (``load_recipe(..., sections=...)``).
PARTIAL_SECTIONS = ("prune", "lottery")
_ALWAYS = ("name", "seed")  # top-level scalars, checked in every mode


def build_recipe(data: dict[str, Any], locs: Locations, source: str,
                 sections: tuple[str, ...] | None = None) -> Recipe:
    """``sections``: check only these sections (and ``name`` / ``seed``); the others are dropped
    unread and keep their schema defaults, and no rule that involves them or a registry runs."""
    builder = Builder(locs, source)
    if sections is not None:
        known = [f.name for f in dataclasses.fields(Recipe) if f.name not in _ALWAYS]
        for i, section in enumerate(sections):
            if section not in known:
                raise RecipeError(f"sections[{i}]: unknown section {section!r}{did_you_mean(section, known)}; "
                                  f"sections are {', '.join(known)}", source)
        if isinstance(data, dict):
            train = data.get("train")
            data = {key: value for key, value in data.items() if key in sections or key in _ALWAYS
                    or key not in known}  # an unknown key stays, so a typo is still reported
            if "train" not in sections and isinstance(train, dict) and train.get("iterations") is not None:
                data["train"] = {"iterations": train["iterations"]}  # the budget is read even when partial
    recipe = builder.section(Recipe, data, ())
    _check_recipe(recipe, builder, sections)
    return recipe


def _check_recipe(recipe: Recipe, b: Builder, sections: tuple[str, ...] | None = None) -> None:
    """Rules that involve more than one key or a registry; with ``sections`` only those within them."""
    def checked(*names: str) -> bool:
        return sections is None or all(name in sections for name in names)

    train, lottery = recipe.train, recipe.lottery
    schedule, opt = train.schedule, train.optimizer
    if checked("train", "lottery") and lottery.rewind_to >= train.iterations:
        raise b.error(("lottery", "rewind_to"), f"{lottery.rewind_to} is beyond the training budget "
                                                f"(train.iterations = {train.iterations})")
    if checked("train"):
        if schedule.name == "step" and not schedule.milestones:
            raise b.error(("train", "schedule", "milestones"), "the step schedule needs at least one milestone")
        for i in range(1, len(schedule.milestones)):
            if schedule.milestones[i] <= schedule.milestones[i - 1]:
                raise b.error(("train", "schedule", "milestones", i), "milestones must be strictly increasing")
        if opt.nesterov and (opt.name != "sgd" or opt.momentum <= 0):
            raise b.error(("train", "optimizer", "nesterov"),
                          "Nesterov momentum needs optimizer sgd with momentum > 0")
    if checked("export") and recipe.export.qat == "on" and recipe.export.quantize == "none":
        raise b.error(("export", "qat"), "on needs an int8 export (export.quantize: int8, int8-static or "
                                         "int8-dynamic); with quantize none there is nothing to fine-tune for")
    if checked("prune", "lottery"):
        _check_strategy(recipe, b)
    for i, logger in enumerate(recipe.train.log):
        if logger in recipe.train.log[:i]:
            raise b.error(("train", "log", i), f"duplicate logger {logger!r}")
    for i, control in enumerate(lottery.controls):
        if control in lottery.controls[:i]:
            raise b.error(("lottery", "controls", i), f"duplicate control {control!r}")
    if checked("model"):
        for key, field_path in (("num_classes", "model.num_classes"), ("pretrained", "model.pretrained")):
            if key in recipe.model.kwargs:
                raise b.error(("model", "kwargs", key), f"set {field_path} instead")
        _check_model(recipe.model.name, b)
        _check_model_kwargs(recipe.model.name, recipe.model.kwargs, b)
    if checked("data"):
        _check_dataset(recipe.data.name, b)
    if recipe.prune.output is not None:
        _check_selector(recipe.prune.output, ("prune", "output"), b)
    for key in ("keep", "exclude"):
        for i, text in enumerate(getattr(recipe.prune, key)):
            _check_selector(text, ("prune", key, i), b)
    for key in recipe.prune.rates:
        if key not in LAYER_KINDS:
            _check_selector(key, ("prune", "rates", key), b)


def _check_strategy(recipe: Recipe, b: Builder) -> None:
    """Which methods, retraining variants and controls go together (one line each, naming the fix)."""
    prune, lottery = recipe.prune, recipe.lottery
    if prune.global_normalize and (prune.scope != "global" or lottery.strategy != "imp"):
        raise b.error(("prune", "global_normalize"), "normalises scores across a global pool: needs prune.scope: "
                                                     "global and lottery.strategy: imp")
    if init_only(prune.method) and lottery.strategy != "at_init":
        raise b.error(("prune", "method"), f"{prune.method!r} scores weights at initialization: set "
                                           "lottery.strategy: at_init")
    if init_only(prune.method) and prune.granularity != "weight":
        raise b.error(("prune", "granularity"), f"{prune.method!r} scores single weights; granularity "
                                                f"{prune.granularity!r} is defined for magnitude and random only")
    if lottery.strategy == "at_init":
        for path, bad, what in ((("lottery", "retrain"), lottery.retrain != "rewind", "lottery.retrain"),
                                (("lottery", "early_bird", "every"), lottery.early_bird.every > 0,
                                 "lottery.early_bird")):
            if bad:
                raise b.error(path, f"{what} applies to strategy imp; at_init scores each round's mask at "
                                    "the initialization and trains it once")
    if lottery.early_bird.every and lottery.retrain != "rewind":
        raise b.error(("lottery", "early_bird", "every"), "early-bird masks are drawn mid-level and the next "
                                                         "round rewinds to them: use lottery.retrain rewind")
    if "invert" in lottery.controls and prune.granularity != "weight":
        raise b.error(("lottery", "controls"), "invert ranks single weights; use it with granularity weight")


def _check_model(name: str, b: Builder) -> None:
    if name.startswith(TIMM_PREFIX):
        if not name[len(TIMM_PREFIX):].strip():
            raise b.error(("model", "name"), "timm/ needs a model name, e.g. timm/resnet18")
        return  # timm's own list is checked when the model is built (listing it here is slow)
    if name not in MODELS:
        raise b.error(("model", "name"), f"{MODELS.unknown_message(name)}; or timm/<name> for any timm model")


def _check_model_kwargs(name: str, kwargs: dict[str, Any], b: Builder) -> None:
    # At load time too, so --dry-run and a bad recipe fail with file:line before any data is read.
    problem = RECIPE_CHECKS.get("model.kwargs")(name, kwargs)
    if problem:
        raise b.error(("model", "kwargs", problem[0]), problem[1])


def _check_dataset(name: str, b: Builder) -> None:
    if name not in DATASETS:
        raise b.error(("data", "name"), DATASETS.unknown_message(name))


def _check_selector(text: str, path: KeyPath, b: Builder) -> None:
    problem = RECIPE_CHECKS.get("selector")(text)
    if problem:
        raise b.error(path, problem)


def _pattern(path: KeyPath, key: str) -> str:
    return format_path((*path, key))


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, (int, float)):
        return f"{type(value).__name__} {value!r}"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__
