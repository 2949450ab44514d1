"""Selectors pick modules by name (glob or ``re:<regex>``), by type (``type:<ClassName>``) or by role
(``@classifier``, ``@stem``: resolved from the model, see ``compress.pruning.plan``).

A selector that names a container (``head``, ``layer4``, ``type:SqueezeExcite``) covers every
prunable module inside it: ``covers`` tries the module's own name and each of its parents' names.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch.nn as nn

from compress.errors import UserError
from compress.registry import RECIPE_CHECKS

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)
SYMBOLS = ("@classifier", "@stem")  # role selectors; YAML needs them quoted: ['@stem', '@classifier']
SELECTOR_HELP = ("a glob on the module name (a parent module covers its children, e.g. head or layer4), "
                 "'re:<regex>', 'type:<ClassName>', '@classifier' or '@stem'")


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
        elif self.text.startswith("@") and self.text not in SYMBOLS:
            close = difflib.get_close_matches(self.text, SYMBOLS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"selector {self.text!r}: unknown role{hint}; use {' or '.join(SYMBOLS)}")
        elif not self.text:
            raise UserError("empty selector")

    @property
    def symbolic(self) -> bool:
        return self.text.startswith("@")

    def matches(self, name: str, module: nn.Module) -> bool:
        """This one module (by its own name or type); a role selector never matches here, see ``covers``."""
        if self.symbolic:
            return False
        if self.text.startswith("re:"):
            return re.fullmatch(self.text[3:], name) is not None
        if self.text.startswith("type:"):
            wanted = self.text[5:]
            return any(cls.__name__ == wanted for cls in type(module).__mro__)
        return fnmatch.fnmatchcase(name, self.text)

    def covers(self, name: str, modules: Mapping[str, nn.Module],
               roles: Mapping[str, Collection[str]] | None = None) -> bool:
        """Whether the prunable module ``name`` is selected: by itself, by one of its parents
        (``modules`` maps every module name, as ``dict(model.named_modules())``) or, for ``@role``,
        by being in ``roles[text]``."""
        if self.symbolic:
            return name in (roles or {}).get(self.text, ())
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            prefix = ".".join(parts[:end])
            if prefix in modules and self.matches(prefix, modules[prefix]):
                return True
        return False


def prunable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv2d and Linear modules, in definition order: their ``weight`` is what gets pruned."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, PRUNABLE_TYPES)]


def names_under(model_names: Collection[str], prunable: list[str], roots: Collection[str]) -> list[str]:
    """The prunable names equal to or inside one of ``roots`` (module paths), in definition order."""
    roots = [root for root in roots if root in model_names]
    return [name for name in prunable if any(name == root or name.startswith(root + ".") for root in roots)]


@RECIPE_CHECKS.register("selector")
def selector_problem(text: str) -> str | None:
    """What is wrong with a recipe's selector ``text`` (one line), or None; the recipe loader asks this."""
    head, colon, _ = text.partition(":")
    if colon and head not in ("re", "type"):
        # Module names never hold ':', so this glob could never match: it is a mistyped prefix.
        close = difflib.get_close_matches(head, ("re", "type"), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"selector {text!r}: unknown prefix {head + ':'!r}{hint}; use {SELECTOR_HELP}"
    if text.startswith("type:") and not text[5:].isidentifier():
        return f"selector {text!r}: expected a class name after 'type:', e.g. type:Conv2d"
    try:
        Selector(text)
    except ValueError as error:
        return str(error)
    return None
