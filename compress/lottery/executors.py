"""Where a lottery run's independent trainings run: ``inline``, ``local`` worker processes, or ``ray``.

The ticket trainings of a run form a chain (each round's mask comes from the previous round's
trained weights), but a round's controls need only that round's mask and rewind point. The runner
keeps the chain in its own process and hands each control to an executor as a ``TrainingJob``::

    with open_executor("local", workers=2) as executor:
        future = executor.submit(run_job, job)      # a concurrent.futures.Future of the result dict
        ...
        future.result()

An executor runs any picklable module-level function: ``submit(fn, *args) -> Future``; ``close(cancel=True)``
stops what is still running (a stopped training resumes from its checkpoint next time). Executors are
looked up by name in ``EXECUTORS`` (a ``compress.registry.Registry``):

* ``inline``: runs the call at once, in this process (``submit`` returns a finished future): today's order.
* ``local``: a spawn-context process pool of ``workers`` processes, each with ``cores // workers`` torch
  threads (``COMPRESS_THREADS`` wins), spawned only when a job needs one. A worker rebuilds data and model
  from the recipe (once per worker) and dies with its parent however it dies (``compress.lifeline``), so a
  killed run leaves no training behind. A lottery run with ``local:N``
  opens N - 1 of them: its own process, training the ticket chain, is the N-th (``compress.lottery.schedule``).
* ``ray``: Ray tasks; ``ray.init(num_cpus=workers)`` when Ray is not started yet and no address is given
  (``RAY_ADDRESS`` or ``address=``: an existing cluster, whose workers must see the run dir and the data).

Every training is deterministic given its inputs (recipe, folder, start state, masks, ``begin``), so where
it runs changes nothing in its files but ``wall_s``. Workers never take the run dir's lock: the parent
holds it for them, and each training writes only its own experiment folder.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

import torch

from compress.errors import UserError, one_line
from compress.lifeline import init_worker, lifeline
from compress.lottery.jobs import TrainingJob, local_context, run_job, warm_up
from compress.registry import EXECUTORS

__all__ = ["EXECUTORS", "Executor", "ExecutorSpec", "TrainingJob", "choose_executor", "local_context",
           "open_executor", "parse_executor", "run_job", "threads_per_worker", "warm_up"]

AUTO_WORKERS = 2
# ``auto`` goes parallel only from this many iterations per training: below it the worker's start-up (spawn,
# import torch, load the data: seconds) outweighs the gain (benchmarks/results/parallel_run.md)
AUTO_MIN_ITERATIONS = 1000
_SPEC = re.compile(r"^(?P<name>[a-z_]+)(?::(?P<workers>\d+))?$")


class Executor:
    """Runs picklable module-level calls somewhere; ``submit`` returns a ``concurrent.futures.Future``."""

    name = "executor"
    inline = False

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future:
        raise NotImplementedError

    def close(self, cancel: bool = False) -> None:
        """Wait for what was submitted (``cancel``: drop what has not started and stop what runs)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(cancel=error is not None)




def threads_per_worker(workers: int) -> int:
    """``COMPRESS_THREADS`` wins; otherwise the cores are split between the workers (at least 1 each)."""
    from_env = int(os.environ.get("COMPRESS_THREADS", "0") or 0)
    return from_env or max(1, (os.cpu_count() or 1) // max(1, workers))


@EXECUTORS.register("inline")
class InlineExecutor(Executor):
    """Each call runs at once, here: the sequential order of a one-process run."""

    name = "inline"
    inline = True

    def __init__(self, workers: int = 1, **_: Any) -> None:
        super().__init__(1)

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as error:  # noqa: BLE001  (delivered by future.result(), as a pool would)
            if not isinstance(error, Exception):
                raise  # KeyboardInterrupt, SystemExit: stop now
            future.set_exception(error)
        return future


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """A spawn-context process pool (fork would copy torch's thread pools in an undefined state)."""

    name = "local"

    def __init__(self, workers: int = AUTO_WORKERS, *, threads: int | None = None, **_: Any) -> None:
        super().__init__(workers)
        self.threads = threads or threads_per_worker(workers)
        # workers are spawned on demand (one per submit while none is idle, up to ``workers``), and each
        # dies with this process whatever kills it (``compress.lifeline``)
        reader, self._lifeline = lifeline()
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                        initializer=init_worker, initargs=(reader, os.getpid(), self.threads))

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future:
        return self.pool.submit(fn, *(_packed(arg) for arg in args))

    def close(self, cancel: bool = False) -> None:
        if cancel:
            processes = list(getattr(self.pool, "_processes", {}).values())
            self.pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:  # a running training stops here and resumes from its checkpoint
                if process.is_alive():
                    process.kill()
            for process in processes:
                process.join(timeout=10)
        else:
            self.pool.shutdown(wait=True)
        self._lifeline.close()


def _packed(arg: Any) -> Any:
    return arg.packed() if isinstance(arg, TrainingJob) else arg


def _ray_call(fn: Callable[..., Any], threads: int, cwd: str | None, *args: Any) -> Any:
    torch.set_num_threads(threads)
    os.environ["COMPRESS_THREADS"] = str(threads)
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)  # relative data roots resolve as in the parent
    return fn(*args)


