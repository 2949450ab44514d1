"""The plain model inside training wrappers, and parameter names without the wrappers' prefixes.

    from compress.models.unwrap import strip_wrapper_prefix, unwrap_model
    unwrap_model(torch.compile(DistributedDataParallel(model))) is model      # True
    strip_wrapper_prefix("module._orig_mod.fc1.weight")                        # "fc1.weight"

Unwrapped, where unambiguous (repeated until the module is none of them):

* ``torch.compile`` -> ``OptimizedModule._orig_mod``;
* ``DistributedDataParallel`` and ``DataParallel`` -> ``.module``;
* weight-averaging wrappers: ``torch.optim.swa_utils.AveragedModel`` and timm's ``ModelEma``,
  ``ModelEmaV2``, ``ModelEmaV3`` -> ``.module`` (the averaged copy, which is what one deploys).

Anything else is returned as it is: a user's own module that merely has a ``module`` attribute is not
a wrapper. The model keeps its prune reparametrisation (``weight_orig`` / ``weight_mask``); the
wrappers hold the same module object, so masks installed on the unwrapped model are the wrapper's too.
"""

from __future__ import annotations

import torch.nn as nn

# the prefixes the wrappers above put in front of the plain model's parameter and module names
WRAPPER_PREFIXES = ("_orig_mod.", "module.")
_TIMM_EMA = ("ModelEma", "ModelEmaV2", "ModelEmaV3")


def _inner(model: nn.Module) -> nn.Module | None:
    """The wrapped module when ``model`` is a known wrapper, else None."""
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except Exception:  # pragma: no cover - torch builds without dynamo
        OptimizedModule = ()  # noqa: N806
    if OptimizedModule and isinstance(model, OptimizedModule):
        return model._orig_mod
    from torch.nn.parallel import DataParallel, DistributedDataParallel
    from torch.optim.swa_utils import AveragedModel

    inner = None
    if isinstance(model, (DistributedDataParallel, DataParallel, AveragedModel)):
        inner = model.module
    elif type(model).__name__ in _TIMM_EMA and type(model).__module__.startswith("timm."):
        inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain ``nn.Module`` inside compile / DDP / DataParallel / EMA wrappers (the same object,
    not a copy); ``model`` itself when it is not wrapped."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        inner = _inner(model)
        if inner is None:
            return model
        model = inner
    return model


def strip_wrapper_prefix(name: str) -> str:
    """``name`` (a module, parameter or state-dict key) without leading ``_orig_mod.`` / ``module.``
    prefixes, however many and in whatever order: ``module._orig_mod.fc1.weight`` -> ``fc1.weight``.
    A bare ``module`` or ``_orig_mod`` (the wrapped model itself) becomes ``""``."""
    while True:
        if name in ("module", "_orig_mod"):
            return ""
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        else:
            return name
