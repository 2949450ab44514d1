"""The run directory's safety: one writer at a time, stale temporary files, and run identity.

* **Lock.** A process that writes a run dir holds an exclusive ``flock`` on ``.compress.lock`` in it;
  a second process gets a one-line error instead of mixing its files in. The kernel drops the lock
  when the holder dies (even by ``kill -9``), so a killed run never leaves a stale lock.
* **Temporary files.** An atomic write (``compress.io``) leaves ``.<name>.<random>.tmp`` behind when
  it is killed mid-write. Only files of exactly that form, for the names a run writes, in the run
  dir's own layout, are removed -- and only while holding the lock, so no live writer owns them.
* **Identity.** Each round records what determines it (``identity.json``: the hash of the recipe's
  result-relevant fields and of the data source). Resuming refuses a round made by anything else,
  so a run never silently continues another run's rounds.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from pathlib import Path

from compress import distributed, paths
from compress.errors import UserError, one_line
from compress.io import load_json, save_json, save_text
from compress.recipe import Recipe, dump_recipe, load_recipe, recipe_hash, results_hash

LOCK = ".compress.lock"
IDENTITY = "identity.json"
# names a run dir holds, at its top, in round_NN/ and in round_NN/<control>/ (the atomic writes' targets)
_WRITTEN = {paths.RECIPE, paths.SUMMARY, paths.REPORT, paths.TICKET, paths.TICKET_ONNX, paths.REWIND,
            paths.INIT, paths.MASK, paths.METRICS, paths.SPARSITY, paths.FINAL, paths.CHECKPOINT,
            paths.RESULT, IDENTITY, "export.json", "accuracy.png", "early_stop.png", "ticket.compact.onnx",
            # the export's int8 / QAT files and the compressed artifacts with their size table
            "ticket.int8.onnx", "ticket.qat.onnx", "ticket.int8-dynamic.onnx", "ticket.cta", "ticket.int8.cta",
            "ticket.int8-dynamic.cta", "compression.json",
            # compress.tracking's files
            "tracking.json", "metrics.csv", "params.json"}
_TEMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{6,}\.tmp$")
_ROUND = re.compile(r"^round_\d{2,}$")


class RunDirLock:
    """An exclusive, non-blocking ``flock`` on the run dir; ``read_only`` when the folder cannot be written."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.handle = None
        self.read_only = False

    def acquire(self) -> RunDirLock:
        path = self.run_dir / LOCK
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a lock that is a link to someone's file must not truncate it; O_NONBLOCK: a FIFO
            # put there must not hang the open (fstat refuses it below)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise UserError(f"{path}: the lock file is a symbolic link; compress never follows it (remove "
                                "it, or pass another --out)") from None
            if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and self.run_dir.is_dir():
                self.read_only = True  # a finished run can still be read; any write names the file
                return self
            raise
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise UserError(f"{path}: the lock file is not a regular file; remove it, or pass another --out")
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "r+")  # held open for the run's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(f"{self.run_dir} is in use by {holder}: wait for it to finish, or pass another "
                            "--out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temporary files a killed atomic write left in this run dir's layout; return them.

    Call only while holding the lock. Nothing else is touched: not other hidden ``.tmp`` files, not
    other folders below ``run_dir`` (a user's ``--out .`` may hold anything).
    """
    run_dir = Path(run_dir)
    folders = [run_dir]
    for entry in _subdirs(run_dir):
        if _ROUND.match(entry.name):
            folders += [entry, *_subdirs(entry)]
    removed = []
    for folder in folders:
        for entry in folder.iterdir():
            match = _TEMP.match(entry.name)
            if match and match["name"] in _WRITTEN and entry.is_file() and not entry.is_symlink():
                entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def refuse_links(run_dir: Path) -> None:
    """Refuse a run dir whose own files or folders (``round_NN``, its controls, the files a run writes)
    are symbolic links: writing a round through a link would write wherever it points."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    folders = [run_dir]
    for entry in run_dir.iterdir():
        ours = entry.name in _WRITTEN or entry.name == LOCK or _ROUND.match(entry.name)
        if ours and entry.is_symlink():
            raise UserError(f"{entry}: is a symbolic link inside the run dir; compress never writes through one "
                            "(replace it with the real folder or file, or pass another --out)")
        if _ROUND.match(entry.name) and entry.is_dir():
            folders.append(entry)
    for folder in folders[1:]:  # below round_NN everything is the run's own
        for entry in [*folder.iterdir(), *(sub for d in _subdirs(folder) for sub in d.iterdir())]:
            if entry.is_symlink():
                raise UserError(f"{entry}: is a symbolic link inside the run dir; compress never writes through "
                                "one (replace it with the real folder or file, or pass another --out)")


def _subdirs(folder: Path) -> list[Path]:
    return [entry for entry in folder.iterdir() if entry.is_dir() and not entry.is_symlink()]


# identity keys newer than some run dirs: a round recorded without one is not refused for lacking it
_ADDED_LATER = frozenset({"threads", "torch"})


def check_identity(folder: Path, identity: dict, what: str, *, skip: tuple[str, ...] = ()) -> None:
    """Record ``identity`` in ``folder`` (first visit) or refuse when the folder was made by something else.

    ``skip``: keys not compared (a finished round is read, not trained: its thread count no longer matters).
    """
    folder = Path(folder)
    recorded_path = folder / IDENTITY
    if recorded_path.exists():
        try:
            recorded = load_json(recorded_path)
        except ValueError:
            recorded = None
        if not isinstance(recorded, dict):
            recorded, changed = {}, ["run"]
        else:
            changed = sorted(key for key in set(identity) | set(recorded)
                             if key not in skip and not (key in _ADDED_LATER and key not in recorded)
                             and recorded.get(key) != identity.get(key))
        if changed:
            hint = ""
            if "threads" in changed and isinstance(recorded.get("threads"), int):
                hint = (f" (it trained with {recorded['threads']} torch threads per training, this process "
                        f"{identity.get('threads')}: set COMPRESS_THREADS={recorded['threads']} to resume it)")
            raise UserError(f"{folder}: {what} was made by a different {' and '.join(changed)}{hint} "
                            f"(see {recorded_path}); resuming would mix runs: pass another --out or delete "
                            "the folder")
        return
    if folder.is_dir() and any(entry.name != IDENTITY for entry in folder.iterdir()):
        raise UserError(f"{folder}: holds files but no {IDENTITY} (not made by this version of compress, or "
                        "not a run dir): pass another --out or delete the folder")
    save_json(identity, recorded_path)


RUNS = Path("runs")


def default_run_dir(recipe: Recipe, base: Path = RUNS) -> Path:
    """Derived from the settings: the same recipe always lands in the same folder (and resumes)."""
    base = Path(base)
    run_dir = base / f"{recipe.name}-{recipe_hash(recipe)}"
    # the recipe layer only admits plain names; this keeps any caller's name from leaving ``base``
    if run_dir.resolve().parent != base.resolve():
        raise UserError(f"name: {recipe.name!r} is not a plain folder name (letters, digits, '.', '_', '-')")
    return run_dir


def prepare_run_dir(recipe: Recipe, run_dir: Path, read_only: bool = False) -> Path:
    """Create the run dir with the resolved recipe, or check that an existing one holds a run of it.

    Only fields that change results must agree (``recipe.yaml`` is rewritten when, say, ``export.opset``
    changed); each round is checked again against its own ``identity.json``. ``read_only`` (the run dir's
    lock could not be opened for writing: read-only media): a differing field outside the hash (no
    ``--executor``, another ``export.opset``) writes nothing, so a finished run still reruns there.
    """
    run_dir = Path(run_dir)
    recorded = run_dir / paths.RECIPE
    text = dump_recipe(recipe)
    if recorded.exists():
        try:
            old = load_recipe(recorded)
        except ValueError as error:
            raise UserError(f"{recorded} does not load ({one_line(error)}): {run_dir} is not a run dir of this "
                            "recipe; pass another --out or delete that folder") from None
        if results_hash(old) != results_hash(recipe):
            raise UserError(f"{run_dir} holds a run of a different recipe ({recorded}); pass another --out "
                            "or delete that folder")
    if distributed.is_main() and not (read_only and recorded.exists()) and \
            (not recorded.exists() or recorded.read_text() != text):
        save_text(text, recorded)
    return run_dir
