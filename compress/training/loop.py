"""The training loop: a budget in iterations, periodic evaluation, early-stop tracking, resumable.

Batches are a pure function of (seed, iteration) -- see ``TensorSplit.batches`` -- so a run restarted
from a checkpoint at iteration k sees exactly the batches an uninterrupted run would.

Divergence: each step's loss is copied into a device-side window (no host sync per step); at every
evaluation and checkpoint the window is checked once, and a nan/inf loss (or weight) stops training with
``TrainingDiverged`` naming the iteration, before anything of the diverged state is written.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from compress import distributed
from compress.errors import UserError
from compress.io import CorruptArtifactError, append_jsonl, load_torch, save_text, save_torch
from compress.recipe.schema import TrainConfig
from compress.runtime import model_device
from compress.training.evaluate import evaluate
from compress.training.optim import build_optimizer, build_schedule

StepCallback = Callable[[int], None]


class MetricSink(Protocol):
    """Where ``train`` sends its scalars (``compress.tracking.Tracker``); ``None`` = nowhere."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def flush(self) -> None: ...


class TrainingDiverged(UserError):
    """The training loss (or the weights) became nan or inf: the learning rate is too high for this model."""


@dataclass
class TrainResult:
    iterations: int
    test_accuracy: float
    test_loss: float
    early_stop_iteration: int
    early_stop_test_accuracy: float
    early_stop_val_loss: float
    wall_s: float
    history: list[dict] = field(default_factory=list)

    def to_dict(self, with_history: bool = False) -> dict:
        data = asdict(self)
        if not with_history:
            data.pop("history")
        return data


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _evaluate_point(model: nn.Module, data, config: TrainConfig, iteration: int, train_loss: float,
                    autocast: bool) -> dict:
    val_loss, val_accuracy = evaluate(model, data.val, config.eval_batch_size, autocast)
    test_loss, test_accuracy = evaluate(model, data.test, config.eval_batch_size, autocast)
    return {"iteration": iteration, "train_loss": train_loss, "val_loss": val_loss,
            "val_accuracy": val_accuracy, "test_loss": test_loss, "test_accuracy": test_accuracy}


def _diverged(config: TrainConfig, what: str) -> TrainingDiverged:
    return TrainingDiverged(f"training diverged: {what} (train.optimizer.lr = {config.optimizer.lr:g}); "
                            "lower train.optimizer.lr (or add train.schedule.warmup)")


def _sync_window(losses: torch.Tensor, synced: int, steps: int) -> int:
    """Under torchrun, replace this rank's losses ``synced:steps`` by their mean over the ranks (the loss
    of the global batch), so every rank sees the same values -- and stops at the same step."""
    if steps > synced:
        losses[synced:steps] = distributed.all_reduce_mean(losses[synced:steps])
    return steps


def _window_loss(window: torch.Tensor, first: int, config: TrainConfig) -> float:
    """The mean training loss of the steps ``first``, ``first + 1``, ... held in ``window`` (one host sync);
    raises ``TrainingDiverged`` naming the first step whose loss is nan or inf."""
    mean = float(window.mean())
    if not math.isfinite(mean):  # a cross-entropy is >= 0: the mean is finite iff every step's loss is
        bad = int((~torch.isfinite(window)).nonzero()[0, 0])
        raise _diverged(config, f"the training loss is {float(window[bad])} at iteration {first + bad}")
    return mean


def _check_weights(model: nn.Module, first: int, last: int, config: TrainConfig) -> None:
    """One host sync: a step can blow the weights up while its own loss (computed before it) is finite."""
    params = [p.detach() for p in model.parameters()]
    if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
        raise _diverged(config, f"the weights became nan or inf during iterations {first}..{last}")


