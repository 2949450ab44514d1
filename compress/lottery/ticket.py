"""``ticket.pt``: masks, rewound weights and trained weights, loadable into a fresh, unpruned model.

Both weight sets are stored folded (pruned entries exactly zero), so ``model.load_state_dict(
ticket["trained_state"])`` on a model built from ``ticket["model"]`` gives the ticket without torch
prune; ``ticket_model`` also installs the masks so that further training keeps them.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from compress.errors import UserError
from compress.io import load_torch, save_torch
from compress.models import build_model
from compress.pruning import apply_masks, load_plain_state_dict

FORMAT = "compress.ticket/1"


def save_ticket(path: Path, *, model_config: dict, shape: dict, masks: dict, rewind_state: dict,
                trained_state: dict, info: dict) -> None:
    """``shape``: num_classes, in_channels, image_size the model was built for."""
    save_torch({"format": FORMAT, "model": model_config, "shape": shape, "masks": masks,
                "rewind_state": rewind_state, "trained_state": trained_state, "info": info}, path)


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
    # pretrained=False: the trained weights overwrite whatever a hub would send
    config = ModelConfig(**{**ticket["model"], "kwargs": dict(ticket["model"].get("kwargs", {})), "pretrained": False})
    shape = ticket["shape"]
    model = build_model(config, shape["num_classes"], shape["in_channels"], shape["image_size"])
    apply_masks(model, ticket["masks"])
    load_plain_state_dict(model, ticket["trained_state"] if trained else ticket["rewind_state"])
    return model.eval()


def load_ticket(path: Path, trained: bool = True) -> nn.Module:
    return ticket_model(Path(path), trained)
