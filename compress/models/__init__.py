"""Paper models, CIFAR VGG/ResNet and timm, by name."""

from compress.models import cifar, paper  # noqa: F401  (registers the models)
from compress.models.build import build_model
from compress.models.registry import (
    MODELS,
    TIMM_PREFIX,
    create_model,
    list_models,
    register_model,
)
from compress.models.unwrap import strip_wrapper_prefix, unwrap_model

__all__ = ["MODELS", "TIMM_PREFIX", "build_model", "create_model", "list_models", "register_model",
           "strip_wrapper_prefix", "unwrap_model"]
