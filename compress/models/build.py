"""Build the recipe's model for a dataset's shape."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from compress.models.registry import TIMM_PREFIX, create_model

if TYPE_CHECKING:  # the recipe package validates model names, so it imports us, not the other way
    from compress.recipe.schema import ModelConfig


def build_model(config: ModelConfig, num_classes: int, in_channels: int, image_size: int | None,
                seed: int | None = None) -> nn.Module:
    """``config.num_classes`` wins over the dataset's; ``seed`` fixes the initialisation."""
    kwargs = dict(config.kwargs)
    if config.name.startswith(TIMM_PREFIX):
        kwargs["pretrained"] = config.pretrained
    if image_size is not None:
        kwargs.setdefault("image_size", image_size)
    if seed is not None:
        torch.manual_seed(seed)
    return create_model(config.name, num_classes=config.num_classes or num_classes, in_channels=in_channels,
                        **kwargs)
