"""The data-reading scorers on models users bring: keyword (Hugging Face) batches, outputs that carry logits,
sequence outputs, ops without second derivatives, outputs past float32's range, uninformative layers."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from compress.errors import UserError
from compress.pruning.at_init import init_masks
from compress.pruning.score_inputs import (
    _exact_hvp,
    _finite_difference_hvp,
    hessian_vector_product,
    scorer_batch,
)
from compress.pruning.scorers import grasp_scores, snip_scores, synflow_scores

NAMES = ["0", "2"]


def mlp(activation: nn.Module | None = None, seed: int = 0, dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), activation or nn.Tanh(), nn.Linear(8, 3), nn.Dropout(dropout))


def batches(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 5, generator=gen), torch.randint(0, 3, (6,), generator=gen)) for _ in range(n)]


class KeywordModel(nn.Module):
    """A Hugging Face-style model: forward(**batch), a dict out with the logits in it."""

    def __init__(self, net: nn.Module, output: str = "dict") -> None:
        super().__init__()
        self.net, self.output = net, output

    def forward(self, pixel_values=None, labels=None):
        logits = self.net(pixel_values)
        return {"logits": logits, "hidden": logits * 2} if self.output == "dict" else (logits, logits * 2)


def test_keyword_batches_and_logit_carrying_outputs_score_like_the_plain_net():
    plain = snip_scores(mlp(), NAMES, None, batches())
    keyword = [{"pixel_values": x, "labels": y} for x, y in batches()]
    for output in ("dict", "tuple"):
        wrapped = KeywordModel(mlp(), output)
        scores = snip_scores(wrapped, [f"net.{n}" for n in NAMES], None, keyword)
        for name in NAMES:
            assert torch.equal(scores[f"net.{name}"], plain[name])


def test_sequence_outputs_are_scored_per_position_without_ignored_labels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(11, 6), nn.Linear(6, 7))
    ids = torch.randint(0, 11, (3, 4))
    labels = torch.randint(0, 7, (3, 4))
    labels[0, :2] = -100
    scores = snip_scores(model, ["1"], None, [(ids, labels)])
    weight = model[1].weight.detach().clone().requires_grad_(True)
    logits = model[0](ids).detach() @ weight.T + model[1].bias.detach()
    keep = labels != -100
    (grad,) = torch.autograd.grad(F.cross_entropy(logits[keep], labels[keep]), [weight])
    assert torch.allclose(scores["1"], (grad * weight).abs(), atol=1e-7)


def test_synflow_refuses_token_inputs_in_one_line():
    model = nn.Sequential(nn.Embedding(11, 6), nn.Linear(6, 7))
    with pytest.raises(UserError, match="synflow.*not float.*int64"):
        synflow_scores(model, ["1"], None, [(torch.randint(0, 11, (2, 4)), None)])


def test_batches_that_are_not_batches_are_one_line():
    with pytest.raises(UserError, match="each batch must be"):
        scorer_batch(torch.zeros(3))
    with pytest.raises(UserError, match="must be tensors"):
        scorer_batch(([1, 2], torch.zeros(2)))
    with pytest.raises(UserError, match="give each batch labels"):
        snip_scores(mlp(), NAMES, None, [{"x": torch.zeros(2, 5)}])


def test_finite_difference_hessian_product_matches_the_exact_one():
    model = mlp(seed=2)
    tensors = [model[0].weight, model[2].weight]
    found = [scorer_batch(b) for b in batches()]
    vector = [torch.randn_like(t) for t in tensors]
    exact = _exact_hvp(model, tensors, found, vector, 1.0)
    before = [t.detach().clone() for t in tensors]
    approx = _finite_difference_hvp(model, tensors, found, vector, 1.0)
    assert all(torch.equal(t, b) for t, b in zip(tensors, before, strict=True))  # restored exactly
    for e, a in zip(exact, approx, strict=True):
        assert torch.allclose(a, e, rtol=2e-2, atol=2e-3 * float(e.abs().max()))


def test_finite_difference_passes_draw_the_same_dropout():
    model = mlp(seed=4, dropout=0.5).train()
    tensors = [model[0].weight, model[2].weight]
    found = [scorer_batch(b) for b in batches()]
    vector = [torch.zeros_like(t) for t in tensors]
    vector[0][0, 0] = 1.0
    torch.manual_seed(0)
    first = _finite_difference_hvp(model, tensors, found, vector, 1.0)
    # were the two passes' dropout masks different, the difference would be O(1/h) noise, not a curvature
    assert max(float(t.abs().max()) for t in first) < 10.0


class ClampHardsigmoid(nn.Module):
    """hardsigmoid written with clamp, which has second derivatives (aten::hardsigmoid_backward has none)."""

    def forward(self, x):
        return torch.clamp(x / 6 + 0.5, 0, 1)


def test_grasp_without_second_derivatives_warns_and_approximates_the_exact_scores():
    exact = grasp_scores(mlp(ClampHardsigmoid(), seed=6), NAMES, None, batches())
    with pytest.warns(UserWarning, match="no second derivative of aten::hardsigmoid_backward"):
        approx = grasp_scores(mlp(nn.Hardsigmoid(), seed=6), NAMES, None, batches())
    for name in NAMES:
        scale = float(exact[name].abs().max())
        assert torch.allclose(approx[name], exact[name], atol=3e-2 * scale)


def test_other_runtime_errors_are_not_taken_for_missing_derivatives():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("shape mismatch somewhere")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        hessian_vector_product(Broken(), [torch.zeros(1, requires_grad=True)], [(torch.zeros(1), torch.zeros(1))],
                               [torch.zeros(1)])


def test_synflow_past_float32_range_stays_finite_and_ranks():
    torch.manual_seed(0)
    layers = []
    for _ in range(24):
        layers += [nn.Linear(32, 32), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(32, 4))
    with torch.no_grad():
        for module in model:
            if isinstance(module, nn.Linear):
                module.weight.mul_(20)  # R ~ (32 * 20 * 0.1)^25: far past float32's 3e38
    names = [str(i) for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    scores = synflow_scores(model, names, None, [(torch.randn(2, 32), None)])
    assert max(float(s.max()) for s in scores.values()) > 1e39
    assert all(torch.isfinite(s).all() for s in scores.values())
    masks = {n: torch.ones_like(s, dtype=torch.float32) for n, s in scores.items()}
    kept = init_masks(model, names, masks, "synflow", {n: 0.5 for n in names}, {n: n for n in names},
                      batches=[(torch.randn(2, 32), None)])
    assert all(int(kept[n].sum()) == masks[n].numel() // 2 for n in names)


def test_layers_whose_scores_are_all_equal_are_named_in_a_warning():
    model = mlp(nn.ReLU(), seed=1)
    with torch.no_grad():
        model[2].weight.zero_()  # a zero-initialised output layer: SNIP's gradient into layer 0 is 0
    masks = {n: torch.ones_like(getattr(model, n).weight) for n in NAMES}
    with pytest.warns(UserWarning, match=r"2 layer\(s\) \(.0., .2.\).*index order"):
        init_masks(model, NAMES, masks, "snip", {"0": 0.5, "2": 0.5}, {"0": "0", "2": "2"},
                   batches=batches())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        init_masks(mlp(), NAMES, masks, "snip", {"0": 0.5, "2": 0.5}, {"0": "0", "2": "2"}, batches=batches())


def test_non_finite_scores_are_refused_in_one_line():
    class NaNOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            return self.net(x) * float("nan")

    names = ["net.0", "net.2"]
    masks = {n: torch.ones(shape) for n, shape in (("net.0", (8, 5)), ("net.2", (3, 8)))}
    with pytest.raises(UserError, match="non-finite scores in 2 layer"):
        init_masks(NaNOut(), names, masks, "snip", {n: 0.5 for n in names}, {n: n for n in names},
                   batches=batches())


@pytest.mark.parametrize("seed", range(6))
def test_keeping_the_highest_selects_what_a_stable_descending_sort_would(seed):
    from compress.pruning.scorers import _keep_highest

    gen = torch.Generator().manual_seed(seed)
    n = 500
    scores = torch.randint(-5, 6, (n,), generator=gen).double()  # many ties, signed, +0.0 and -0.0
    scores[::7] = -0.0
    mask = (torch.rand(n, generator=gen) < 0.7).float()
    for keep in (0, 1, 37, int(mask.sum()) - 1, int(mask.sum())):
        alive = mask.bool().nonzero().squeeze(1)
        order = torch.argsort(scores[alive], descending=True, stable=True)
        expected = torch.zeros_like(mask)
        expected[alive[order[:keep]]] = 1
        assert torch.equal(_keep_highest(scores, mask, keep), expected)
