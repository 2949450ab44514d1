"""A tiny lottery recipe (LeNet-300-100 on the synthetic set) and what find_ticket.py finds for it.

A module of its own, not conftest.py: several test folders have a conftest, and ``from conftest import``
would get whichever was imported first."""

from __future__ import annotations

import torch

import compress
from compress import paths
from compress.models import build_model
from compress.recipe import recipe_from_dict

RATES = {"linear": 0.2, "output": 0.1}
LAYERS = {"1": "linear", "3": "linear", "5": "output"}  # LeNet-300-100's Linear layers, in module order


def tiny(**lottery) -> compress.Recipe:
    """Seconds per level; a warm-up + cosine schedule so a rewind has to restart the LR schedule."""
    return recipe_from_dict({
        "name": "tiny-integrations", "seed": 0, "model": {"name": "lenet300_100"},
        "data": {"name": "synthetic", "validation_size": 100},
        "train": {"iterations": 30, "batch_size": 32, "eval_every": 30, "checkpoint_every": 30,
                  "eval_batch_size": 500, "optimizer": {"name": "adam", "lr": 1.2e-3},
                  "schedule": {"name": "cosine", "warmup": 3}},
        "prune": {"rates": RATES},
        "lottery": {"rounds": 2, "rewind_to": 5, "controls": [], **lottery},
        "export": {"onnx": False},
    })


def make_net(recipe, data) -> torch.nn.Module:
    """The model find_ticket.py trains: same builder, same seed."""
    return build_model(recipe.model, data.num_classes, data.in_channels, data.image_size, seed=recipe.seed)


def find_ticket_masks(recipe, out) -> list[dict[str, torch.Tensor]]:
    """The masks of each round of ``find_ticket`` (round 0 = dense)."""
    compress.find_ticket(recipe, out, progress=False)
    rounds = 1 if recipe.lottery.one_shot else recipe.lottery.rounds
    return [torch.load(paths.round_dir(out, r) / paths.MASK, weights_only=True) for r in range(rounds + 1)]


def assert_masks_equal(found: dict, expected: dict) -> None:
    assert set(found) == set(expected)
    for name, mask in expected.items():
        assert torch.equal(found[name].cpu(), mask.cpu()), name


def assert_planned_fractions(masks: dict, level: int) -> None:
    """Each layer keeps (1 - rate)^level of its weights (to the nearest weight per round)."""
    for name, mask in masks.items():
        rate = RATES[LAYERS[name.split(".")[-1]]]
        assert abs(mask.float().mean().item() - (1 - rate) ** level) < 1e-3 * (level + 1), (name, level)


def assert_pruned_zero(net: torch.nn.Module, masks: dict) -> None:
    """The net still carries these masks, and its forward ignores the pruned weights: changing them (in
    ``weight_orig``) changes no output. (``weight[mask == 0] == 0`` would hold by construction.)"""
    for name, mask in masks.items():
        module = net.get_submodule(name)
        assert torch.equal(module.weight_mask.detach().cpu(), mask.detach().cpu()), name
        device = module.weight_orig.device
        if isinstance(module, torch.nn.Linear):
            x = torch.randn(2, module.in_features, device=device)
        else:
            x = torch.randn(2, module.in_channels, 9, 9, device=device)
        with torch.no_grad():
            before = module(x)
            saved = module.weight_orig.detach().clone()
            module.weight_orig[mask.to(device) == 0] += 1.0
            after = module(x)
            module.weight_orig.copy_(saved)
            module(x)  # the weight attribute recomputed from the restored weights
        assert torch.equal(before, after), name
