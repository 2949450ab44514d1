"""Build the recipe's model for a dataset's shape."""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from compress.errors import UserError
from compress.models.registry import MODELS, TIMM_PREFIX, create_model
from compress.registry import RECIPE_CHECKS

if TYPE_CHECKING:  # the recipe package validates model names, so it imports us, not the other way
    from compress.recipe.schema import ModelConfig

_SET_BY_BUILDER = ("num_classes", "in_channels")  # from model.num_classes / the dataset, never kwargs


@RECIPE_CHECKS.register("model.kwargs")
def kwargs_problem(name: str, kwargs: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(key, problem)`` for the first ``model.kwargs`` key the registered factory ``name`` does not
    take, else None. Checked before calling, so a TypeError from inside the model stays a bug; timm
    models and factories taking ``**kwargs`` are only known when called (see ``build_model``)."""
    for key in kwargs:
        if key in _SET_BY_BUILDER:
            return key, f"{key} is set by the builder (model.num_classes or the dataset), not by model.kwargs"
    params = _parameters(name)
    if params is None:
        return None
    for key in kwargs:
        if key not in params:
            close = difflib.get_close_matches(key, params, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return key, (f"model {name!r} takes no argument {key!r}{hint}; "
                         f"it accepts: {', '.join(params) or 'none'}")
    return None


def build_model(config: ModelConfig, num_classes: int, in_channels: int, image_size: int | None,
                seed: int | None = None) -> nn.Module:
    """``config.num_classes`` wins over the dataset's; ``seed`` fixes the initialisation.

    A ``model.kwargs`` key the factory does not take is a ``UserError`` naming it and what it takes.
    """
    problem = kwargs_problem(config.name, config.kwargs)
    if problem:
        raise UserError(f"model.kwargs.{problem[0]}: {problem[1]}")
    kwargs = dict(config.kwargs)
    if config.name.startswith(TIMM_PREFIX):
        kwargs["pretrained"] = config.pretrained
    params = _parameters(config.name)
    # A factory without an image_size parameter is size-agnostic; passing one would only fail.
    if image_size is not None and (params is None or "image_size" in params):
        kwargs.setdefault("image_size", image_size)
    if seed is not None:
        torch.manual_seed(seed)
    try:
        return create_model(config.name, num_classes=config.num_classes or num_classes, in_channels=in_channels,
                            **kwargs)
    except TypeError as error:
        # Only "unexpected keyword argument '<a key the user gave>'" (timm, or a factory taking
        # **kwargs) is the user's mistake; any other TypeError is a bug and keeps its traceback.
        match = re.search(r"unexpected keyword argument '([^']+)'", str(error))
        if match and match.group(1) in config.kwargs:
            raise UserError(f"model.kwargs.{match.group(1)}: model {config.name!r} does not take "
                            f"{match.group(1)!r} ({' '.join(str(error).split())})") from error
        raise


def _parameters(name: str) -> tuple[str, ...] | None:
    """Keyword parameters a registered factory takes besides those the builder sets; None when
    unknown before calling it (timm, ``**kwargs``, no signature)."""
    if name.startswith(TIMM_PREFIX) or name not in MODELS:
        return None
    factory: Callable[..., Any] = MODELS.get(name)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some C callables have no signature
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(n for n, p in signature.parameters.items() if p.kind in kinds and n not in _SET_BY_BUILDER)