def _load_checkpoint(path: Path, device: torch.device, begin: int) -> dict | None:
    """The checkpoint, or None when it is truncated: it is moved aside and the training restarts."""
    try:
        return load_torch(path, map_location=device)
    except CorruptArtifactError as error:
        distributed.barrier()  # every rank has read it before rank 0 moves it
        if distributed.is_main():
            path.replace(path.with_name(path.name + ".corrupt"))
            print(f"warning: {error}; moved aside as {path.name}.corrupt, training restarts from iteration "
                  f"{begin}", file=sys.stderr)
        return None


def _track(tracker: MetricSink, losses: list[float], rates: list[float], first: int, point: dict) -> None:
    """Each step's loss and learning rate since the last evaluation, then the evaluation itself."""
    for offset, (loss, rate) in enumerate(zip(losses, rates, strict=False)):
        tracker.log({"train/loss": loss, "train/lr": rate}, first + offset)
    tracker.log({"eval/train_loss": point["train_loss"], "eval/val_loss": point["val_loss"],
                 "eval/val_accuracy": point["val_accuracy"], "eval/test_loss": point["test_loss"],
                 "eval/test_accuracy": point["test_accuracy"]}, point["iteration"])
    tracker.flush()


def _early_stop(history: list[dict]) -> dict:
    """The evaluation with the lowest validation loss (test loss when there is no validation split)."""
    key = "val_loss" if not math.isnan(history[0]["val_loss"]) else "test_loss"
    return min(history, key=lambda point: point[key])


