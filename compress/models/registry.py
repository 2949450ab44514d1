"""Model registry: ``create_model(name, num_classes=..., ...)`` and ``list_models(pattern)``."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from compress.registry import MODELS, TIMM_PREFIX

register_model = MODELS.register


def create_model(name: str, num_classes: int = 10, in_channels: int | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model, or any timm model as ``timm/<name>``."""
    if name.startswith(TIMM_PREFIX):
        from compress.models.timm_adapter import create_timm_model

        return create_timm_model(name[len(TIMM_PREFIX):], num_classes=num_classes, in_channels=in_channels, **kwargs)
    factory = MODELS.get(name)
    if in_channels is not None:
        kwargs["in_channels"] = in_channels
    return factory(num_classes=num_classes, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.list(pattern)
