"""The exception types that separate a user's mistake from a bug in the toolkit.

``UserError`` (a ``ValueError``, so ``except ValueError`` keeps working) is what a person can fix:
a bad recipe value, a missing or corrupt file, a wrong path. The command-line tools print it as one
line and exit with code 2. Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake the user can fix; ``str()`` is meant to be shown as one line."""


class ArtifactError(UserError):
    """A run file that cannot be used: truncated, corrupt, from another run, or refused as unsafe."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class WorkerDied(UserError):
    """A worker process was killed (OOM killer, ``kill``) mid-training; what finished is saved and a rerun
    resumes. Shown as one line like a user's mistake: the cure is on the user's side (memory, a rerun)."""


def one_line(exc: BaseException, limit: int | None = 200) -> str:
    """An exception as one short line; of several lines keep the first and the last (torchvision's
    download errors name the file first and the network failure last)."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 2:
        lines = [lines[0], "...", lines[-1]]
    text = " ".join(lines) or type(exc).__name__
    return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The exception's first line (its type's name when it has no text), cut at ``limit`` characters, without
    torch's "Please feel free to request support ..." tail."""
    text = str(exc).strip()
    line = text.splitlines()[0].split(" Please feel free to request support")[0] if text else type(exc).__name__
    return line if limit is None else line[:limit]
