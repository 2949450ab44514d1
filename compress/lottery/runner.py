"""The full IMP experiment behind ``tools/find_ticket.py``: rounds, controls, run dir, resume.

Every stage writes its output atomically and is skipped when that output exists, so running the
same command again after a kill resumes: finished experiments are skipped, an interrupted one
continues from its last checkpoint, and masks come out identical to an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import torch
from tqdm.auto import tqdm

from compress import distributed, paths
from compress.data import load_dataset
from compress.errors import UserError
from compress.io import CorruptArtifactError, load_json, load_torch, save_json, save_torch
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
from compress.lottery.report import write_report
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
from compress.lottery.summary import build_summary, choose_ticket, read_summary, result_fields, round_line
from compress.models import build_model
from compress.pruning import apply_masks, load_plain_state_dict, plain_state_dict
from compress.pruning.scorers import NEEDS_DATA
from compress.pruning.structured import resolve_multiple
from compress.recipe import Recipe, recipe_to_dict, results_hash
from compress.runtime import resolve_device, seed_everything, set_threads
from compress.ticket import save_ticket

__all__ = ["REINIT_SEED_STRIDE", "LotteryRun", "choose_ticket", "default_run_dir", "find_ticket", "read_summary"]


class LotteryRun:
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
        self.identity = {"recipe": results_hash(recipe), "data": self.data.identity_hash}
        if recipe.prune.channel_multiple == "auto":  # 'auto' differs by CPU: a resume elsewhere must not mix widths
            self.identity["channel_multiple"] = resolve_multiple("auto")
        self.search = LotterySearch(self.make_model(recipe.seed), recipe, where, entry_point="find_ticket")
        if progress and distributed.is_main():  # what will be pruned, and what not, before hours of training
            from compress.lottery.dry_run import format_plan

            print("\n".join(format_plan(self.search.plan(), self.search.rounds)), file=sys.stderr)
        if recipe.lottery.strategy == "at_init" and recipe.prune.method in NEEDS_DATA:
            stream = self.data.train.batches(recipe.train.batch_size, recipe.seed)  # the first steps' batches
            self.search.score_at_init([next(stream) for _ in range(recipe.prune.score_batches)])
        self.init_state = plain_state_dict(self.search.model)
        self.begin = recipe.lottery.rewind_to

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

    # -- files that can be recomputed -----------------------------------------------------------
    def _load(self, path: Path, recompute: Callable[[], None] | None = None, also: tuple[Path, ...] = ()):
        """Load a run file; a truncated one is moved aside (with ``also``) and recomputed when possible."""
        try:
            return load_torch(path, map_location=self.device)
        except CorruptArtifactError as error:
            if recompute is None or not distributed.is_main() or distributed.active():
                raise UserError(f"{error}; delete it and run the same command again to recompute it") from None
            for stale in (path, *also):
                if stale.exists():
                    stale.replace(stale.with_name(stale.name + ".corrupt"))
            print(f"warning: {error}; moved aside as {path.name}.corrupt and recomputing it", file=sys.stderr)
            recompute()
            return load_torch(path, map_location=self.device)

    def _retrain(self, round_index: int) -> Callable[[], None]:
        """Redo the ticket training of ``round_index`` (bit for bit what the run did the first time)."""
        def redo() -> None:
            folder = paths.round_dir(self.run_dir, round_index)
            for name in (paths.RESULT, paths.FINAL, paths.CHECKPOINT):
                (folder / name).unlink(missing_ok=True)
            self.run_ticket(round_index, self.masks_for_round(round_index))
        return redo

    # -- stages ---------------------------------------------------------------------------------
    def rewind_state(self) -> dict:
        if self.begin == 0:
            return self.init_state
        return self._load(self.run_dir / paths.REWIND, recompute=self._retrain(0))

    def masks_for_round(self, round_index: int) -> dict:
        """Computed (or read) on rank 0 only, then broadcast and verified identical on every rank."""
        masks = self._masks_for_round(round_index) if distributed.is_main() else self.search.masks
        masks = distributed.broadcast_masks(masks)
        if distributed.active():
            print(f"[rank {distributed.rank()}/{distributed.world_size()}] round {round_index} masks verified "
                  f"identical, checksum {distributed.mask_checksum(masks).item():.1f}", file=sys.stderr)
        return masks

    def _masks_for_round(self, round_index: int) -> dict:
        mask_path = paths.round_dir(self.run_dir, round_index) / paths.MASK
        if mask_path.exists():
            try:
                return load_torch(mask_path, map_location=self.device)
            except CorruptArtifactError as error:
                if round_index > 0 and not (paths.round_dir(self.run_dir, round_index - 1) / paths.FINAL).exists():
                    raise UserError(f"{error}; delete {mask_path.parent} and run again to recompute it") from None
                mask_path.replace(mask_path.with_name(mask_path.name + ".corrupt"))
                print(f"warning: {error}; moved aside and recomputed from the previous round", file=sys.stderr)
        early_bird = paths.round_dir(self.run_dir, round_index - 1) / paths.EARLY_BIRD
        if round_index > 0 and early_bird.exists():  # the previous round's converged draw (You et al. 2020)
            masks = {name: mask.to(self.device) for name, mask in load_torch(early_bird)["masks"].items()}
        elif round_index == 0:
            masks = {name: torch.ones_like(mask) for name, mask in self.search.masks.items()}
        else:
            previous = paths.round_dir(self.run_dir, round_index - 1)
            trained = self._load(previous / paths.FINAL, recompute=self._retrain(round_index - 1),
                                 also=(previous / paths.RESULT,))
            # the search stands where the previous round ended, then takes the same transition a user's
            # loop takes: prune the trained weights (and rewind, which the ticket then starts from)
            self._place_search(round_index - 1, _masks_in(trained, self.search.names), self.recipe.train.iterations)
            self.search.model.load_state_dict(trained)
            self.search.prune_and_rewind()
            masks = self.search.masks
        if (mask_path.parent / paths.RESULT).exists():  # a finished round whose mask.pt was lost: restore it
            save_torch({name: mask.cpu() for name, mask in masks.items()}, mask_path)
        return masks

    # -- the search, placed from the run's files (the runner keeps no IMP state of its own) ----------
    def _place_search(self, level: int, masks: dict, step_count: int) -> None:
        """Stand the search at ``level`` with ``masks`` and the run's rewind point (weights untouched)."""
        if self.begin == 0:
            rewind = self.init_state
        elif level > 0:
            rewind = self.rewind_state()
        else:  # the dense round takes the snapshot itself; a resumed one may already have it
            rewind = self._load(self.run_dir / paths.REWIND) if (self.run_dir / paths.REWIND).exists() else None
        state = self.search.state_dict()
        state.update(level=level, step_count=step_count, done=False, rewind=rewind,
                     masks={name: masks[name] for name in self.search.names})
        self.search.load_state_dict(state)

    def _level_start(self, round_index: int, masks: dict) -> torch.nn.Module:
        """The search's model as round ``round_index`` starts: its masks, and init or the rewound weights."""
        self._place_search(round_index, masks, 0 if round_index == 0 else self.begin)
        if round_index == 0:
            load_plain_state_dict(self.search.model, self.init_state)
        elif self.recipe.lottery.retrain != "rewind":  # lr_rewind / finetune: the trained survivors go on
            previous = paths.round_dir(self.run_dir, round_index - 1)
            self.search.model.load_state_dict(self._load(previous / paths.FINAL, recompute=self._retrain(round_index - 1),
                                                         also=(previous / paths.RESULT,)))
            apply_masks(self.search.model, masks)
        else:
            self.search.rewind()
        return self.search.model

    def _dense_start(self, masks: dict) -> torch.nn.Module:
        checkpoint = paths.round_dir(self.run_dir, 0) / paths.CHECKPOINT
        if self.begin > 0 and not (self.run_dir / paths.REWIND).exists() and checkpoint.exists():
            # a checkpoint is only ever written after the rewind point it needs; without that file the
            # snapshot cannot be taken again from the middle of the round: train the round from the start
            distributed.barrier()
            if distributed.is_main():
                checkpoint.unlink()
                print(f"warning: {paths.REWIND} is missing; round 0 restarts from iteration 0", file=sys.stderr)
            distributed.barrier()
        return self._level_start(0, masks)

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
                           skip=("threads",) if self._finished(round_index) else ())
        distributed.barrier()
        masks = self.masks_for_round(round_index)
        ticket = self.run_ticket(round_index, masks)
        entry = {"round": round_index, **result_fields(ticket)}
        controls: dict[str, Future] = {}
        if round_index > 0:
            start = self.rewind_state()
            for name in self.recipe.lottery.controls:
                controls[name] = self.submit_control(executor, name, round_index, masks, start)
        return entry, controls

    def _dense_step(self, iteration: int, model: torch.nn.Module) -> None:
        """The dense round steps the search, which snapshots at ``rewind_to``; the snapshot goes to a file."""
        had_snapshot = self.search.rewind_state is not None
        self.search.step(iteration)
        target = self.run_dir / paths.REWIND
        if not had_snapshot and self.search.rewind_state is not None and not target.exists() and distributed.is_main():
            save_torch(self.search.rewind_state, target)

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

    def _finished(self, round_index: int) -> bool:
        names = ["ticket", *(self.recipe.lottery.controls if round_index > 0 else ())]
        return all(read_result(paths.experiment_dir(self.run_dir, round_index, name) / paths.RESULT) is not None
                   for name in names)

    def write_summary(self, rounds: list[dict]) -> dict:
        summary = build_summary(self.recipe, rounds)
        chosen = next(entry for entry in rounds if entry["round"] == summary["ticket"]["round"])
        summary_path = self.run_dir / paths.SUMMARY
        written = (summary_path.exists() and (self.run_dir / paths.TICKET).exists()
                   and (self.run_dir / paths.REPORT).exists() and _json_or_none(summary_path) == summary)
        if not written:  # a finished run on read-only media reruns without writing
            self.save_ticket(chosen)
            save_json(summary, summary_path)
            write_report(self.run_dir, summary, self.recipe)
        return summary

    def save_ticket(self, chosen: dict) -> None:
        folder = paths.round_dir(self.run_dir, chosen["round"])
        masks = load_torch(folder / paths.MASK)
        trained = self._load(folder / paths.FINAL, recompute=self._retrain(chosen["round"]),
                             also=(folder / paths.RESULT,))
        # folded (pruned entries exactly zero): each loads into a fresh, unpruned model as it is
        self._level_start(chosen["round"], masks)
        rewind_state = _cpu(self.search.folded_state_dict())
        self.search.model.load_state_dict(trained)
        save_ticket(self.run_dir / paths.TICKET, model_config={**recipe_to_dict(self.recipe)["model"]},
                    shape=self.shape, masks={k: v.cpu() for k, v in masks.items()},
                    rewind_state=rewind_state, trained_state=_cpu(self.search.folded_state_dict()),
                    info={**chosen, "recipe": self.recipe.name})


def track_round(tracker, entry: dict) -> None:
    """A round's outcome at step = round index: weights / MACs remaining, early stop, each control's."""
    metrics = {f"round/{key}": entry[key] for key in ("weights_remaining", "macs_remaining", "early_stop_iteration",
                                                      "early_stop_test_accuracy", "test_accuracy") if key in entry}
    for name, control in entry.get("controls", {}).items():
        metrics.update({f"round/{name}/{key}": control[key] for key in ("early_stop_test_accuracy", "test_accuracy")
                        if key in control})
    tracker.log(metrics, entry["round"])
    tracker.flush()


def _masks_in(state: dict, names: list[str]) -> dict:
    """The mask buffers of a pruned model's state dict, by module name."""
    return {name: state[f"{name}.weight_mask" if name else "weight_mask"] for name in names}


def _json_or_none(path: Path):
    """A run file derived from the round files (``summary.json``): None when empty or cut, so it is rewritten."""
    try:
        return load_json(path)
    except (ValueError, UnicodeDecodeError):
        return None


def _cpu(state: dict) -> dict:
    return {key: value.cpu() for key, value in state.items()}


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
