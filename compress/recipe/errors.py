"""``RecipeError``: every recipe problem as one line, ``file:line: key.path: what is wrong``."""

from __future__ import annotations

from compress.errors import UserError


class RecipeError(UserError):
    """A recipe problem. ``str()`` is one line; ``location`` and ``key`` are kept for tools."""

    def __init__(self, message: str, location: str = "", key: str = "") -> None:
        self.location = location
        self.key = key
        self.problem = " ".join(message.split())  # one line, whatever the source text held
        prefix = "".join(f"{part}: " for part in (location, key) if part)
        super().__init__(prefix + self.problem)
