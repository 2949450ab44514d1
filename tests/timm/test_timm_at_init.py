"""Pruning at initialization on timm families the scorers were not written against: every data-reading scorer
gives each family a mask of the planned size, or one line saying why not (never a traceback)."""

from __future__ import annotations

import warnings

import pytest
import torch

from compress.lottery import LotterySearch
from compress.models import create_model
from compress.pruning.scorers import check_scores, synflow_scores
from compress.recipe import recipe_from_dict

FAMILIES = {
    "timm/resnet18": {},  # zero_init_last: each block's convs score 0 under snip / grasp / synflow (a warning)
    "timm/mobilenetv3_small_100": {},  # hardsigmoid: no second derivative (grasp by central difference)
    "timm/efficientnet_b0": {},  # SynFlow's R reaches 1e46 at init: past float32
    "timm/vit_tiny_patch16_224": {"image_size": 32},  # fused attention: no double backward but on its math kernel
    "timm/convnext_atto": {},
    "timm/regnetx_002": {},
}
# SynFlow rescoring 100 times costs ~10x the others: through the search on the two families with special
# paths (hardsigmoid, fused attention); one step of it on every family below
CASES = [(name, method) for name in sorted(FAMILIES) for method in ("snip", "grasp", "magnitude")] + [
    ("timm/mobilenetv3_small_100", "synflow"), ("timm/vit_tiny_patch16_224", "synflow")]


def _recipe(name: str, method: str):
    return recipe_from_dict({"name": "timm", "model": {"name": name}, "data": {"name": "cifar10"},
                             "prune": {"method": method, "rates": {"conv": 0.5, "linear": 0.5, "output": 0.0}},
                             "lottery": {"strategy": "at_init", "rounds": 2, "one_shot": True},
                             "train": {"iterations": 10}})


@pytest.mark.parametrize("name,method", CASES)
def test_at_init_scorers_mask_timm_families_at_the_planned_density(name, method):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=3, **FAMILIES[name])
    search = LotterySearch(model, _recipe(name, method))
    gen = torch.Generator().manual_seed(0)
    search.score_at_init([(torch.randn(2, 3, 32, 32, generator=gen), torch.tensor([1, 7]))])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        masks = search.next_masks()
    for warning in caught:
        assert "\n" not in str(warning.message)  # one line each
    for target in search.targets:
        if target.rate == 0:
            continue
        mask = masks[target.name]
        assert int(mask.sum()) == round(mask.numel() * 0.25), target.name  # two rounds of 50%, one shot
    assert all(torch.equal(m, m.bool().float()) for m in masks.values())


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_one_synflow_step_scores_every_family_finitely(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=3, **FAMILIES[name])
    names = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # resnet18's zero-scored blocks
        scores = synflow_scores(model, names, None, [(torch.randn(2, 3, 32, 32), None)])
        check_scores("synflow", scores)
    assert all(scores[n].shape == dict(model.named_modules())[n].weight.shape for n in names)
    assert all(bool(torch.isfinite(s).all()) and s.dtype == torch.float64 for s in scores.values())


def _channel_recipe(name: str, strategy: str, method: str = "magnitude"):
    return recipe_from_dict({"name": "timm", "model": {"name": name}, "data": {"name": "cifar10"},
                             "prune": {"method": method, "granularity": "channel",
                                       "rates": {"conv": 0.5, "linear": 0.5, "output": 0.0}},
                             "lottery": {"strategy": strategy, "rounds": 1}, "train": {"iterations": 10}})


@pytest.mark.parametrize("name", ["timm/resnet18", "timm/mobilenetv3_small_100"])
def test_channel_masks_at_init_follow_the_coupled_channel_plan(name):
    """Magnitude channels at init are IMP's first channel step taken on the untrained model: the same
    coupled groups (a residual stage's channels go together), no layer emptied (the plan's
    pools, not one global ranking of every layer's channel norms)."""
    masks = {}
    for strategy in ("at_init", "imp"):
        torch.manual_seed(0)
        model = create_model(name, num_classes=10, in_channels=3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            search = LotterySearch(model, _channel_recipe(name, strategy))
        masks[strategy] = search.next_masks()
    for layer, mask in masks["at_init"].items():
        assert torch.equal(mask, masks["imp"][layer]), layer
        assert mask.sum() > 0, layer
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = LotterySearch(create_model(name, num_classes=10, in_channels=3),
                               _channel_recipe(name, "at_init", "random"))
    for layer, mask in search.next_masks().items():
        assert mask.sum() > 0, layer
