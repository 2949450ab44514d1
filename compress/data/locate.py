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


WHOLE_FILE_BYTES = 1 << 30  # hashed whole up to here (~1 s); an ImageNet-sized tarball is sampled instead
SAMPLED_BLOCKS = 64
_BLOCK_BYTES = 1 << 20


def content_digest(path: Path) -> tuple[str, str]:
    """``("sha256", hex)`` of a file's bytes, or above ``WHOLE_FILE_BYTES`` ``("sampled_sha256", hex)`` of its
    size and ``SAMPLED_BLOCKS`` evenly spaced 1 MiB blocks.

    By content, not mtime: a copy, a re-download or a dataset re-provided each morning is the same data, so a
    run made from it still resumes and its extraction cache is reused. Not memoised by mtime either: a byte
    changed in place with the mtime put back is still seen (CIFAR's JPEG tarball hashes in ~0.05 s).
    """
    size = Path(path).stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= WHOLE_FILE_BYTES:
            for block in iter(lambda: handle.read(_BLOCK_BYTES), b""):
                digest.update(block)
            return "sha256", digest.hexdigest()
        digest.update(str(size).encode())
        last = size - _BLOCK_BYTES
        for i in range(SAMPLED_BLOCKS):
            handle.seek(last * i // (SAMPLED_BLOCKS - 1))
            digest.update(handle.read(_BLOCK_BYTES))
    return "sampled_sha256", digest.hexdigest()


def file_record(path: Path, digest: tuple[str, str] | None = None) -> dict:
    """``{"path", "size", "sha256"}`` (or ``"sampled_sha256"`` for a file over 1 GiB); ``digest``: its
    ``content_digest`` when already computed (a tarball is read once per load, not once per use)."""
    path = Path(path)
    kind, value = digest if digest is not None else content_digest(path)
    return {"path": str(path.resolve()), "size": path.stat().st_size, kind: value}
