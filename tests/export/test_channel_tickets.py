"""Channel-level tickets: whole channels/neurons pruned through IMP, then physically removed exactly."""

from __future__ import annotations

import pytest
import torch

from compress.lottery import LotterySearch
from compress.models import create_model
from compress.pruning import count_macs
from compress.pruning.compact import compact
from compress.recipe import recipe_from_dict

MODELS = {"lenet300_100": (1, 28), "conv2": (3, 32), "conv4": (3, 32), "conv6": (3, 32), "vgg19": (3, 32)}


def _channel_recipe(name: str, rounds: int):
    return recipe_from_dict({"name": "channels", "model": {"name": name}, "data": {"name": "cifar10"},
                             "prune": {"granularity": "channel", "rates": {"conv": 0.3, "linear": 0.3}},
                             "lottery": {"rounds": rounds}, "train": {"iterations": 10}})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_channel_imp_masks_shrink_and_compaction_is_exact(name):
    channels, side = MODELS[name]
    rounds = 1 if name == "vgg19" else 3
    torch.manual_seed(0)
    model = create_model(name, in_channels=channels).eval()
    search = LotterySearch(model, _channel_recipe(name, rounds))
    previous = search.masks
    search.snapshot()  # the rewind point (step 0), as a training loop's first step would take it
    for _ in range(rounds):
        assert search.prune_and_rewind()  # the public transition, never search.level by hand
        masks = search.masks
        for layer, mask in masks.items():
            assert bool((mask <= previous[layer]).all()), "masks only shrink"
            per_channel = mask.flatten(1)
            assert bool(((per_channel == 0).all(1) | (per_channel == 1).all(1)).all()), "whole channels only"
        previous = masks
    output_layer = search.targets[-1].name if search.targets[-1].kind == "output" else None
    assert output_layer is None, "the output layer's neurons are never pruned at channel level"

    x = torch.randn(4, channels, side, side)
    result = compact(model)
    small = result.module.eval()
    torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=1e-5)
    assert count_macs(small, x) < 0.75 * count_macs(model, x)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
