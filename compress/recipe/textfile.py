"""Reading a recipe file as untrusted input: only regular files, at most 1 MiB, UTF-8 text without
control characters. ``extends`` may name any path, so /dev/zero, a FIFO or /proc/self/environ are
refused before a byte is read, and no message quotes the file's content.
"""

from __future__ import annotations

import difflib
import os
import re
import stat

from compress.recipe.errors import RecipeError

MAX_BYTES = 1 << 20  # a recipe is a few hundred bytes; anything near this is not a recipe

# C0 controls but tab, LF and CR; DEL; C1 controls. An ANSI escape in a message would drive the
# terminal, and NUL bytes mean a binary file.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def read_text(path: str) -> str:
    """A recipe file's text: a regular file (not /dev/zero, a FIFO or /proc) of at most ``MAX_BYTES``."""
    real = os.path.realpath(path)
    for root in ("/proc", "/sys"):  # pseudo-files that claim to be regular files of size 0
        if real == root or real.startswith(root + "/"):
            raise RecipeError(f"not a regular file (under {root}); a recipe is a YAML text file", path)
    try:
        _require_regular(os.stat(path).st_mode, path)
        # O_NONBLOCK: opening a FIFO swapped in after the stat must not hang; fstat refuses it.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
        with os.fdopen(fd, "rb") as handle:
            _require_regular(os.fstat(handle.fileno()).st_mode, path)
            data = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise RecipeError(f"no such recipe file{close_files(path)}", path) from None
    except OSError as error:
        raise RecipeError(f"cannot read the recipe: {error.strerror or type(error).__name__}", path) from None
    if len(data) > MAX_BYTES:
        raise RecipeError(f"larger than {MAX_BYTES // (1 << 20)} MiB; a recipe is a small YAML text file", path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise RecipeError(f"not UTF-8 text (byte 0x{data[error.start]:02x}); a recipe is a YAML text file",
                          f"{path}:{line}") from None


def _require_regular(mode: int, path: str) -> None:
    if stat.S_ISREG(mode):
        return
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    kind = next((name for test, name in kinds if test(mode)), "not a plain file")
    raise RecipeError(f"not a regular file ({kind}); a recipe is a YAML text file", path)


def check_characters(text: str, filename: str) -> None:
    """Refuse control characters other than tab, LF and CR, naming the line but not the text."""
    match = _CONTROL.search(text)
    if match:
        char = match.group()
        names = {"\0": "a NUL byte", "\x1b": "an escape character (ESC)"}
        what = names.get(char, f"control character U+{ord(char):04X}")
        line = text.count("\n", 0, match.start()) + 1
        raise RecipeError(f"{what} in the recipe (only tab, newline and carriage return may appear); "
                          "a recipe is a YAML text file", f"{filename}:{line}")


def close_files(path: str) -> str:
    """`` (did you mean '<a .yaml file next to path>'?)`` for a mistyped file name, else ""."""
    folder = os.path.dirname(path) or "."
    try:
        names = [n for n in os.listdir(folder) if n.endswith((".yaml", ".yml"))]
    except OSError:
        return ""
    close = difflib.get_close_matches(os.path.basename(path), names, n=1)
    return f" (did you mean {os.path.join(os.path.dirname(path), close[0])!r}?)" if close else ""
