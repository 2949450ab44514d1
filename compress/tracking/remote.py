"""Loggers for tracking services, run locally by default: ``mlflow`` (a file store) and ``wandb`` (offline).

Both are extras (``pip install 'compress[tracking]'``); asking for one that is not installed is a
one-line error before any training. Each ticket and control is its own run, found again on resume by the
id kept in ``tracking.json``.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from compress.errors import UserError
from compress.tracking.base import Logger, RunInfo, register_logger

MLRUNS = "mlruns"  # the default MLflow file store, inside the run dir
MLFLOW_PARAM_LIMIT = 6000  # characters MLflow keeps of a parameter value


def _missing(package: str, extra: str = "tracking") -> UserError:
    return UserError(f"train.log: {package} is not installed (pip install {package}, or "
                     f"pip install 'compress[{extra}]')")


class MlflowLogger(Logger):
    """One MLflow run per ticket / control, in experiment ``<run dir name>``.

    Store: ``MLFLOW_TRACKING_URI`` when set, else the file store ``<run dir>/mlruns``
    (``mlflow ui --backend-store-uri runs/<run>/mlruns``).
    """

    name = "mlflow"
    requires = ("mlflow",)

    def __init__(self, info: RunInfo) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as error:
            raise _missing("mlflow") from error
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (info.run_dir / MLRUNS).resolve().as_uri()
        if uri.startswith("file:"):
            # MLflow 3 keeps the file store only on request; it is what a local, server-less run wants
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        run_id = info.state.get("run_id")
        if run_id is None:
            experiment = info.run_dir.resolve().name
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
            run = self.client.create_run(experiment_id, run_name=info.name, tags={"compress.folder": str(info.folder)})
            run_id = info.state["run_id"] = run.info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        self.pending: list = []

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key, str(value)[:MLFLOW_PARAM_LIMIT]) for key, value in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending.extend(Metric(key, value, now, step) for key, value in metrics.items())

    def flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[:1000], self.pending[1000:]
            self.client.log_batch(self.run_id, metrics=batch)

    def close(self) -> None:
        self.flush()
        self.client.set_terminated(self.run_id)


class WandbLogger(Logger):
    """One W&B run per ticket / control, grouped by run dir; offline unless ``WANDB_MODE`` says otherwise.

    Offline runs are files under ``<folder>/wandb/`` (``wandb sync`` uploads them later); the project is
    ``WANDB_PROJECT`` or ``compress``.
    """

    name = "wandb"
    requires = ("wandb",)

    def __init__(self, info: RunInfo) -> None:
        try:
            import wandb
        except ImportError as error:
            raise _missing("wandb") from error
        run_id = info.state.setdefault("run_id", uuid.uuid4().hex[:12])
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "compress"), group=info.run_dir.resolve().name,
            name=f"{info.run_dir.resolve().name}/{info.name}", id=run_id, dir=str(info.folder),
            mode=os.environ.get("WANDB_MODE", "offline"), resume="allow", reinit="create_new",
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))

    def log_params(self, params: dict[str, Any]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


register_logger("mlflow", MlflowLogger)
register_logger("wandb", WandbLogger)
