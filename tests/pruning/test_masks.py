import pytest
import torch

from compress.pruning import (
    check_shrinks,
    count_to_prune,
    magnitude_masks,
    prune_lowest,
    random_masks_like,
)


def test_amount_is_count_if_int_fraction_if_float():
    assert count_to_prune(3, 10) == 3
    assert count_to_prune(0.25, 10) == 2  # round(2.5) -> 2, as torch.nn.utils.prune does
    assert count_to_prune(0.2, 100) == 20
    with pytest.raises(ValueError):
        count_to_prune(11, 10)
    with pytest.raises(ValueError):
        count_to_prune(1.5, 10)


def test_prune_lowest_only_prunes_survivors():
    scores = torch.tensor([5.0, 0.1, 3.0, 0.2, 4.0, 0.3])
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    new = prune_lowest(scores, mask, 2)
    assert new.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert new.sum() == mask.sum() - 2


def test_layerwise_rates_compound_per_round():
    torch.manual_seed(0)
    weights = {"a": torch.randn(100, 50), "b": torch.randn(10, 100)}
    masks = {name: torch.ones_like(w) for name, w in weights.items()}
    rates = {"a": 0.2, "b": 0.1}
    groups = {"a": "a", "b": "b"}
    for round_index in range(1, 6):
        new = magnitude_masks(weights, masks, rates, groups)
        check_shrinks(masks, new)
        masks = new
        for name, rate in rates.items():
            expected = weights[name].numel() * (1 - rate) ** round_index
            assert abs(int(masks[name].sum()) - expected) <= round_index  # one weight per layer per round


def test_global_scope_pools_the_group():
    weights = {"small": torch.full((10,), 0.01), "big": torch.full((10,), 10.0)}
    masks = {name: torch.ones(10) for name in weights}
    new = magnitude_masks(weights, masks, {"small": 0.5, "big": 0.5}, {"small": "g", "big": "g"})
    assert int(new["small"].sum()) == 0 and int(new["big"].sum()) == 10


def test_channel_granularity_prunes_whole_channels():
    torch.manual_seed(0)
    weight = torch.randn(8, 4, 3, 3)
    weight[2] *= 0.01
    new = magnitude_masks({"c": weight}, {"c": torch.ones_like(weight)}, {"c": 0.25}, {"c": "c"}, "channel")
    alive = new["c"].flatten(1).any(1)
    assert int((~alive).sum()) == 2 and not alive[2]
    assert bool((new["c"].flatten(1).sum(1) % 36 == 0).all())  # each channel all-or-nothing


def test_check_shrinks_rejects_revival():
    with pytest.raises(ValueError, match="only shrink"):
        check_shrinks({"a": torch.tensor([0.0, 1.0])}, {"a": torch.tensor([1.0, 1.0])})


def test_random_masks_keep_per_layer_counts():
    masks = {"a": (torch.rand(30, 20) > 0.7).float(), "b": (torch.rand(5, 5) > 0.5).float()}
    randomized = random_masks_like(masks, torch.Generator().manual_seed(1))
    for name in masks:
        assert int(randomized[name].sum()) == int(masks[name].sum())
    assert not torch.equal(randomized["a"], masks["a"])


def test_random_control_under_channel_granularity_prunes_whole_channels():
    mask = torch.ones(8, 3, 3, 3)
    mask[[1, 4, 6]] = 0  # a channel ticket: three dead output channels
    fc = torch.ones(5, 12)
    fc[[0, 3]] = 0
    random = random_masks_like({"conv": mask, "fc": fc}, torch.Generator().manual_seed(0), granularity="channel")
    for name, original in {"conv": mask, "fc": fc}.items():
        channels = random[name].flatten(1)
        # every channel is wholly alive or wholly dead, and as many channels live as in the ticket
        assert bool(((channels == 0).all(dim=1) | (channels == 1).all(dim=1)).all())
        assert int(channels.any(dim=1).sum()) == int(original.flatten(1).any(dim=1).sum())
    assert not torch.equal(random["conv"], mask)


def test_global_scope_pools_rates_that_differ_only_by_float_noise():
    from compress.models import create_model
    from compress.pruning import build_plan
    from compress.recipe.schema import PruneConfig

    model = create_model("lenet300_100")
    targets = build_plan(model, PruneConfig(scope="global", rates={"1": 0.2, "3": 0.2000001, "output": 0.1}))
    groups = {target.name: target.group for target in targets}
    assert groups["1"] == groups["3"] != groups["5"]


def test_global_pools_are_keyed_by_rate_closeness_not_by_its_printed_digits():
    from compress.pruning.pools import rate_pools

    # one rate computed two ways is one pool; a rate written differently is another
    pools = rate_pools({"a": 0.2, "b": 1 - 0.8, "c": 0.21, "d": 0.1234565, "e": 0.1234565 * (1 + 1e-8)}, True)
    assert pools["a"] == pools["b"] != pools["c"]
    assert pools["d"] == pools["e"] not in (pools["a"], pools["c"])
    assert rate_pools({"a": 0.2, "b": 0.2}, False) == {"a": "a", "b": "b"}
