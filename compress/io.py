"""Atomic writes: write to a temporary file in the same folder, then rename over the target."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import secrets
import stat
import weakref
from pathlib import Path
from typing import Any

import torch

from compress.errors import ArtifactError, UserError, first_line


def _temp_file(folder: Path, name: str) -> tuple[int, str]:
    """A new temporary file beside the target, created 0666 minus the process umask by the kernel itself
    (results are meant to be shared like any file); the umask is never read or changed (threads may run)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        tmp = str(folder / f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {folder / name}")


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX: the directory entry lives in the directory's data)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_target(path: Path) -> None:
    """Refuse to replace anything but a regular file or a missing path (one ``UserError`` line).

    An atomic write renames a temporary file over its target: over ``/dev/null`` (as root), a FIFO or a
    symlink that would turn the device into a file, or drop the link instead of writing where it points.
    """
    path = Path(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise UserError(f"{path}: a folder on its way is a file") from None
    if stat.S_ISLNK(info.st_mode):
        raise UserError(f"{path}: is a symbolic link; compress writes only regular files (name the file itself)")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{path}: is {_kind(info.st_mode)}, not a regular file; compress never replaces it "
                        "(name a regular file or a new path)")


def refuse_existing(paths: list[Path], hint: str) -> None:
    """For commands that promise never to overwrite: one ``UserError`` naming the first path that exists
    (or is a link, even a dangling one); ``hint`` says how to go on."""
    for path in paths:
        if os.path.lexists(path):
            raise UserError(f"{path} exists and is never overwritten: {hint}")


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    check_target(path)
    fd, tmp = _temp_file(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, OSError) and error.filename is None and error.errno:
            # a write() refused (EFBIG under ``ulimit -f``, ENOSPC) names no file: name the target
            raise OSError(error.errno, error.strerror or str(error), str(path)) from None
        raise
    _fsync_dir(path.parent)


def save_torch(obj: Any, path: Path) -> None:
    _atomic(path, lambda handle: torch.save(obj, handle))


class MappedFile:
    """A temporary file of tensors (``file_backed``), open while this object lives: an unlinked file's
    descriptor on Linux, else its path (removed with this object). ``load()`` maps its tensors afresh."""

    def __init__(self, source: int | str) -> None:
        self.source = source
        weakref.finalize(self, _release, source)

    def load(self) -> dict[str, torch.Tensor]:
        """The tensors, mapped (``torch.load(mmap=True)``): the pages read through an earlier mapping count as
        this process's resident memory until that mapping is dropped; a fresh one starts with none."""
        # an unlinked file: /proc/self/fd opens it again, a new mapping of the same bytes
        path = f"/proc/self/fd/{self.source}" if isinstance(self.source, int) else self.source
        return torch.load(path, mmap=True, weights_only=True, map_location="cpu")


def _release(source: int | str) -> None:
    if isinstance(source, int):
        os.close(source)
    else:
        with contextlib.suppress(OSError):
            os.unlink(source)


def file_backed(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], MappedFile]:
    """The same values (on the CPU), backed by a file instead of this process's memory, and the file: written
    to a temporary file (``TMPDIR``) and mapped back. On Linux the file is unlinked at once, so nothing is left
    behind even after a kill (elsewhere it is removed with the ``MappedFile``; keep that while the tensors are
    used). The kernel reads the pages in when they are read; a reader done with them maps the file again
    (``MappedFile.load``) and drops the old tensors, and they leave this process's resident memory."""
    import tempfile

    handle, path = tempfile.mkstemp(prefix="compress-", suffix=".pt")
    linux = os.path.isdir("/proc/self/fd")
    try:
        with os.fdopen(os.dup(handle), "wb") as stream:
            torch.save(tensors, stream)
        mapped = MappedFile(handle if linux else path)
    except BaseException:
        os.close(handle)
        if not linux:
            os.unlink(path)
        raise
    finally:
        if linux:
            os.unlink(path)
        else:
            os.close(handle)
    return mapped.load(), mapped


def save_json(obj: Any, path: Path) -> None:
    _atomic(path, lambda handle: handle.write((json.dumps(obj, indent=2) + "\n").encode()))


def save_text(text: str, path: Path) -> None:
    _atomic(path, lambda handle: handle.write(text.encode()))


def save_bytes(data: bytes, path: Path) -> None:
    _atomic(path, lambda handle: handle.write(data))


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file's bytes: what decides whether a derived file (an export) is current."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


class CorruptArtifactError(ArtifactError):
    """A run file that is truncated or unreadable (a disk that filled up, a copy cut short)."""


def load_torch(path: Path, map_location: str | torch.device | None = "cpu") -> Any:
    """Load a file this project wrote, never unpickling code: tensors and plain data only.

    A file with any other Python object in it (a crafted ``ticket.pt`` a user was sent) is refused
    with ``ArtifactError``; a truncated or corrupt one raises ``CorruptArtifactError`` naming it, so
    a caller that can recompute it may move it aside and do so.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ArtifactError(path, "no such file") from None
    except IsADirectoryError:
        raise ArtifactError(path, "is a folder, not a file") from None
    except pickle.UnpicklingError as error:
        if "weights only load failed" in str(error).lower():
            raise ArtifactError(path, "refused: it holds Python objects other than tensors and plain data, "
                                      "which compress never writes (loading it could run code)") from None
        raise CorruptArtifactError(path, f"truncated or corrupt ({first_line(error, 160)})") from None
    except (RuntimeError, EOFError, ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
        # torch's zip reader raises RuntimeError for a cut file; the unpickler EOFError and friends
        raise CorruptArtifactError(path, f"truncated or corrupt ({first_line(error, 160)})") from None

