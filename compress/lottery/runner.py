"""The full IMP experiment behind ``tools/find_ticket.py``: rounds, controls, run dir, resume.

Every stage writes its output atomically and is skipped when that output exists, so running the
same command again after a kill resumes: finished experiments are skipped, an interrupted one
continues from its last checkpoint, and masks come out identical to an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import sys
from concurrent.futures import Future
from pathlib import Path

import torch
from tqdm.auto import tqdm

from compress import distributed, paths
from compress.data import load_dataset
from compress.errors import UserError
from compress.lottery.control_runs import control_start
from compress.lottery.controls import REINIT_SEED_STRIDE
from compress.lottery.executors import (
    Executor,
    TrainingJob,
    choose_executor,
    local_context,
    open_executor,
    run_job,
    threads_for,
    threads_per_worker,
    warm_up,
)
from compress.lottery.experiment import read_result, run_experiment
from compress.lottery.methods_run import early_bird_hooks, inverted_masks
from compress.lottery.placement import SearchPlacement
from compress.lottery.recovery import RunFiles, _cpu
from compress.lottery.rundir import (
    RunDirLock,
    check_identity,
    default_run_dir,
    prepare_run_dir,
    refuse_links,
    remove_stale_temp_files,
)
from compress.lottery.schedule import run_rounds
from compress.lottery.search import LotterySearch
from compress.lottery.strategies import finetune_config
from compress.lottery.summary import choose_ticket, read_summary, result_fields, round_line, track_round
from compress.models import build_model
from compress.pruning import load_plain_state_dict, plain_state_dict
from compress.pruning.scorers import NEEDS_DATA
from compress.pruning.widths import resolve_multiple
from compress.recipe import Recipe, recipe_to_dict, results_hash
from compress.runtime import resolve_device, seed_everything, set_threads

__all__ = ["REINIT_SEED_STRIDE", "LotteryRun", "choose_ticket", "default_run_dir", "find_ticket", "read_summary"]


class LotteryRun(RunFiles, SearchPlacement):
    """Owns data, model factory and the run dir (locked while this process writes it) for one recipe.

    The ticket trainings form a chain and run here, in order; each round's controls go to the executor
    (``lottery.executor``, or ``executor=`` here: ``compress.lottery.executors``) as soon as that round's
    mask and rewind point exist. Given the same torch threads per training, results do not depend on the
    executor (only ``wall_s`` does).
    """

    def __init__(self, recipe: Recipe, run_dir: Path | None = None, progress: bool = True, where=None, *,
                 executor: str | None = None, address: str | None = None) -> None:
        self.recipe = recipe
        self.executor_spec = choose_executor(executor or recipe.lottery.executor,
                                             has_parallel_work=bool(recipe.lottery.controls and recipe.lottery.rounds),
                                             device=resolve_device(recipe.train.device),
                                             distributed_active=distributed.active(),
                                             iterations=recipe.train.iterations)
        self.address = address
        run_dir = Path(run_dir) if run_dir is not None else default_run_dir(recipe)
        self.lock = RunDirLock(run_dir).acquire() if distributed.is_main() else None
        try:
            self._setup(recipe, run_dir, progress, where)
        except BaseException:
            self.close()
            raise

    def _setup(self, recipe: Recipe, run_dir: Path, progress: bool, where) -> None:
        refuse_links(run_dir)
        self.run_dir = prepare_run_dir(recipe, run_dir, read_only=self.lock is not None and self.lock.read_only)
        if self.lock is not None and not self.lock.read_only:
            remove_stale_temp_files(self.run_dir)  # ours alone: the lock says no live writer owns them
        distributed.barrier()
        self.progress = progress
        distributed.check_batch_size(recipe.train.batch_size)  # before any data is read or round trained
        self.device = resolve_device(recipe.train.device)
        set_threads()  # only when COMPRESS_THREADS is set; a caller's own setting is kept otherwise
        seed_everything(recipe.seed)
        self.data = load_dataset(recipe.data, recipe.seed, self.device)
        classes = recipe.model.num_classes
        if classes is not None and classes < self.data.num_classes:
            raise UserError(f"model.num_classes: {classes} outputs, but {recipe.data.name} has "
                            f"{self.data.num_classes} classes (labels 0..{self.data.num_classes - 1}); "
                            "set it to null to take the dataset's")
        # torch's version too: the same seed can draw other initial weights under another torch
        self.identity = {"recipe": results_hash(recipe), "data": self.data.identity_hash, "torch": torch.__version__}
        if recipe.prune.channel_multiple == "auto":  # 'auto' differs by CPU: a resume elsewhere must not mix widths
            self.identity["channel_multiple"] = resolve_multiple("auto")
        self.search = LotterySearch(self.make_model(recipe.seed), recipe, where, entry_point="find_ticket")
        if progress and distributed.is_main():  # what will be pruned, and what not, before hours of training
            from compress.lottery.dry_run import format_plan

            print("\n".join(format_plan(self.search.plan(), self.search.rounds)), file=sys.stderr)
        if recipe.lottery.rewind_to == 0:  # the saved initial weights (init.pt), the same on every resume
            load_plain_state_dict(self.search.model, self._saved_init(plain_state_dict(self.search.model)))
        if recipe.lottery.strategy == "at_init" and recipe.prune.method in NEEDS_DATA:
            stream = self.data.train.batches(recipe.train.batch_size, recipe.seed)  # the first steps' batches
            self.search.score_at_init([next(stream) for _ in range(recipe.prune.score_batches)])
        self.begin = recipe.lottery.rewind_to
        self.init_state = plain_state_dict(self.search.model)

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    @property
    def shape(self) -> dict:
        return {"num_classes": self.data.num_classes, "in_channels": self.data.in_channels,
                "image_size": self.recipe.data.image_size or self.data.image_size}

    def make_model(self, seed: int | None = None) -> torch.nn.Module:
        model = build_model(self.recipe.model, self.data.num_classes, self.data.in_channels,
                            self.recipe.data.image_size or self.data.image_size, seed=seed)
        return model.to(self.device)

    # -- stages ---------------------------------------------------------------------------------
    def run_ticket(self, round_index: int, masks: dict) -> dict:
        folder = paths.round_dir(self.run_dir, round_index)
        on_step = self._dense_step if round_index == 0 and self.begin > 0 else None
        start = (lambda: self._dense_start(masks)) if round_index == 0 else (lambda: self._level_start(round_index, masks))
        recipe, hooks = self.recipe, {}
        if round_index > 0 and recipe.lottery.retrain == "finetune":
            recipe = dataclasses.replace(recipe, train=finetune_config(recipe.train))
        if recipe.lottery.early_bird.every and round_index < self.search.rounds:
            on_step, hooks = early_bird_hooks(self, folder, on_step)
        return run_experiment(folder, make_model=start, start_state=None, masks=masks,
                              recipe=recipe, data=self.data, begin=0 if round_index == 0 else self.begin,
                              desc=f"round {round_index} ticket", progress=self.progress, on_step=on_step, **hooks)

    def run_round(self, round_index: int, executor: Executor | None = None) -> dict:
        """Ticket and controls of one round, here and in order (``executor``: the controls go there)."""
        entry, controls = self.start_round(round_index, executor)
        if controls:
            entry["controls"] = {name: result_fields(future.result()) for name, future in controls.items()}
        return entry

    def start_round(self, round_index: int, executor: Executor | None = None) -> tuple[dict, dict[str, Future]]:
        """Train the round's ticket here; hand its controls to ``executor`` (default: run them now).

        Returns the round's entry (without ``controls``) and a future of each control's result.
        """
        if distributed.is_main():
            # torch's thread count changes float sums in the last bits: a round resumed under another count
            # would match neither run; a finished round is only read, so its count no longer matters
            identity = {**self.identity, "threads": torch.get_num_threads()}
            check_identity(paths.round_dir(self.run_dir, round_index), identity, f"round {round_index}",
                           skip=("threads", "torch") if self._finished(round_index) else ())
        distributed.barrier()
        masks = self.masks_for_round(round_index)
        ticket = self.run_ticket(round_index, masks)
        entry = {"round": round_index, **result_fields(ticket)}
        warned = self.mask_warnings(round_index)
        if warned:  # the masks were computed another way than the method's own (a scorer's fallback)
            entry["mask_warnings"] = warned
        controls: dict[str, Future] = {}
        if round_index > 0:
            start = self.rewind_state()
            for name in self.recipe.lottery.controls:
                controls[name] = self.submit_control(executor, name, round_index, masks, start)
        return entry, controls

    def run_control(self, name: str, round_index: int, masks: dict, start: dict) -> dict:
        return result_fields(self.submit_control(None, name, round_index, masks, start).result())

    def submit_control(self, executor: Executor | None, name: str, round_index: int, masks: dict,
                       start: dict) -> Future:
        """The control's inputs are made here (in the run's order); its training goes to ``executor``."""
        folder = paths.experiment_dir(self.run_dir, round_index, name)
        finished = read_result(folder / paths.RESULT) if executor is not None and not executor.inline else None
        if finished is not None:
            done: Future = Future()  # finished before: nothing to send
            done.set_result(finished)
            return done
        # the one way a control's inputs are made, shared with LotterySearch.control_models (own loops)
        ticket_masks = masks
        start, masks = control_start(name, round_index, ticket_masks, start, self.recipe.seed,
                                     self.recipe.prune.granularity, self.make_model,
                                     inverted=lambda: inverted_masks(self, round_index, ticket_masks),
                                     groups=self.search.structure.groups if self.search.structure else None)
        if executor is None:
            done = Future()
            done.set_result(run_experiment(folder, make_model=self.make_model, start_state=start, masks=masks,
                                           recipe=self.recipe, data=self.data, begin=self.begin,
                                           desc=f"round {round_index} {name}", progress=self.progress))
            return done
        job = TrainingJob(recipe=self._recipe_dict, folder=str(folder.resolve()), start_state=_cpu(start),
                          masks=_cpu(masks), begin=self.begin, desc=f"round {round_index} {name}",
                          progress=self.progress and executor.inline, data_identity=self.data.identity_hash)
        return executor.submit(run_job, job)

    # -- the whole run --------------------------------------------------------------------------
    def open_executor(self) -> Executor:
        """The executor of the controls; for ``local:N`` (N >= 2) this process is one of the N workers."""
        spec = self.executor_spec
        if spec.name == "local" and spec.workers >= 2:
            # never more workers than controls left to train: each costs a process with torch and the data
            pending = self._pending_controls()
            if pending == 0:
                return open_executor("inline")
            return open_executor("local", min(spec.workers - 1, pending), threads=threads_per_worker(spec.workers))
        return open_executor(spec.name, spec.workers, address=self.address)

    def _pending_controls(self) -> int:
        return sum(read_result(paths.experiment_dir(self.run_dir, r, name) / paths.RESULT) is None
                   for r in range(1, self.search.rounds + 1) for name in self.recipe.lottery.controls)

    def run(self) -> dict:
        """The ticket chain here, in order; the controls in the executor's free slots (``schedule``).

        A round counts as finished (summary written, line printed) once its ticket and controls are, in
        round order: the summary and report are those of the sequential run.
        """
        total = self.search.rounds + 1
        main = distributed.is_main()
        bar = tqdm(total=total, desc=self.recipe.name, disable=not self.progress or not main, unit="round")
        state = {"summary": {}}
        done: list[dict] = []

        tracker = self.run_tracker() if main else None

        def round_done(entry: dict, finished_before: bool) -> None:
            done.append(entry)
            if tracker is not None:
                track_round(tracker, entry)
            # a rerun of finished rounds writes nothing until the end (and nothing at all if nothing changed)
            if main and (not finished_before or len(done) == total):
                state["summary"] = self.write_summary(done)
                tqdm.write(round_line(entry))
            bar.set_postfix(remaining=f"{entry['weights_remaining']:.3f}", refresh=False)
            bar.update(1)

        def warm() -> list[Future]:
            if executor.inline or all(self._finished(r) for r in range(1, total)):
                return []  # a finished run starts no worker
            # the workers start (import torch, load the data) while round 0's ticket trains
            return [executor.submit(warm_up, self._recipe_dict) for _ in range(executor.workers)]

        executor = self.open_executor()
        failed = True
        try:
            with local_context(self._recipe_dict, self.recipe, self.data, self.device, self.make_model), \
                    threads_for(executor):
                rounds = run_rounds(self, executor, executor.workers, round_done, warm)
            failed = False
        finally:
            executor.close(cancel=failed)
            bar.close()
            if tracker is not None:
                tracker.close()
        distributed.barrier()
        return state["summary"] if main else {"rounds": rounds}

    def run_tracker(self):
        """The run dir's own tracking run: one point per round (``track_round``); None when read-only."""
        if self.lock is not None and self.lock.read_only:
            return None
        from compress.tracking import open_tracker, recipe_params

        return open_tracker(self.recipe.train.log, self.run_dir, run_dir=self.run_dir, name="rounds",
                            params=recipe_params(self.recipe))

    @property
    def _recipe_dict(self) -> dict:
        return recipe_to_dict(self.recipe)





def find_ticket(recipe: Recipe, out: Path | None = None, progress: bool = True, where=None, *,
                executor: str | None = None, address: str | None = None) -> dict:
    """Run (or resume) the lottery-ticket search of ``recipe``; returns the summary.

    ``executor`` (default ``recipe.lottery.executor``): where the controls train, e.g. ``inline`` or
    ``local:2`` (``compress.lottery.executors``); ``address``: a Ray cluster's, for ``ray``.
    """
    distributed.init_from_env()
    run = LotteryRun(recipe, out, progress, where, executor=executor, address=address)
    try:
        summary = run.run()
    finally:
        run.close()
    summary["run_dir"] = str(run.run_dir)
    return summary