def train(model: nn.Module, data, config: TrainConfig, seed: int, *,
          metrics_path: Path | None = None, checkpoint_path: Path | None = None,
          on_step: StepCallback | None = None, optimizer: torch.optim.Optimizer | None = None, begin: int = 0,
          augment: bool = False, progress: bool = True, desc: str = "train",
          extra_state: tuple[Callable[[], dict], Callable[[dict], None]] | None = None,
          tracker: MetricSink | None = None) -> TrainResult:
    """Train ``model`` in place for ``config.iterations`` steps on ``data.train``.

    Evaluates every ``config.eval_every`` steps and at the end; appends each evaluation to
    ``metrics_path``; writes a resumable checkpoint to ``checkpoint_path`` every
    ``config.checkpoint_every`` steps and resumes from it when it exists. ``on_step(k)`` runs after
    the k-th step (the lottery uses it to snapshot the rewind point). ``begin`` > 0 continues a
    rewound run at that iteration: the schedule and the batch stream pick up where they were.
    ``extra_state = (get, put)``: ``get()`` is saved in each checkpoint and ``put(saved)`` restores it on
    resume (what ``on_step`` accumulates, e.g. the early-bird mask draws). ``config.compile``: the steps
    run through ``torch.compile(model)``; the masks stay on ``model``.
    ``tracker`` (``compress.tracking``) gets each step's loss and learning rate and each evaluation,
    at every evaluation (one host sync for the whole window); on rank 0 only.
    """
    if not 0 <= begin < config.iterations:
        raise UserError(f"begin={begin} must lie in [0, train.iterations={config.iterations})")
    distributed.check_batch_size(config.batch_size)
    device = model_device(model)
    autocast = config.bf16  # torch.autocast covers both devices a recipe can name (train.device: cpu / cuda)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = optimizer or build_optimizer(model.parameters(), config.optimizer)
    schedule = build_schedule(optimizer, config.schedule, config.iterations, offset=begin)
    history: list[dict] = []
    start = begin
    elapsed = 0.0
    # the loss of each step since the last evaluation, on the device: no host sync per step
    losses = torch.zeros(min(config.eval_every, config.iterations), dtype=torch.float64, device=device)
    steps_since_eval = synced = 0  # entries of ``losses`` so far; of those, already averaged over the ranks
    rates: list[float] = []  # the learning rate of each step in ``losses`` (for the tracker)
    state = None
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        state = _load_checkpoint(Path(checkpoint_path), device, begin)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        _set_rng_state(state["rng"])
        start, history, elapsed = state["iteration"], state["history"], state["wall_s"]
        if extra_state is not None and state.get("extra") is not None:
            extra_state[1](state["extra"])
        window = state.get("window", [])[:len(losses)]  # the global batch's losses since the last evaluation
        steps_since_eval = synced = len(window)
        losses[:steps_since_eval] = torch.tensor(window, dtype=losses.dtype)
        rates = list(state.get("window_lr", [float("nan")] * steps_since_eval))[:steps_since_eval]
    if metrics_path is not None and distributed.is_main() and Path(metrics_path).exists():
        # lines after the checkpoint (or all of them, without one) are redone: drop them
        save_text("".join(json.dumps(point) + "\n" for point in history), metrics_path)

    def checkpoint(iteration: int) -> None:
        if checkpoint_path is not None and distributed.is_main():
            save_torch({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "rng": _rng_state(), "iteration": iteration,
                        "history": history, "window": losses[:steps_since_eval].tolist(),
                        "extra": extra_state[0]() if extra_state is not None else None,
                        "window_lr": rates,
                        "wall_s": elapsed + time.perf_counter() - began}, checkpoint_path)

    began = time.perf_counter()
    batches = data.train.batches(config.batch_size, seed, start=start, augment=augment)
    bar = tqdm(total=config.iterations, initial=start, desc=desc, leave=False,
               disable=not progress or not distributed.is_main(),
               mininterval=0.5, unit="it", dynamic_ncols=True)
    # under torchrun: BatchNorm over the global batch (put back on exit), then DDP wraps the model as it
    # is now -- the prune reparametrisation must already be installed.
    with distributed.sync_batchnorm(model) if config.sync_batchnorm else nullcontext(), bar:
        net = nn.parallel.DistributedDataParallel(model) if distributed.active() else model
        if config.compile:
            net = torch.compile(net)
        model.train()
        for iteration in range(start + 1, config.iterations + 1):
            x, y = distributed.shard(*next(batches))
            if config.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            rates.append(optimizer.param_groups[0]["lr"])  # the rate this step uses
            loss.backward()
            optimizer.step()
            schedule.step()
            losses[steps_since_eval] = loss.detach()
            steps_since_eval += 1
            if on_step is not None:
                on_step(iteration)
            first = iteration - steps_since_eval + 1
            if iteration % config.eval_every == 0 or iteration == config.iterations:
                synced = _sync_window(losses, synced, steps_since_eval)
                train_loss = _window_loss(losses[:steps_since_eval], first, config)
                _check_weights(model, first, iteration, config)
                point = _evaluate_point(model, data, config, iteration, train_loss, autocast)
                if tracker is not None and distributed.is_main():
                    _track(tracker, losses[:steps_since_eval].tolist(), rates, first, point)
                steps_since_eval = synced = 0
                rates = []
                history.append(point)
                if metrics_path is not None and distributed.is_main():
                    append_jsonl(point, metrics_path)
                bar.set_postfix(loss=f"{point['train_loss']:.3f}", test_acc=f"{point['test_accuracy']:.4f}",
                                refresh=False)
            if iteration % config.checkpoint_every == 0 and iteration < config.iterations:
                if steps_since_eval:  # not checked just above: no checkpoint of a diverged state
                    synced = _sync_window(losses, synced, steps_since_eval)
                    _window_loss(losses[:steps_since_eval], first, config)
                    _check_weights(model, first, iteration, config)
                checkpoint(iteration)
            bar.update(1)
    if not history:  # resumed at the very end: nothing left to run, evaluate once
        history.append(_evaluate_point(model, data, config, config.iterations, float("nan"), autocast))
    best = _early_stop(history)
    final = history[-1]
    return TrainResult(iterations=config.iterations, test_accuracy=final["test_accuracy"],
                       test_loss=final["test_loss"], early_stop_iteration=best["iteration"],
                       early_stop_test_accuracy=best["test_accuracy"], early_stop_val_loss=best["val_loss"],
                       wall_s=elapsed + time.perf_counter() - began, history=history)
