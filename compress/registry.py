"""One small generic registry: register by name, get with a helpful error, list by pattern."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Generic, TypeVar

from compress.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories (timm's ``register_model`` / ``create_model`` / ``list_models`` shape)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
            if key in self._entries:
                raise UserError(f"{self.kind} {key!r} is already registered")
            self._entries[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UserError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self._entries, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; available: {', '.join(sorted(self._entries))}"

    def list(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries
