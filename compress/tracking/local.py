"""Loggers that write files beside the run: ``tensorboard`` (event files) and ``csv`` (metrics.csv)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from compress.io import save_text
from compress.tracking.base import Logger, RunInfo, register_logger

CSV_NAME = "metrics.csv"
PARAMS_NAME = "params.json"


class TensorBoardLogger(Logger):
    """Scalars under the run folder: ``tensorboard --logdir runs/`` shows every ticket and control.

    On resume the writer purges what a killed process wrote after the last flushed step (TensorBoard's
    ``purge_step``), so a reader never sees a step twice.
    """

    name = "tensorboard"
    requires = ("tensorboard",)

    def __init__(self, info: RunInfo) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # tensorboard is a core dependency; a trimmed install lacks it
            from compress.errors import UserError

            raise UserError("train.log: tensorboard needs the tensorboard package (pip install tensorboard)") from error
        purge = None if info.resume_step is None else info.resume_step + 1
        self.writer = SummaryWriter(log_dir=str(info.folder), purge_step=purge, flush_secs=3600)

    def log_params(self, params: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        plain = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
        # written into this run (not the sub-run add_hparams would make), so the HParams tab lists it
        for summary in hparams(plain, {}):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("recipe", "\n".join(f"    {k}: {v}" for k, v in params.items()), 0)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class CsvLogger(Logger):
    """``metrics.csv`` (step, metric, value; one row per value) and ``params.json`` in the run folder.

    Rows past the last flushed step (a killed process's) are dropped on resume; each flush rewrites the
    file atomically, so it is never half written.
    """

    name = "csv"

    def __init__(self, info: RunInfo) -> None:
        self.path = info.folder / CSV_NAME
        self.params_path = info.folder / PARAMS_NAME
        self.rows: list[tuple[int, str, float]] = []
        if info.resume_step is not None and self.path.exists():
            with open(self.path, newline="") as handle:
                self.rows = [(int(r["step"]), r["metric"], float(r["value"])) for r in csv.DictReader(handle)
                             if int(r["step"]) <= info.resume_step]
        self.pending = True

    def log_params(self, params: dict[str, Any]) -> None:
        save_text(json.dumps(params, indent=1, sort_keys=True, default=str) + "\n", self.params_path)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.rows.extend((step, key, value) for key, value in metrics.items())
        self.pending = True

    def flush(self) -> None:
        if self.pending:
            out = io.StringIO()
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(("step", "metric", "value"))
            writer.writerows(self.rows)
            save_text(out.getvalue(), self.path)
            self.pending = False


register_logger("tensorboard", TensorBoardLogger)
register_logger("csv", CsvLogger)
