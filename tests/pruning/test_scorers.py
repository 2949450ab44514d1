"""Pruning-at-init scores on a 2-layer net against hand computations made here with plain autograd / algebra."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from compress.errors import UserError
from compress.pruning import apply_masks, ones_masks
from compress.pruning.scorers import (
    SCORERS,
    erk_densities,
    grasp_scores,
    masks_from_scores,
    snip_scores,
    synflow_masks,
    synflow_scores,
)

NAMES = ["0", "2"]


def two_layer(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def batches(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 5, generator=gen), torch.randint(0, 3, (6,), generator=gen)) for _ in range(n)]


def _forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    hidden = torch.relu(x @ params["w1"].T + params["b1"])
    return hidden @ params["w2"].T + params["b2"]


def _plain(model: nn.Sequential) -> dict[str, torch.Tensor]:
    return {"w1": model[0].weight.detach().clone(), "b1": model[0].bias.detach().clone(),
            "w2": model[2].weight.detach().clone(), "b2": model[2].bias.detach().clone()}


def test_snip_is_abs_grad_times_weight_summed_over_batches():
    model = two_layer()
    before = copy.deepcopy(model.state_dict())
    scores = snip_scores(model, NAMES, None, batches())
    params = {k: v.requires_grad_(True) for k, v in _plain(model).items()}
    loss = sum(F.cross_entropy(_forward(params, x), y) for x, y in batches())
    g1, g2 = torch.autograd.grad(loss, [params["w1"], params["w2"]])
    assert torch.allclose(scores["0"], (g1 * params["w1"]).abs(), atol=1e-6)
    assert torch.allclose(scores["2"], (g2 * params["w2"]).abs(), atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # pure


def test_grasp_is_weight_times_hessian_gradient_product():
    model = two_layer(3)
    scores = grasp_scores(model, NAMES, None, batches(), temperature=200.0)
    params = _plain(model)
    flat = torch.cat([params["w1"].flatten(), params["w2"].flatten()])

    def loss_of(vector: torch.Tensor) -> torch.Tensor:
        w1, w2 = vector[:20].view(4, 5), vector[20:].view(3, 4)
        full = {"w1": w1, "b1": params["b1"], "w2": w2, "b2": params["b2"]}
        return sum(F.cross_entropy(_forward(full, x) / 200.0, y) for x, y in batches())

    g = torch.autograd.functional.jacobian(loss_of, flat)
    hessian = torch.autograd.functional.hessian(loss_of, flat)
    expected = flat * (hessian @ g)
    got = torch.cat([scores["0"].flatten(), scores["2"].flatten()])
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-10)
    assert got.abs().max() > 0


def test_synflow_matches_the_closed_form_of_a_two_layer_relu_net():
    model = two_layer(5)
    x, _ = batches(1)[0]
    scores = synflow_scores(model, NAMES, None, [(x, None)])
    p = {k: v.abs().double() for k, v in _plain(model).items()}
    # R = 1^T (|W2| (|W1| 1 + |b1|) + |b2|): every path is positive, so the ReLU passes everything
    hidden = p["w1"].sum(1) + p["b1"]
    expected_w1 = p["w1"] * p["w2"].sum(0)[:, None]
    expected_w2 = p["w2"] * hidden[None, :]
    assert torch.allclose(scores["0"].double(), expected_w1, rtol=1e-5)
    assert torch.allclose(scores["2"].double(), expected_w2, rtol=1e-5)


def test_scores_of_pruned_weights_are_zero_and_masks_keep_the_highest():
    model = two_layer()
    masks = ones_masks(model, NAMES)
    masks["0"][0] = 0
    apply_masks(model, masks)
    scores = snip_scores(model, NAMES, masks, batches())
    assert bool((scores["0"][0] == 0).all())
    keep = {"0": 5, "2": 6}
    new = masks_from_scores(scores, masks, keep, {"0": "0", "2": "2"})
    for name in NAMES:
        assert int(new[name].sum()) == keep[name]
        assert not bool((new[name] > masks[name]).any())
        kept, dropped = scores[name][new[name].bool()], scores[name][(masks[name] - new[name]).bool()]
        assert kept.min() >= dropped.max()
    inverted = masks_from_scores(scores, masks, keep, {"0": "0", "2": "2"}, invert=True)
    assert scores["2"][inverted["2"].bool()].max() <= scores["2"][~inverted["2"].bool()].min()


def test_global_pool_ranks_layers_together():
    scores = {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([10.0, 20.0])}
    masks = {name: torch.ones_like(s) for name, s in scores.items()}
    new = masks_from_scores(scores, masks, {"g": 2}, {"a": "g", "b": "g"})
    assert new["a"].sum() == 0 and new["b"].sum() == 2


def test_iterative_synflow_reaches_the_count_and_one_step_equals_one_shot():
    model = two_layer(2)
    x, y = batches(1)[0]
    masks = ones_masks(model, NAMES)
    groups = {"0": "g", "2": "g"}
    final = synflow_masks(model, NAMES, masks, {"g": 8}, groups, [(x, y)], iterations=10)
    assert sum(int(m.sum()) for m in final.values()) == 8
    once = synflow_masks(model, NAMES, masks, {"g": 8}, groups, [(x, y)], iterations=1)
    direct = masks_from_scores(synflow_scores(model, NAMES, masks, [(x, y)]), masks, {"g": 8}, groups)
    assert all(torch.equal(once[n], direct[n]) for n in NAMES)


def test_erk_densities_keep_the_count_and_favour_small_layers():
    shapes = {"big": (300, 784), "mid": (100, 300), "out": (10, 100)}
    total = 300 * 784 + 100 * 300 + 10 * 100
    densities = erk_densities(shapes, 0.1 * total)
    kept = sum(densities[n] * torch.tensor(s).prod().item() for n, s in shapes.items())
    assert kept == pytest.approx(0.1 * total)
    assert densities["big"] < densities["mid"] < densities["out"] <= 1.0


def test_data_scorers_refuse_without_batches():
    for name in ("snip", "grasp", "synflow"):
        with pytest.raises(UserError, match="batches"):
            SCORERS.get(name)(two_layer(), NAMES, None, [])
