"""What an executor runs: a ``TrainingJob`` (one control training, packed for another process) and
``run_job``, which trains it in whatever process it lands in, rebuilding data and model once per process."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from compress.errors import UserError


# -- what is sent ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingJob:
    """One training (a control of a round), with everything a fresh process needs to run it.

    ``recipe`` is ``recipe_to_dict(recipe)``; ``start_state`` and ``masks`` are CPU tensors (packed as
    ``torch.save`` bytes to cross a process boundary); ``folder`` is absolute.
    """

    recipe: dict
    folder: str
    start_state: Any
    masks: Any
    begin: int
    desc: str
    progress: bool = False
    data_identity: str | None = None

    def packed(self) -> TrainingJob:
        return replace(self, start_state=_to_bytes(self.start_state), masks=_to_bytes(self.masks))

    def unpacked(self) -> TrainingJob:
        return replace(self, start_state=_from_bytes(self.start_state), masks=_from_bytes(self.masks))


def _to_bytes(tensors: Any) -> Any:
    if isinstance(tensors, bytes):
        return tensors
    buffer = io.BytesIO()
    torch.save({key: value.detach().cpu() for key, value in tensors.items()}, buffer)
    return buffer.getvalue()


def _from_bytes(blob: Any) -> Any:
    return torch.load(io.BytesIO(blob), weights_only=True) if isinstance(blob, bytes) else blob


@dataclass
class _Context:
    """What a process needs to train jobs of one recipe: the recipe, its data, a model factory."""

    recipe: Any
    data: Any
    device: torch.device
    make_model: Callable[..., torch.nn.Module]


_CONTEXTS: dict[str, _Context] = {}


def _key(recipe_dict: dict) -> str:
    return json.dumps(recipe_dict, sort_keys=True, default=str)


@contextmanager
def local_context(recipe_dict: dict, recipe, data, device: torch.device, make_model) -> Iterator[None]:
    """While open, jobs of ``recipe_dict`` run in this process reuse the caller's data and model factory."""
    key = _key(recipe_dict)
    previous = _CONTEXTS.get(key)
    _CONTEXTS[key] = _Context(recipe, data, device, make_model)
    try:
        yield
    finally:
        if previous is None:
            _CONTEXTS.pop(key, None)
        else:
            _CONTEXTS[key] = previous


def _context(recipe_dict: dict) -> _Context:
    key = _key(recipe_dict)
    if key not in _CONTEXTS:
        from compress.data import load_dataset
        from compress.models import build_model
        from compress.recipe import recipe_from_dict
        from compress.runtime import resolve_device, seed_everything

        recipe = recipe_from_dict(recipe_dict)
        device = resolve_device(recipe.train.device)
        seed_everything(recipe.seed)  # as the parent does before loading the data
        data = load_dataset(recipe.data, recipe.seed, device)

        def make_model(seed: int | None = None) -> torch.nn.Module:
            model = build_model(recipe.model, data.num_classes, data.in_channels,
                                recipe.data.image_size or data.image_size, seed=seed)
            return model.to(device)

        _CONTEXTS.clear()  # one recipe's data per worker at a time
        _CONTEXTS[key] = _Context(recipe, data, device, make_model)
    return _CONTEXTS[key]


def warm_up(recipe_dict: dict) -> None:
    """Load a recipe's data in this worker ahead of its first job."""
    _context(recipe_dict)


def run_job(job: TrainingJob) -> dict:
    """Train ``job`` (skipped when its result exists) and return its result dict; runs in any process."""
    from compress.lottery.experiment import run_experiment

    job = job.unpacked()
    context = _context(job.recipe)
    if job.data_identity is not None and context.data.identity_hash != job.data_identity:
        raise UserError(f"{job.folder}: this worker's data ({context.recipe.data.name} under "
                        f"{context.recipe.data.root!r}) differs from the run's: the worker must read the same "
                        "files as the process that started the run")
    device = context.device
    masks = {name: mask.to(device) for name, mask in job.masks.items()}
    start = {name: value.to(device) for name, value in job.start_state.items()}
    return run_experiment(Path(job.folder), make_model=context.make_model, start_state=start, masks=masks,
                          recipe=context.recipe, data=context.data, begin=job.begin, desc=job.desc,
                          progress=job.progress)


# -- executors ---------------------------------------------------------------------------------------
