"""Registries: register by name, get with a helpful error, list by pattern -- and every registry of the toolkit.

A registry decides what is valid: the recipe loader asks ``PRUNING_METHODS``, ``CONTROLS``, ... whether a name
exists, never a list of its own. This module is a leaf (it imports nothing of the toolkit's layers), so any
layer may ask it without an import cycle. Each registry names its *providers*: the modules whose import
registers the built-in entries; they are imported on the first lookup (not at import time), and then every
plugin of the ``compress.plugins`` entry-point group is loaded once, so a package can add a pruning method, a
control, a backend, a model or a dataset:

    # pyproject.toml of a plugin package
    [project.entry-points."compress.plugins"]
    mine = "my_package.compress_plugin"        # a module that registers on import, or a callable run once
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any, Generic, TypeVar

from compress.errors import UserError

T = TypeVar("T")
PLUGIN_GROUP = "compress.plugins"
_plugins_loaded = False


def load_plugins() -> None:
    """Load every ``compress.plugins`` entry point once (a module registering on import, or a callable)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for entry in metadata.entry_points(group=PLUGIN_GROUP):
        try:
            loaded = entry.load()
            if callable(loaded):
                loaded()
        except Exception as error:  # a broken plugin is the installer's to fix: name it
            raise UserError(f"plugin {entry.name!r} ({entry.value}) of {PLUGIN_GROUP} failed to load: "
                            f"{type(error).__name__}: {error}") from error


class Registry(Generic[T]):
    """Maps names to factories (timm's ``register_model`` / ``create_model`` / ``list_models`` shape).

    ``providers``: modules imported on the first lookup, whose import registers the built-in entries.
    """

    def __init__(self, kind: str, providers: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._providers = providers
        self._loaded = not providers

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # first, so a provider that looks itself up while importing does not recurse
            for module in self._providers:
                importlib.import_module(module)
        load_plugins()

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
            if key in self._entries:
                raise UserError(f"{self.kind} {key!r} is already registered")
            self._entries[key] = obj
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        """Remove an entry (tests and plugins that replace one)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        self._load()
        if name not in self._entries:
            raise UserError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        self._load()
        close = difflib.get_close_matches(name, self._entries, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; available: {', '.join(sorted(self._entries))}"

    def list(self, pattern: str = "*") -> list[str]:
        self._load()
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        """The names in registration order (built-ins first, then plugins)."""
        self._load()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self._load()
        return len(self._entries)


class Names:
    """The names of several registries as one choice (``prune.method``: IMP methods and at-init scorers)."""

    def __init__(self, *registries: Registry) -> None:
        self.registries = registries

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name for registry in self.registries for name in registry))

    def __contains__(self, name: object) -> bool:
        return any(name in registry for registry in self.registries)


# Every registry of the toolkit. Entries are registered by the providers named here (and by plugins).
MODELS: Registry[Callable[..., Any]] = Registry("model", ("compress.models",))
TIMM_PREFIX = "timm/"  # not registered: any timm model, as timm/<name> (checked when built)
DATASETS: Registry[Any] = Registry("dataset", ("compress.data",))
PRUNING_METHODS: Registry[Callable[..., Any]] = Registry("pruning method", ("compress.pruning.masks",))
# scores of single weights at initialization (lottery.strategy: at_init); magnitude and random are both kinds
SCORERS: Registry[Callable[..., Any]] = Registry("pruning scorer", ("compress.pruning.scorers",))
CONTROLS: Registry[Any] = Registry("control", ("compress.lottery.controls",))
EXECUTORS: Registry[Callable[..., Any]] = Registry("executor", ("compress.lottery.executors",))
LOGGERS: Registry[Callable[..., Any]] = Registry("logger", ("compress.tracking.local", "compress.tracking.remote"))
BACKENDS: Registry[Any] = Registry("backend", ("compress.bench.backends", "compress.bench.auto"))
PREPROCESS_MODES: Registry[str] = Registry("export.preprocess mode", ("compress.export.onnx.preprocess",))
QUANTIZE_MODES: Registry[str] = Registry("export.quantize mode", ("compress.export.quantize.int8",))
# Recipe checks that need another layer's knowledge (model kwargs, selector syntax): validation asks by name.
RECIPE_CHECKS: Registry[Callable[..., Any]] = Registry("recipe check", ("compress.models.build",
                                                                        "compress.pruning.selectors"))
PRUNE_METHOD_NAMES = Names(PRUNING_METHODS, SCORERS)


def init_only(method: str) -> bool:
    """A scorer with no IMP step of its own: it scores weights at initialization only (snip, grasp, ...)."""
    return method in SCORERS and method not in PRUNING_METHODS
