"""Atomic writes: write to a temporary file in the same folder, then rename over the target."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared like any file
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_torch(obj: Any, path: Path) -> None:
    _atomic(path, lambda handle: torch.save(obj, handle))


def save_json(obj: Any, path: Path) -> None:
    _atomic(path, lambda handle: handle.write((json.dumps(obj, indent=2) + "\n").encode()))


def save_text(text: str, path: Path) -> None:
    _atomic(path, lambda handle: handle.write(text.encode()))


def save_bytes(data: bytes, path: Path) -> None:
    _atomic(path, lambda handle: handle.write(data))


def load_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def append_jsonl(record: dict, path: Path) -> None:
    """One line per record; a line torn by a kill is skipped by ``read_jsonl``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    records = []
    if not Path(path).exists():
        return records
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
