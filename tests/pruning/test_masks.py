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


def _torch_ranking(scores: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """torch's L1Unstructured over the survivors: the ranking prune_lowest must give, ties included."""
    import torch.nn.utils.prune as prune

    alive = mask.flatten().nonzero().squeeze(1)
    new = mask.flatten().clone()
    new[alive] = prune.L1Unstructured(amount=k).compute_mask(scores.flatten()[alive], torch.ones(len(alive)))
    return new.view_as(mask)


@pytest.mark.parametrize("values", ["distinct", "tied", "signed"])
def test_prune_lowest_ranks_as_torch_does(values):
    generator = torch.Generator().manual_seed(1)
    scores = {"distinct": torch.rand(40, 30, generator=generator),
              "tied": torch.randint(0, 6, (40, 30), generator=generator).float(),  # ties straddle the threshold
              "signed": torch.randn(40, 30, generator=generator)}[values]
    for mask in (torch.ones(40, 30), (torch.rand(40, 30, generator=generator) > 0.4).float()):
        for amount in (0.3, 7, 0.99):
            k = count_to_prune(amount, int(mask.sum()))
            assert torch.equal(prune_lowest(scores, mask, amount), _torch_ranking(scores, mask, k))


def test_prune_lowest_on_a_huge_layer_breaks_ties_by_position(monkeypatch):
    """Above ``_CHUNK`` entries topk's memory is not paid: tied survivors at the threshold are pruned at the
    lowest positions first; the pruned set is still exactly the k lowest |score| survivors."""
    import compress.pruning.masks as masks_module

    monkeypatch.setattr(masks_module, "_CHUNK", 64)
    generator = torch.Generator().manual_seed(2)
    scores = torch.randint(-5, 6, (1000,), generator=generator).float()
    mask = (torch.rand(1000, generator=generator) > 0.3).float()
    survivors = int(mask.sum())
    for amount in (0.25, 0.5, 101):
        new = prune_lowest(scores, mask, amount)
        k = count_to_prune(amount, survivors)
        pruned = (mask == 1) & (new == 0)
        assert int(pruned.sum()) == k and torch.equal(new[mask == 0], mask[mask == 0])
        kept = (new == 1)
        assert float(scores[pruned].abs().max()) <= float(scores[kept].abs().min())
        threshold = float(scores[pruned].abs().max())
        tied = ((scores.abs() == threshold) & (mask == 1)).nonzero().squeeze(1)
        tied_pruned = int(pruned[tied].sum())
        assert pruned[tied[:tied_pruned]].all() and not pruned[tied[tied_pruned:]].any()
    distinct = torch.randperm(1000, generator=generator).float()  # no ties: the one answer, torch's
    assert torch.equal(prune_lowest(distinct, mask, 0.4), _torch_ranking(distinct, mask, count_to_prune(0.4, survivors)))


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
