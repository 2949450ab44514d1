"""Experiment tracking: the recipe's ``train.log`` loggers, one small interface, registered by name.

    from compress.tracking import open_tracker
    tracker = open_tracker(["tensorboard", "csv"], folder, run_dir=run_dir, name="round_01/reinit",
                           params=recipe_params(recipe))
    tracker.log({"train/loss": 0.31, "train/lr": 1e-3}, step=17)
    tracker.flush()          # at each evaluation: everything so far is on disk, and the marks with it
    tracker.close()

Every experiment (the ticket of each round, each control) is its own run, written into its own folder
of the run dir; the run dir itself holds one more run with the per-round summary. A resumed training
redoes the iterations after its last checkpoint: the tracker remembers (``tracking.json``) the last step
written per metric and skips what it already has, so a resumed run appends without duplicating steps.

Loggers: ``tensorboard`` (torch.utils.tensorboard), ``csv`` (metrics.csv), ``mlflow`` (a local file store
``<run dir>/mlruns`` unless ``MLFLOW_TRACKING_URI`` is set), ``wandb`` (offline unless ``WANDB_MODE`` is set).
``register_logger(name, factory)`` adds one (a class like ``compress.tracking.base.Logger``).
"""

from __future__ import annotations

from compress.tracking.base import (
    Logger,
    RunInfo,
    Tracker,
    logger_names,
    open_tracker,
    recipe_params,
    register_logger,
)

__all__ = ["Logger", "RunInfo", "Tracker", "logger_names", "open_tracker", "recipe_params", "register_logger"]