@EXECUTORS.register("ray")
class RayExecutor(Executor):
    """Ray tasks of one CPU each; starts (and later stops) a local Ray when none is running."""

    name = "ray"

    def __init__(self, workers: int = AUTO_WORKERS, *, address: str | None = None, threads: int | None = None,
                 connect_timeout: float | None = None, **_: Any) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("executor 'ray': ray is not installed (pip install 'compress[ray]')") from None
        super().__init__(workers)
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or None
            if address:
                _connect(ray, address, connect_timeout)
            else:
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
            self.started = True
        self.threads = threads or (threads_per_worker(workers) if self.started and not address else 1)
        self.remote = ray.remote(num_cpus=1, max_retries=0)(_ray_call)
        self.refs: list = []

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future:
        ref = self.remote.remote(fn, self.threads, os.getcwd(), *(_packed(arg) for arg in args))
        self.refs.append(ref)
        return ref.future()

    def close(self, cancel: bool = False) -> None:
        try:
            if cancel:
                for ref in self.refs:
                    try:
                        self.ray.cancel(ref, force=True)
                    except Exception:  # noqa: BLE001  (already finished)
                        pass
            else:
                self.ray.wait(self.refs, num_returns=len(self.refs)) if self.refs else None
        finally:
            self.refs = []
            if self.started:
                self.ray.shutdown()
                self.started = False


def _connect(ray, address: str, timeout: float | None) -> None:
    """``ray.init(address)`` after checking, within ``timeout`` seconds, that something answers there: a
    wrong address is one line naming it, never a hang (``127.0.0.1:1`` waited minutes) or a traceback."""
    from compress.lottery.ray_address import check_ray_address, connect_timeout

    timeout = connect_timeout(timeout)
    check_ray_address(address, timeout)
    try:
        ray.init(address=address, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError, OSError) as error:
        raise UserError(f"ray address {address!r}: cannot connect ({one_line(error, limit=160)}); start the "
                        "cluster (ray start --head) or pass the address of a running one") from None


# -- choosing one ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExecutorSpec:
    name: str
    workers: int

    def __str__(self) -> str:
        return self.name if self.name == "inline" else f"{self.name}:{self.workers}"


def parse_executor(text: str) -> tuple[str, int | None]:
    """``auto`` / ``inline`` / ``local[:N]`` / ``ray[:N]`` (the ``lottery.executor`` value) -> (name, N or None)."""
    match = _SPEC.match(str(text).strip())
    name = match["name"] if match else str(text).split(":", 1)[0].strip()
    if name != "auto" and name not in EXECUTORS:
        raise UserError(f"lottery.executor: {EXECUTORS.unknown_message(name)} (or auto; N workers as local:N)")
    if not match:
        raise UserError(f"lottery.executor: {text!r} is not NAME or NAME:WORKERS (e.g. local:2)")
    workers = int(match["workers"]) if match["workers"] else None
    if workers is not None and workers < 1:
        raise UserError(f"lottery.executor: {text!r}: at least 1 worker")
    return name, workers


def choose_executor(text: str, *, has_parallel_work: bool, device: torch.device | str = "cpu",
                    distributed_active: bool = False, iterations: int | None = None) -> ExecutorSpec:
    """Resolve ``lottery.executor``. ``auto`` (``auto:N``: N workers, default ``AUTO_WORKERS`` capped at the
    cores) picks ``local`` where it pays: the run has controls, trains on the CPU, the machine has 2+ cores
    and ``iterations`` >= ``AUTO_MIN_ITERATIONS`` (below it the worker's start-up outweighs the gain);
    ``inline`` otherwise. With ``local:N`` at most N trainings run at once, the main process's ticket chain
    being one of them (``compress.lottery.schedule``): benchmarks/results/parallel_run.md. Each training then
    has ``cores // N`` torch threads, so its numbers can differ in the last bits from a run with another
    thread count (``COMPRESS_THREADS`` pins it). Under torchrun: always ``inline``."""
    name, workers = parse_executor(text)
    if distributed_active:
        if name not in ("auto", "inline"):
            print(f"warning: lottery.executor={text} ignored under torchrun: every rank trains in order",
                  file=sys.stderr)
        return ExecutorSpec("inline", 1)
    if name == "auto":
        cores = os.cpu_count() or 1
        cpu = torch.device(device).type == "cpu"
        long_enough = iterations is None or iterations >= AUTO_MIN_ITERATIONS
        if has_parallel_work and cpu and long_enough and cores >= 2:
            return _local_spec(workers or min(AUTO_WORKERS, cores), text)
        return ExecutorSpec("inline", 1)
    if name == "inline":
        return ExecutorSpec("inline", 1)
    workers = workers or AUTO_WORKERS
    if name == "local":
        return _local_spec(workers, text)
    return ExecutorSpec(name, workers)


def _local_spec(workers: int, text: str) -> ExecutorSpec:
    """``local:N``: N trainings at once, this process counted, so ``local:1`` is ``inline``; capped at the
    cores: a third training on 2 cores slowed every one ~2.2x (benchmarks/results/parallel_run.md), and
    each worker holds its own copy of torch and the data (~0.6 GB for a small CPU run)."""
    cores = os.cpu_count() or 1
    if workers > cores:
        print(f"warning: lottery.executor={text}: this machine has {cores} core(s); running {cores} trainings "
              f"at a time, not {workers} (more only slow each other and each costs a worker's memory)",
              file=sys.stderr)
        workers = cores
    return ExecutorSpec("inline", 1) if workers == 1 else ExecutorSpec("local", workers)


def open_executor(name: str, workers: int = AUTO_WORKERS, **options: Any) -> Executor:
    """A started executor of the registered ``name``; close it (or use it as a context manager)."""
    if workers < 1:
        raise UserError(f"--workers: at least 1, got {workers}")
    return EXECUTORS.get(name)(workers, **options)


class threads_for:  # noqa: N801  (used as a context manager, like a function)
    """While parallel workers train, this process (the ticket chain) takes one worker's share of the cores."""

    def __init__(self, executor: Executor) -> None:
        self.threads = getattr(executor, "threads", None) if not executor.inline else None
        self.before = torch.get_num_threads()

    def __enter__(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)
