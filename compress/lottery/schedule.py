"""How a lottery run's trainings share the cores: the ticket chain here, controls in free slots.

A run of ``R`` rounds with ``C`` controls is ``1 + R`` ticket trainings in a chain (each round's mask
comes from the previous round's trained weights) and ``R * C`` controls that need only their round's
mask. With ``workers`` cores for it, at most ``workers`` trainings run at any time (a third busy process
on 2 cores slowed every training ~2.2x: benchmarks/results/parallel_run.md):

* the main process trains the chain, in order, and counts as one worker;
* each round's controls wait in a queue (round order) and go to the executor only when one of its
  ``slots`` is free, so none waits inside a pool where this process could not take it back;
* once the chain is done the main process takes queued controls itself, beside the executor's.

Which process trains a control changes nothing in its files but ``wall_s`` (same inputs, same thread
count): the run dir, resume after a kill and the round-order summary are those of the sequential run.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

from compress.errors import WorkerDied, one_line
from compress.lottery.executors import Executor


class SlotQueue:
    """Jobs wait here until the executor has a free slot (at most ``slots`` in flight there).

    ``submit`` returns a future of the job's result at once; a dispatcher thread hands queued jobs to the
    executor as slots free up (pool callbacks only count, so no pool thread ever submits). ``run_here``
    takes the oldest queued job and runs it in the calling thread instead.
    """

    inline = False  # what ``LotteryRun.submit_control`` asks of an executor

    def __init__(self, executor: Executor, slots: int) -> None:
        self.executor = executor
        self.slots = max(1, slots)
        self.queue: deque[tuple[Callable[..., Any], tuple, Future]] = deque()
        self.in_flight = 0
        self.closed = False
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._dispatch, daemon=True, name="compress-slot-dispatch")
        self.thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future:
        result: Future = Future()
        with self.changed:
            self.queue.append((fn, args, result))
            self.changed.notify_all()
        return result

    def _dispatch(self) -> None:
        while True:
            with self.changed:
                while not self.closed and not (self.queue and self.in_flight < self.slots):
                    self.changed.wait()
                if self.closed:
                    return
                fn, args, result = self.queue.popleft()
                self.in_flight += 1
            try:
                inner = self.executor.submit(fn, *args)
            except BaseException as error:  # noqa: BLE001  (a broken pool: the run stops with its error)
                self._release()
                result.set_exception(error)
                continue
            inner.add_done_callback(lambda done, result=result: self._finished(done, result))

    def _release(self) -> None:
        with self.changed:
            self.in_flight -= 1
            self.changed.notify_all()

    def _finished(self, inner: Future, result: Future) -> None:
        self._release()
        if result.done():
            return
        if inner.cancelled():
            result.cancel()
        elif inner.exception() is not None:
            result.set_exception(inner.exception())
        else:
            result.set_result(inner.result())

    def run_here(self) -> bool:
        """Run the oldest queued job in this thread; False when none is queued."""
        with self.changed:
            if not self.queue:
                return False
            fn, args, result = self.queue.popleft()
        try:
            result.set_result(fn(*args))
        except Exception as error:  # noqa: BLE001  (delivered by result.result(), as the executor would)
            result.set_exception(error)
        return True

    def close(self, cancel: bool = False) -> None:
        """Stop dispatching (``cancel``: what is still queued is cancelled; else it must be empty)."""
        with self.changed:
            self.closed = True
            queued = list(self.queue)
            self.queue.clear()
            self.changed.notify_all()
        for _, _, result in queued:
            result.cancel()
        self.thread.join()


def run_rounds(run, executor: Executor, slots: int, round_done: Callable[[dict, bool], None],
               warm_up: Callable[[], list[Future]] | None = None) -> list[dict]:
    """Train every round of ``run`` (a ``LotteryRun``): its chain here, its controls in ``slots``.

    ``round_done(entry, finished_before)`` is called for each round, in round order, once its ticket and
    controls are done. ``warm_up()`` (called before round 0) starts the workers while the dense round trains.
    Returns the rounds' entries.
    """
    total = run.search.rounds + 1
    rounds: list[dict] = []
    started: list[tuple[dict, dict[str, Future], bool]] = []
    queue = None if executor.inline else SlotQueue(executor, slots)
    warming: list[Future] = []

    def finish() -> None:
        """Record the rounds, in order, whose trainings are all done."""
        _raise_failed(warming, started[len(rounds):])
        while len(rounds) < len(started):
            entry, controls, finished_before = started[len(rounds)]
            if not all(future.done() for future in controls.values()):
                return
            if controls:
                try:
                    entry["controls"] = {name: _fields(controls[name].result()) for name in controls}
                except Exception:
                    _raise_failed(warming, started[len(rounds):])  # failed since the look above: one line
                    raise
            rounds.append(entry)
            round_done(entry, finished_before)

    failed = True
    try:
        if warm_up is not None:
            warming = warm_up()
        for round_index in range(total):
            finished_before = run._finished(round_index)
            entry, controls = run.start_round(round_index, queue or executor)
            started.append((entry, controls, finished_before))
            finish()
        while len(rounds) < total:
            # the chain is done: this process is a free worker too
            if queue is not None and queue.run_here():
                finish()
                continue
            pending = [f for _, controls, _ in started[len(rounds):] for f in controls.values()]
            wait(pending, return_when=FIRST_COMPLETED)
            finish()
        failed = False
    finally:
        if queue is not None:
            queue.close(cancel=failed)
    return rounds


# what a dead worker's future raises: concurrent.futures' BrokenProcessPool, Ray's WorkerCrashedError
_DEAD_WORKER = ("BrokenProcessPool", "WorkerCrashedError", "NodeDiedError")


def _raise_failed(warming: list[Future], started: list[tuple[dict, dict[str, Future], bool]]) -> None:
    """A training that failed stops the run at once; a killed worker as one line naming the training."""
    # a dead pool fails every future it held: name a training first, the start-up only when none was sent
    named = [(f"round {entry['round']} {name}", future) for entry, controls, _ in started
             for name, future in controls.items()]
    named += [("a worker starting up (loading the data)", future) for future in warming]
    # one look at the futures: a worker dying between two looks must not escape as a raw BrokenProcessPool
    failed = [future for _, future in named if future.done() and not future.cancelled()
              and future.exception() is not None]
    if not failed:
        return
    if any(_died(future) for future in failed):
        # the pool fails the futures it held one by one (a control's reaches us through the slot queue's
        # callback): give them a moment, so the line names the training the worker was on
        wait([future for _, future in named if not future.done()], timeout=5)
        what, error = next((what, future.exception()) for what, future in named if _died(future))
        raise WorkerDied(f"{what}: its worker process died ({one_line(error, limit=120)}); every finished "
                         "training is saved: run the same command again to resume it") from None
    failed[0].result()


def _died(future: Future) -> bool:
    return future.done() and not future.cancelled() and type(future.exception()).__name__ in _DEAD_WORKER


def _fields(result: dict) -> dict:
    from compress.lottery.summary import result_fields

    return result_fields(result)
