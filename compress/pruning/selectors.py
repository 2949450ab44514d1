"""Selectors pick modules by name (glob or ``re:<regex>``) or by type (``type:<ClassName>``)."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

import torch.nn as nn

from compress.errors import UserError

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class Selector:
    text: str

    def __post_init__(self) -> None:
        if self.text.startswith("re:"):
            try:
                re.compile(self.text[3:])
            except re.error as error:
                raise UserError(f"selector {self.text!r}: invalid regex ({error})") from None
        elif self.text.startswith("type:") and not self.text[5:]:
            raise UserError(f"selector {self.text!r}: missing class name after 'type:'")
        elif not self.text:
            raise UserError("empty selector")

    def matches(self, name: str, module: nn.Module) -> bool:
        if self.text.startswith("re:"):
            return re.fullmatch(self.text[3:], name) is not None
        if self.text.startswith("type:"):
            wanted = self.text[5:]
            return any(cls.__name__ == wanted for cls in type(module).__mro__)
        return fnmatch.fnmatchcase(name, self.text)


def prunable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv2d and Linear modules, in definition order: their ``weight`` is what gets pruned."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, PRUNABLE_TYPES)]
