"""The logger interface, the registry of loggers, and ``Tracker``: several loggers, deduplicated steps."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compress.errors import UserError
from compress.io import load_json, save_json
from compress.registry import LOGGERS

TRACKING = "tracking.json"  # per run folder: the last step written per metric, and the loggers' run ids


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What a logger needs to open its run: ``folder`` (where its files go), ``run_dir`` (the lottery run's
    folder: one MLflow experiment / W&B group per run dir), ``name`` (``round_01/reinit``), ``params``
    (flat hyper-parameters), ``resume_step`` (the last step written before, or None on a fresh run) and
    ``state`` (a dict the logger may fill with ids to find its run again; saved in tracking.json)."""

    folder: Path
    run_dir: Path
    name: str
    params: dict[str, Any]
    resume_step: int | None
    state: dict


class Logger:
    """One tracking backend. Subclasses open their run in ``__init__(info: RunInfo)``."""

    name = "logger"
    requires: tuple[str, ...] = ()  # modules it imports: checked when a tracker is made, before training

    def log_params(self, params: dict[str, Any]) -> None:
        """Hyper-parameters (flat ``{"train.optimizer.lr": 0.0012, ...}``), once per run."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Everything logged so far is on disk when this returns."""

    def close(self) -> None:
        self.flush()


LoggerFactory = Callable[[RunInfo], Logger]


def register_logger(name: str, factory: LoggerFactory) -> None:
    """Make ``train.log: [name]`` use ``factory(info)`` (``compress.registry.LOGGERS``; replaces one of that
    name). The built-in ones are registered by ``compress.tracking.local`` and ``.remote``."""
    LOGGERS.unregister(name)
    LOGGERS.register(name)(factory)


def _factory(name: str) -> LoggerFactory:
    if name not in LOGGERS:
        raise UserError(f"train.log: unknown logger {name!r}; choose from {', '.join(sorted(LOGGERS))}")
    return LOGGERS.get(name)


def logger_names() -> tuple[str, ...]:
    """The registered logger names (the built-in ones and any ``register_logger`` added)."""
    return tuple(LOGGERS)


def recipe_params(recipe: Any) -> dict[str, Any]:
    """The recipe as flat hyper-parameters: ``{"train.optimizer.lr": 0.0012, "lottery.controls": "reinit"}``."""
    from compress.recipe import recipe_to_dict

    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, (list, tuple)):
            flat[prefix] = ",".join(map(str, value))
        elif value is None or isinstance(value, dict):
            flat[prefix] = "null" if value is None else "{}"
        else:
            flat[prefix] = value

    walk("", recipe_to_dict(recipe))
    return flat


class Tracker:
    """The loggers of one run folder. ``log`` skips a metric at a step not after the last one written
    (a resumed training redoes steps); ``flush`` writes the marks after the loggers' files.

    Loggers open lazily, at the first value that is new: rerunning a finished run writes nothing.
    """

    def __init__(self, names: list[str] | tuple[str, ...], folder: Path, *, run_dir: Path, name: str,
                 params: dict[str, Any] | None = None) -> None:
        self.names = tuple(names)
        self.factories = [_factory(n) for n in self.names]  # unknown names fail now, not hours later
        for logger_name, factory in zip(self.names, self.factories, strict=True):
            for module in getattr(factory, "requires", ()):
                if importlib.util.find_spec(module) is None:
                    raise UserError(f"train.log: {logger_name} needs the {module} package, which is not "
                                    f"installed (pip install {module}, or pip install 'compress[tracking]')")
        self.folder = Path(folder)
        self.run_dir = Path(run_dir)
        self.name = name
        self.params = dict(params or {})
        saved = load_json(self.folder / TRACKING) if (self.folder / TRACKING).exists() else {}
        self.marks: dict[str, int] = dict(saved.get("marks", {}))
        self.state: dict[str, dict] = dict(saved.get("state", {}))
        self.loggers: list[Logger] | None = None
        self.dirty = False

    def _open(self) -> list[Logger]:
        if self.loggers is None:
            resume = max(self.marks.values()) if self.marks else None
            self.loggers = []
            for logger_name, factory in zip(self.names, self.factories, strict=True):
                info = RunInfo(folder=self.folder, run_dir=self.run_dir, name=self.name, params=self.params,
                               resume_step=resume, state=self.state.setdefault(logger_name, {}))
                logger = factory(info)
                if resume is None:
                    logger.log_params(self.params)
                self.loggers.append(logger)
            self.dirty = True  # the loggers' ids are saved at the next flush
        return self.loggers

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log the values of ``metrics`` at ``step`` that are finite numbers and new for their key."""
        fresh = {key: float(value) for key, value in metrics.items()
                 if value is not None and math.isfinite(float(value)) and step > self.marks.get(key, -1)}
        if not fresh or not self.names:
            return
        for logger in self._open():
            logger.log_metrics(fresh, step)
        self.marks.update(dict.fromkeys(fresh, step))
        self.dirty = True

    def flush(self) -> None:
        if not self.dirty:
            return
        for logger in self.loggers or ():
            logger.flush()
        save_json({"marks": self.marks, "state": self.state}, self.folder / TRACKING)
        self.dirty = False

    def close(self) -> None:
        self.flush()
        for logger in self.loggers or ():
            logger.close()
        self.loggers = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_tracker(names: list[str] | tuple[str, ...], folder: Path, *, run_dir: Path, name: str,
                 params: dict[str, Any] | None = None) -> Tracker:
    """A ``Tracker`` for ``folder`` with the loggers ``names`` (``train.log``)."""
    return Tracker(names, folder, run_dir=run_dir, name=name, params=params)
