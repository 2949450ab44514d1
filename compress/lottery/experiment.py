"""One training run of a lottery experiment (ticket or control), resumable, with its files."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from compress import distributed, paths
from compress.io import load_json, save_json, save_torch
from compress.pruning import (
    apply_masks,
    is_pruned,
    load_plain_state_dict,
    mac_counts,
    refresh_weights,
    sparsity_report,
)
from compress.training import train

RESULT_FIELDS = ("test_accuracy", "early_stop_iteration", "early_stop_test_accuracy", "early_stop_val_accuracy",
                 "wall_s")


def run_experiment(folder: Path, *, make_model: Callable[[], nn.Module], start_state: dict | None, masks: dict,
                   recipe, data, begin: int, desc: str, progress: bool,
                   on_step: Callable[[int, nn.Module], None] | None = None,
                   extra_state: tuple[Callable[[], dict], Callable[[dict], None]] | None = None,
                   extra_result: Callable[[], dict] | None = None) -> dict:
    """Train ``masks`` from ``start_state`` at iteration ``begin``; skip when the result exists.

    ``start_state=None``: ``make_model()`` returns a model already at its start (the ticket: the
    ``LotterySearch``'s own model, placed and rewound by the search). It is called only when training runs.

    Leaves: mask.pt, metrics.jsonl, sparsity.json, final.pt (state dict with masks), result.json.
    ``extra_state`` goes into the training checkpoints (``compress.training.train``); ``extra_result()``
    is merged into result.json. The result counts the training's compute: ``iterations_trained`` and
    ``train_flops`` = 3 x MACs x batch x iterations (dense-equivalent; ``train_flops_sparse`` at the
    mask's nonzero MACs, what an ideal sparse kernel would need).
    """
    folder = Path(folder)
    result_path = folder / paths.RESULT
    distributed.barrier()  # every rank sees the same files before deciding to skip
    done = read_result(result_path)
    if done is not None:
        return done
    model = make_model()
    apply_masks(model, masks)
    if start_state is not None:
        load_plain_state_dict(model, start_state)
    mask_path = folder / paths.MASK
    if not mask_path.exists() and distributed.is_main():
        save_torch({name: mask.cpu() for name, mask in masks.items()}, mask_path)
    tracker = experiment_tracker(folder, recipe) if distributed.is_main() else None
    try:
        outcome = train(model, data, recipe.train, recipe.seed, metrics_path=folder / paths.METRICS,
                        checkpoint_path=folder / paths.CHECKPOINT, begin=begin,
                        on_step=(lambda iteration: on_step(iteration, model)) if on_step else None,
                        augment=recipe.data.augment, progress=progress, desc=desc, tracker=tracker,
                        extra_state=extra_state)
    except BaseException:
        if tracker is not None:
            tracker.close()
        raise
    report = sparsity_report(model, list(masks))
    check_ticket_invariants(model, masks)
    if not distributed.is_main():
        distributed.barrier()  # rank 0 writes the result; read it back so every rank returns the same
        return load_json(result_path)
    save_json(report, folder / paths.SPARSITY)
    save_torch({key: value.cpu() for key, value in model.state_dict().items()}, folder / paths.FINAL)
    result = {key: getattr(outcome, key) for key in RESULT_FIELDS if hasattr(outcome, key)}
    # the ticket is chosen on validation accuracy and reported on test: keep both at the early stop
    best = next(p for p in outcome.history if p["iteration"] == outcome.early_stop_iteration)
    # without a validation split there is no validation accuracy: null, never NaN (not valid JSON)
    val = best["val_accuracy"]
    result["early_stop_val_accuracy"] = val if val is not None and math.isfinite(val) else None
    result["weights_remaining"] = report["weights_remaining"]
    dense_macs, nonzero_macs = mac_counts(model, next(data.test.eval_batches(1))[0])
    # what an ideal sparse kernel would multiply (a whole-channel ticket, once compacted, saves a bit more)
    result["macs_remaining"] = nonzero_macs / dense_macs if dense_macs else 1.0
    result["final_iteration"] = outcome.iterations
    result.update(training_compute(dense_macs, nonzero_macs, recipe.train.batch_size, outcome.iterations - begin))
    if extra_result is not None:
        result.update(extra_result())
    if tracker is not None:
        with tracker:  # the outcome, at the last iteration: a scalar per run to compare runs by
            tracker.log({"result/weights_remaining": result["weights_remaining"],
                         "result/macs_remaining": result["macs_remaining"],
                         "result/early_stop_iteration": outcome.early_stop_iteration,
                         "result/early_stop_test_accuracy": outcome.early_stop_test_accuracy,
                         "result/test_accuracy": outcome.test_accuracy}, outcome.iterations)
    save_json(result, result_path)
    (folder / paths.CHECKPOINT).unlink(missing_ok=True)
    distributed.barrier()
    return result


def read_result(path: Path) -> dict | None:
    """A finished training's ``result.json``; None when there is none, or when it is empty or cut (a disk
    that filled up): the training then runs again, deterministically, and writes it anew."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        result = load_json(path)
    except (ValueError, UnicodeDecodeError):
        result = None
    if isinstance(result, dict) and "weights_remaining" in result:
        return result
    if distributed.is_main():
        print(f"warning: {path} is empty or cut; training that experiment again (same seed, same result)",
              file=sys.stderr)
        path.unlink()
    return None


def training_compute(dense_macs: int, nonzero_macs: int, batch_size: int, iterations: int) -> dict:
    """A training's compute: forward + backward ~ 3 x the forward MACs per example (Kaplan et al. 2020's
    rule), dense-equivalent and at the mask's nonzero MACs."""
    return {"iterations_trained": iterations, "train_flops": 3 * dense_macs * batch_size * iterations,
            "train_flops_sparse": 3 * nonzero_macs * batch_size * iterations}


def experiment_tracker(folder: Path, recipe):
    """The tracker of one ticket or control run (``train.log``); its run dir is the folder holding round_NN/."""
    from compress.tracking import open_tracker, recipe_params

    folder = Path(folder)
    run_dir = folder.parent if folder.name.startswith("round_") else folder.parent.parent
    name = str(folder.relative_to(run_dir)) if folder.is_relative_to(run_dir) else folder.name
    return open_tracker(recipe.train.log, folder, run_dir=run_dir, name=name, params=recipe_params(recipe))


@torch.no_grad()
def check_ticket_invariants(model: nn.Module, masks: dict) -> None:
    """What a ticket rests on, checked on what the forward pass really uses.

    The mask buffers must still hold exactly the masks trained with (an EMA, a ``load_state_dict`` or
    an optimizer touching buffers would change them), the prune hook must still be installed, and
    the weight a forward pass computes must be exactly zero where the mask is.
    """
    modules = dict(model.named_modules())
    refresh_weights(model)  # recompute ``weight`` through torch prune's own rule, as a forward would
    for name, mask in masks.items():
        module = modules[name]
        if not is_pruned(module):
            raise RuntimeError(f"{name!r} lost its torch prune reparametrisation during training")
        if not torch.equal(module.weight_mask, mask.to(module.weight_mask.device, module.weight_mask.dtype)):
            raise RuntimeError(f"the mask buffer of {name!r} changed during training")
        pruned = mask.to(module.weight.device) == 0
        if bool((module.weight[pruned] != 0).any()):
            raise RuntimeError(f"pruned weights of {name!r} are not zero after training")
