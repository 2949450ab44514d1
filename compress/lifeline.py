"""Worker processes that die with their parent, however the parent dies (``kill -9``, the OOM killer).

The parent keeps the write end of a pipe and never writes; each worker gets the read end and blocks on it
in a daemon thread. When the parent process ends, the kernel closes its end, the read returns EOF and the
worker exits at once -- whether it is training or still importing torch (so this module imports nothing
heavy: the spawn bootstrap imports it before anything else of the worker's).

Why not ``prctl(PR_SET_PDEATHSIG)``: on Linux it fires when the *thread* that spawned the worker exits,
and a process pool spawns workers from whichever thread submits first (the slot queue's dispatcher
thread here), so a worker could be killed mid-training while its parent lives on. The pipe follows the
process, and works on every POSIX system. ``os.getppid()`` is polled as a second line of defence.
"""

from __future__ import annotations

import os
import threading
import time
from multiprocessing import get_context
from multiprocessing.connection import Connection


def lifeline() -> tuple[Connection, Connection]:
    """(read end for the workers, write end the parent keeps open until its workers may go)."""
    reader, writer = get_context("spawn").Pipe(duplex=False)
    return reader, writer


def watch_parent(reader: Connection, parent: int) -> None:
    """In a worker, first thing: exit as soon as the parent is gone."""
    if os.getppid() != parent:  # it died while this process started
        os._exit(1)

    def wait_for_eof() -> None:
        try:
            reader.recv_bytes()  # the parent never writes: this returns only by EOF (or an error)
        except (EOFError, OSError):
            pass
        os._exit(1)

    def poll() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=wait_for_eof, daemon=True, name="compress-lifeline").start()
    threading.Thread(target=poll, daemon=True, name="compress-parent-poll").start()


def init_worker(reader: Connection, parent: int, threads: int) -> None:
    """A pool worker's initializer: the lifeline first, then its share of the cores."""
    watch_parent(reader, parent)
    import torch

    torch.set_num_threads(threads)
    os.environ["COMPRESS_THREADS"] = str(threads)
