"""``ticket.pt``, the format a run writes and export, bench and users read (a leaf: it imports no lottery code).

Both weight sets are stored folded (pruned entries exactly zero), so ``model.load_state_dict(
ticket["trained_state"])`` on a model built from ``ticket["model"]`` gives the ticket without torch
prune; ``ticket_model`` also installs the masks so that further training keeps them.

Registered models (``compress.models``, ``timm/<name>``): ``find_ticket`` writes the ticket and
``load_ticket(path)`` / ``ticket_model(ticket)`` rebuild the model from ``ticket["model"]``.

A model from your own factory (your own class, your own training loop with ``LotterySearch``)::

    save_ticket_from_model("ticket.pt", model, rewind_state=search.rewind_state, info={"acc": 0.98})
    fresh = MyNet()                                   # built by you, the same architecture
    load_ticket_into(fresh, "ticket.pt")              # masks + trained weights; trained=False: rewound

``save_ticket_from_model`` reads the masks from the model's torch prune buffers (``weight_mask``), folds
the trained weights (``compress.pruning.folded_state_dict``) and the rewind weights (if given; plain or
pruned naming) with them, and records the model as ``{"name": None, "factory": "<user>"}``: the toolkit
cannot rebuild it, so ``load_ticket`` refuses such a ticket and ``load_ticket_into`` is the way back --
it checks parameter names and shapes (a one-line ``UserError`` names the first mismatch), installs the
masks with torch prune and loads the weights, so further training keeps the pruned entries at zero.
Install a ticket before wrapping a model in DDP or ``torch.compile`` (or into a model already pruned
the same way, whose masks are then replaced in place). Both functions unwrap ``torch.compile`` / DDP /
DataParallel / EMA wrappers (``compress.models.unwrap``), and keys with their ``module.`` /
``_orig_mod.`` prefixes are accepted.

Deployment straight from your own loop, without a ticket file:

* ``compress.pruning.fold_masks(model)`` -- a copy with the masks folded into plain weights (no prune
  hooks, pruned entries exactly zero): what to export (``compress.export.export_onnx`` does this itself)
  or to ``torch.save``;
* ``compress.pruning.folded_state_dict(model)`` -- the same as a state dict, loadable with plain
  ``load_state_dict`` into a fresh, unpruned instance of your class;
* ``compress.pruning.plain_state_dict(model)`` -- unpruned naming (``weight`` = ``weight_orig``, not
  multiplied by the mask, masks dropped): to resume training, together with
  ``compress.pruning.get_masks`` / ``apply_masks`` and ``load_plain_state_dict``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from compress.errors import UserError
from compress.io import load_torch, save_torch
from compress.models import build_model
from compress.models.unwrap import strip_wrapper_prefix, unwrap_model
from compress.pruning import apply_masks, folded_state_dict, get_masks, is_pruned, load_plain_state_dict

FORMAT = "compress.ticket/1"
USER_FACTORY = "<user>"  # ticket["model"]["factory"] of a model the toolkit cannot rebuild
_PARAM = "weight"


def save_ticket(path: Path, *, model_config: dict, shape: dict, masks: dict, rewind_state: dict,
                trained_state: dict, info: dict) -> None:
    """``shape``: num_classes, in_channels, image_size the model was built for. ``rewind_state`` and
    ``trained_state`` are plain and folded (``folded_state_dict``: every pruned entry exactly zero), so each
    loads into a fresh, unpruned model as it is; anything else is refused (a caller's bug)."""
    for what, state in (("rewind_state", rewind_state), ("trained_state", trained_state)):
        _check_folded(state, masks, what)
    save_torch({"format": FORMAT, "model": model_config, "shape": shape, "masks": masks,
                "rewind_state": rewind_state, "trained_state": trained_state, "info": info}, path)


def _check_folded(state: dict | None, masks: dict, what: str) -> None:
    if state is None:  # no rewind weights stored (save_ticket_from_model without rewind_state)
        return
    reparametrised = [key for key in state if key.endswith(("weight_orig", "weight_mask"))]
    if reparametrised:
        raise ValueError(f"save_ticket: {what} holds torch prune parameters ({reparametrised[0]}); pass "
                         "folded_state_dict(model)")
    for name, mask in masks.items():
        weight = state.get(f"{name}.weight" if name else "weight")
        if weight is not None and bool((weight.detach().cpu()[mask.detach().cpu() == 0] != 0).any()):
            raise ValueError(f"save_ticket: {what}[{name!r}.weight] is not folded (pruned entries are not zero); "
                             "pass folded_state_dict(model)")


def read_ticket(path: Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no ticket here (a run writes ticket.pt after its first round)")
    ticket = load_torch(path)  # tensors and plain data only: a shared ticket never runs code
    if not isinstance(ticket, dict) or ticket.get("format") != FORMAT:
        raise UserError(f"{path}: not a compress ticket (expected format {FORMAT})")
    missing = [key for key in ("model", "shape", "masks", "rewind_state", "trained_state", "info") if key not in ticket]
    if missing:
        raise UserError(f"{path}: damaged compress ticket (no {', '.join(missing)})")
    return ticket


def ticket_model(ticket: dict | Path, trained: bool = True) -> nn.Module:
    """A fresh model with the ticket's masks installed (torch prune) and its trained or rewound weights."""
    from compress.recipe.schema import ModelConfig

    ticket = read_ticket(ticket) if not isinstance(ticket, dict) else ticket
    if ticket["model"].get("name") is None:
        raise UserError(f"this ticket is of a model built by {ticket['model'].get('factory', USER_FACTORY)} "
                        "(saved with save_ticket_from_model); build that model and call load_ticket_into(model, path)")
    # pretrained=False: the trained weights overwrite whatever a hub would send
    config = ModelConfig(**{**ticket["model"], "kwargs": dict(ticket["model"].get("kwargs", {})), "pretrained": False})
    shape = ticket["shape"]
    model = build_model(config, shape["num_classes"], shape["in_channels"], shape["image_size"])
    apply_masks(model, ticket["masks"])
    load_plain_state_dict(model, ticket["trained_state"] if trained else ticket["rewind_state"])
    return model.eval()


def load_ticket(path: Path, trained: bool = True) -> nn.Module:
    return ticket_model(Path(path), trained)


def _cpu_tensor(value: torch.Tensor) -> torch.Tensor:
    return value.detach().cpu().clone()


def _plain_keys(state: dict, what: str) -> dict[str, torch.Tensor]:
    """``state`` in plain naming on the CPU: wrapper prefixes stripped, ``weight_orig`` -> ``weight``,
    masks dropped."""
    if not isinstance(state, dict):
        raise UserError(f"{what} must be a state dict (name -> tensor), got {type(state).__name__}")
    plain = {}
    for key, value in state.items():
        key = strip_wrapper_prefix(key)
        if key.endswith(f"{_PARAM}_mask"):
            continue
        if key == f"{_PARAM}_orig" or key.endswith(f".{_PARAM}_orig"):
            key = key[: -len("_orig")]
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{what}: {key!r} is a {type(value).__name__}, not a tensor")
        plain[key] = _cpu_tensor(value)
    return plain


def _weight_key(module_name: str) -> str:
    return f"{module_name}.{_PARAM}" if module_name else _PARAM


def _fold(state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """``state`` with every masked weight multiplied by its mask (pruned entries exactly zero, never -0.0)."""
    for name, mask in masks.items():
        key = _weight_key(name)
        if key not in state:
            raise UserError(f"{what} has no {key!r}, but the model prunes module {name!r}")
        if tuple(state[key].shape) != tuple(mask.shape):
            raise UserError(f"{what}: {key!r} has shape {tuple(state[key].shape)}, the mask {tuple(mask.shape)}")
        weight = state[key] * mask.to(state[key].dtype)
        state[key] = torch.where(mask == 0, torch.zeros_like(weight), weight)
    return state


def save_ticket_from_model(path: str | Path, model: nn.Module, *, rewind_state: dict | None = None,
                           info: dict | None = None, model_config: dict | None = None,
                           shape: dict | None = None) -> None:
    """Write ``ticket.pt`` for a pruned model the toolkit did not build (your own class or factory).

    Masks: the model's torch prune buffers (``compress.pruning.get_masks``); trained weights: the model's,
    folded (``folded_state_dict``); ``rewind_state``: the weights to rewind to (e.g.
    ``LotterySearch.rewind_state``; plain or pruned naming), folded with the same masks -- None stores
    none, and ``load_ticket_into(..., trained=False)`` then refuses. ``model_config`` defaults to
    ``{"name": None, "factory": "<user>"}`` and ``shape`` to unknown input sizes; give a registered
    model's config (and its shape) to make the ticket loadable with ``load_ticket`` too.
    """
    inner = unwrap_model(model)
    if not isinstance(inner, nn.Module):
        raise UserError(f"save_ticket_from_model takes an nn.Module, got {type(model).__name__}")
    masks = {name: _cpu_tensor(mask) for name, mask in get_masks(inner).items()}
    trained = {key: _cpu_tensor(value) for key, value in folded_state_dict(inner).items()}
    trained = _fold(trained, masks, "the model's state")  # +0.0, never -0.0, at pruned entries
    rewind = None if rewind_state is None else _fold(_plain_keys(rewind_state, "rewind_state"), masks, "rewind_state")
    if rewind is not None:
        _check_state(rewind, {key: tuple(value.shape) for key, value in trained.items()}, "rewind_state",
                     "the model")
    info = dict(info or {})
    info.setdefault("model_class", f"{type(inner).__module__}.{type(inner).__qualname__}")
    save_ticket(Path(path), model_config=dict(model_config) if model_config else {"name": None, "factory": USER_FACTORY},
                shape=dict(shape) if shape else {"num_classes": None, "in_channels": None, "image_size": None},
                masks=masks, rewind_state=rewind, trained_state=trained, info=info)


def _check_state(state: dict, own: dict[str, tuple], what: str, target: str) -> None:
    """Names and shapes of ``state`` against ``own`` (plain key -> shape): one line for the first mismatch."""
    for key, shape in own.items():  # in the target's order: its first mismatching parameter is named
        if key not in state:
            raise UserError(f"{target} has parameter {key!r}, which {what} does not have")
        if tuple(state[key].shape) != shape:
            raise UserError(f"{what}: {key!r} has shape {tuple(state[key].shape)}, in {target} it is {shape}")
    extra = next((key for key in state if key not in own), None)
    if extra is not None:
        raise UserError(f"{what} has parameter {extra!r}, which {target} does not have")


def load_ticket_into(model: nn.Module, ticket: str | Path | dict, trained: bool = True) -> nn.Module:
    """Install a ticket's masks (torch prune) and its trained (or, ``trained=False``, rewound) weights
    into ``model``, which you built yourself; returns ``model`` (its train/eval mode unchanged).

    Parameter and buffer names and shapes must match the ticket's; the first mismatch raises a one-line
    UserError and leaves ``model`` untouched. Works for tickets of registered models too.
    """
    what = str(ticket) if not isinstance(ticket, dict) else "the ticket"
    ticket = read_ticket(Path(ticket)) if not isinstance(ticket, dict) else ticket
    state = ticket["trained_state" if trained else "rewind_state"]
    if state is None:
        raise UserError(f"{what}: no rewind weights (saved without rewind_state); load it with trained=True")
    inner = unwrap_model(model)
    if not isinstance(inner, nn.Module):
        raise UserError(f"load_ticket_into takes an nn.Module, got {type(model).__name__}")
    state = _plain_keys(state, what)
    own = {}
    for key, value in inner.state_dict().items():
        if key.endswith(f"{_PARAM}_mask"):
            continue
        if key == f"{_PARAM}_orig" or key.endswith(f".{_PARAM}_orig"):
            key = key[: -len("_orig")]
        own[key] = tuple(value.shape)
    target = f"the model ({type(inner).__name__})"
    _check_state(state, own, what, target)
    modules = dict(inner.named_modules())
    masks = {strip_wrapper_prefix(name): mask for name, mask in ticket["masks"].items()}
    for name, mask in masks.items():
        module = modules.get(name)
        if module is None or not isinstance(getattr(module, f"{_PARAM}_orig", getattr(module, _PARAM, None)),
                                            torch.Tensor):
            raise UserError(f"{what} has a mask for module {name!r}, which {target} does not have"
                            + ("" if module is None else " with a weight"))
        weight = module.weight_orig if is_pruned(module) else module.weight
        if tuple(mask.shape) != tuple(weight.shape):
            raise UserError(f"{what}: the mask for {name!r} has shape {tuple(mask.shape)}, in {target} the "
                            f"weight is {tuple(weight.shape)}")
    extra = next((name for name, module in modules.items() if is_pruned(module) and name not in masks), None)
    if extra is not None:
        raise UserError(f"{target} prunes module {extra!r}, which {what} has no mask for")
    apply_masks(inner, masks)
    load_plain_state_dict(inner, state)
    return model
