"""Any timm model as ``timm/<name>``; pretrained weights only when already cached locally."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from compress.errors import UserError


def create_timm_model(name: str, num_classes: int = 10, in_channels: int | None = None,
                      pretrained: bool = False, image_size: int | None = None, **kwargs: Any) -> nn.Module:
    import timm

    if not timm.list_models(name) and name not in timm.list_models(pretrained=True):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:8]
        raise UserError(f"unknown timm model {name!r}; similar: {', '.join(close) or 'none'} (see timm.list_models())")
    if in_channels is not None:
        kwargs["in_chans"] = in_channels
    if image_size is not None and _takes_img_size(name):
        kwargs["img_size"] = image_size
    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except Exception as error:  # network errors surface as many types; name the cause in one line
        if pretrained:
            raise UserError(
                f"timm model {name!r}: pretrained weights are not available locally ({type(error).__name__}); "
                "set model.pretrained: false or pre-fill the Hugging Face cache"
            ) from error
        raise


def _takes_img_size(name: str) -> bool:
    # Vision transformers fix their position embeddings to the input size; CNNs take any size.
    return any(key in name for key in ("vit", "deit", "swin", "beit", "eva", "mixer"))
