"""Where data is looked for and where caches go: one place, so messages and tests agree."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from compress.errors import one_line  # noqa: F401  (re-exported for the data loaders)
from compress.recipe.schema import DataConfig

# System-wide copies, e.g. Debian's `apt-get install dataset-fashion-mnist`.
SYSTEM_DIRS: dict[str, list[Path]] = {
    "fashion_mnist": [Path("/usr/share/datasets/fashion-mnist")],
    "mnist": [Path("/usr/share/datasets/mnist")],
}


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/compress`` or ``~/.cache/compress``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "compress"


def user_data_dir() -> Path:
    return cache_root() / "data"


def extracted_dir() -> Path:
    return cache_root() / "extracted"


def decoded_dir() -> Path:
    return cache_root() / "decoded"


def search_roots(config: DataConfig, *extra_env: str) -> list[Path]:
    """data.root, then the given dataset-specific env vars, then $COMPRESS_DATA, then the user cache."""
    candidates = [config.root, *(os.environ.get(name) for name in extra_env), os.environ.get("COMPRESS_DATA"),
                  str(user_data_dir())]
    roots: list[Path] = []
    for candidate in candidates:
        if candidate:
            path = Path(candidate).expanduser()
            if path not in roots:
                roots.append(path)
    return roots


def download_root(config: DataConfig) -> Path:
    """Where torchvision may download to: the first writable-by-intent root (never a system dir)."""
    for candidate in (config.root, os.environ.get("COMPRESS_DATA")):
        if candidate and not Path(candidate).expanduser().is_file():
            return Path(candidate).expanduser()
    return user_data_dir()


def short_hash(*parts: object, length: int = 12) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:length]

