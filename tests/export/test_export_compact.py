"""compact_model: planted dead units are removed, exactly, and nothing else is."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from compress.models import create_model
from compress.pruning import (
    apply_masks,
    count_macs,
    count_params,
    get_masks,
    is_pruned,
    ones_masks,
    prunable_modules,
)
from compress.pruning.compact import compact, compact_model
from compress.pruning.masks import prune_channels

torch.set_num_threads(1)


def conv_params(cin: int, cout: int, k: int = 3, bias: bool = True) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def linear_params(cin: int, cout: int) -> int:
    return cin * cout + cout


def assert_exact(model: nn.Module, small: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected, actual = model(x), small(x)
    scale = max(1.0, float(expected.abs().max()))
    assert float((expected - actual).abs().max()) <= 1e-5 * scale


def plant(model: nn.Module, edits) -> nn.Module:
    """Install all-ones masks, then zero the mask entries ``edits`` names: {module: index expression}."""
    names = [name for name, _ in prunable_modules(model)]
    masks = ones_masks(model, names)
    for name, index in edits:
        masks[name][index] = 0
    return apply_masks(model, masks).eval()


def random_biases(model: nn.Module, scale: float = 0.1) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is not None:
                module.bias.normal_(0, scale)


def test_lenet300_planted_dead_neurons():
    torch.manual_seed(0)
    model = create_model("lenet300_100")  # Flatten, 1: 784-300, ReLU, 3: 300-100, ReLU, 5: 100-10
    random_biases(model)
    with torch.no_grad():
        model[1].bias[0:5] = 0.5   # dead in, ReLU passes the bias: folded into layer 3's bias
        model[1].bias[5:10] = -0.5  # dead in, ReLU kills it: nothing to fold
    plant(model, [("1", (slice(0, 10), slice(None))),   # all incoming weights of units 0-9
                  ("3", (slice(None), slice(20, 30))),  # all outgoing weights of units 20-29
                  ("3", (slice(0, 4), slice(None))),    # layer 3 units 0-3 dead in
                  ("5", (slice(None), slice(50, 54)))])  # layer 3 units 50-53 dead out
    result = compact(model)
    small = result.module
    assert [u["after"] for u in result.units] == [280, 92, 10]
    expected = linear_params(784, 280) + linear_params(280, 92) + linear_params(92, 10)
    assert count_params(small) == expected == count_params(model) - 20 * (784 + 1 + 100) - 8 * (280 + 1 + 10)
    assert result.kept_constant == 0
    assert_exact(model, small, torch.randn(16, 1, 28, 28))
    # a plain model: no prune reparametrisation; the user's model still has its masks
    assert not any(is_pruned(m) for m in small.modules())
    assert all(is_pruned(dict(model.named_modules())[n]) for n in ("1", "3", "5"))
    assert count_macs(small, torch.randn(1, 1, 28, 28)) == 784 * 280 + 280 * 92 + 92 * 10


def test_dead_units_cascade_to_earlier_layers():
    torch.manual_seed(1)
    model = create_model("lenet300_100")
    random_biases(model)
    # layer 3 units 10-99 feed nothing; layer 1 units 0-49 feed only those: they die on the second pass
    plant(model, [("5", (slice(None), slice(10, 100))), ("3", (slice(0, 10), slice(0, 50)))])
    small = compact_model(model)
    assert (small[1].out_features, small[3].out_features) == (250, 10)
    assert_exact(model, small, torch.randn(8, 1, 28, 28))


def test_conv2_planted_dead_channels():
    torch.manual_seed(0)
    model = create_model("conv2")  # 0: conv 3-64 p1, 2: conv 64-64 p1, 4: pool, 5: flatten, 6: fc 16384-256
    random_biases(model)
    with torch.no_grad():
        model[0].bias[0:4] = -0.3  # dead in, ReLU -> 0: removable before the zero-padded conv
        model[0].bias[4] = 0.3     # dead in, constants into a zero-padded conv: not foldable (borders
        model[0].bias[5] = 0.6     # differ), but merged into ONE carrier channel (conv is linear)
        model[2].bias[0:3] = 0.2   # dead in, constant through pool/flatten into the Linear: folded
    plant(model, [("0", (slice(0, 6),)),                  # conv 0 channels 0-5: all incoming weights
                  ("2", (slice(None), slice(6, 8))),      # conv 0 channels 6-7: all outgoing weights
                  ("2", (slice(0, 3),)),                  # conv 2 channels 0-2: all incoming weights
                  ("6", (slice(None), slice(3 * 256, 5 * 256)))])  # conv 2 channels 3-4: outgoing block
    result = compact(model)
    small = result.module
    assert (small[0].out_channels, small[2].in_channels, small[2].out_channels) == (57, 57, 59)
    assert small[6].in_features == 59 * 256
    assert result.kept_constant == 1
    expected = conv_params(3, 57) + conv_params(57, 59) + linear_params(59 * 256, 256) \
        + linear_params(256, 256) + linear_params(256, 10)
    assert count_params(small) == expected
    assert_exact(model, small, torch.randn(4, 3, 32, 32))


def test_lenet5_constant_channel_folds_into_unpadded_conv():
    torch.manual_seed(0)
    model = create_model("lenet5")  # 0: conv 1-6 p2, ReLU, pool, 3: conv 6-16 (no padding)
    random_biases(model)
    with torch.no_grad():
        model[0].bias[0:2] = 0.4  # constant 0.4 after ReLU and max-pool: exact to fold, no padding
    plant(model, [("0", (slice(0, 2),))])
    result = compact(model)
    assert result.module[0].out_channels == 4 and result.kept_constant == 0
    assert count_params(result.module) == count_params(model) - 2 * (25 + 1) - 2 * 16 * 25
    assert_exact(model, result.module, torch.randn(8, 1, 28, 28))


def test_vgg19_planted_channels_through_batchnorm():
    torch.manual_seed(0)
    model = create_model("vgg19")  # conv (no bias) - BN - ReLU, pools, AdaptiveAvgPool, Flatten, Linear
    convs = [i for i, m in enumerate(model) if isinstance(m, nn.Conv2d)]
    first, second, last = convs[0], convs[1], convs[-1]
    with torch.no_grad():
        for module in model.modules():  # trained-looking BatchNorm statistics, so constants are not 0
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        bn_first, bn_last = model[first + 1], model[last + 1]
        bn_first.running_mean[0:2] = 0
        bn_first.bias[0] = -1.0  # BN(0) = beta = -1 -> ReLU 0: removable before the padded conv
        bn_first.bias[1] = 0.5   # BN(0) = 0.5 into a zero-padded conv: kept
        bn_last.running_mean[0:3] = 0
        bn_last.bias[0:3] = 0.5  # constant into AdaptiveAvgPool -> Flatten -> Linear: folded
    plant(model, [(str(first), (slice(0, 2),)), (str(second), (slice(None), slice(10, 12))),
                  (str(last), (slice(0, 3),))])
    result = compact(model)
    small = result.module
    widths = [m.out_channels for m in small if isinstance(m, nn.Conv2d)]
    plan = [m.out_channels for m in model if isinstance(m, nn.Conv2d)]
    assert widths == [61] + plan[1:-1] + [509]
    assert result.kept_constant == 1
    expected, cin = 0, 3
    for width in widths:
        expected += conv_params(cin, width, bias=False) + 2 * width  # + BatchNorm weight and bias
        cin = width
    assert count_params(small) == expected + linear_params(509, 10)
    bns = [m for m in small if isinstance(m, nn.BatchNorm2d)]
    assert [bn.num_features for bn in bns] == widths and bns[0].running_mean.numel() == 61
    assert_exact(model, small, torch.randn(2, 3, 32, 32))


def test_structured_channel_masks_are_removed_whole():
    """Channel tickets (masks zero for whole output channels) lose exactly those channels."""
    torch.manual_seed(0)
    model = create_model("conv4")  # zero biases (Glorot init): a pruned channel outputs exactly 0
    names = [n for n, m in prunable_modules(model) if isinstance(m, nn.Conv2d)]
    masks = {n: prune_channels(dict(model.named_modules())[n].weight.detach(), m, 0.5)
             for n, m in ones_masks(model, names).items()}
    apply_masks(model, masks)
    small = compact_model(model)
    kept = [int(m.flatten(1).any(1).sum()) for m in get_masks(model).values()]
    assert [m.out_channels for m in small if isinstance(m, nn.Conv2d)] == kept == [32, 32, 64, 64]
    assert_exact(model.eval(), small, torch.randn(4, 3, 32, 32))
    assert count_macs(small, torch.randn(1, 3, 32, 32)) < count_macs(model, torch.randn(1, 3, 32, 32)) / 3


def test_structured_vgg19_channels_through_batchnorm():
    """Whole pruned channels of a BN network output BN(0) = beta - mean * gamma / std, usually > 0 after
    ReLU. Those before a zero-padded conv merge into one carrier per layer; before the classifier they fold."""
    torch.manual_seed(0)
    model = create_model("vgg19")
    convs = [i for i, m in enumerate(model) if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    masks = {str(i): prune_channels(model[i].weight.detach(), torch.ones_like(model[i].weight), 0.5)
             for i in convs}
    apply_masks(model, masks)
    expected = []
    for position, i in enumerate(convs):
        alive = masks[str(i)].flatten(1).any(1)
        bn = model[i + 1]
        constant = (bn.bias - bn.running_mean * bn.weight / (bn.running_var + bn.eps).sqrt()).clamp_min(0)
        carrier = position < len(convs) - 1 and bool((constant[~alive] > 0).any())
        expected.append(int(alive.sum()) + int(carrier))
    result = compact(model.eval())
    assert [m.out_channels for m in result.module if isinstance(m, nn.Conv2d)] == expected
    carriers = [e - int(masks[str(i)].flatten(1).any(1).sum()) for e, i in zip(expected, convs, strict=True)]
    assert result.kept_constant == sum(carriers) > 0
    assert_exact(model, result.module, torch.randn(2, 3, 32, 32))


def test_compaction_of_pruned_model_is_exact_and_no_larger():
    torch.manual_seed(0)
    model = create_model("conv4")
    random_biases(model)
    names = [name for name, _ in prunable_modules(model)]
    from compress.pruning import effective_weights, magnitude_masks

    apply_masks(model, magnitude_masks(effective_weights(model, names), ones_masks(model, names),
                                       {n: 0.95 for n in names}, {n: n for n in names}))
    small = compact_model(model.eval())
    assert count_params(small, nonzero=True) <= count_params(model, nonzero=True)
    assert count_params(small) < count_params(model)
    assert_exact(model, small, torch.randn(4, 3, 32, 32))


def test_a_layer_never_becomes_empty():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    random_biases(model, 1.0)
    plant(model, [("0", (slice(None),))])  # every unit of the first layer is dead in
    small = compact_model(model)
    assert small[0].out_features == 1 and small[2].out_features >= 1
    assert_exact(model, small, torch.randn(6, 5))


def test_unsupported_models_are_refused_with_a_reason():
    # a graph that is not an nn.Sequential goes through compress.pruning.compact.graph (tests/export/test_compact_graph.py)
    assert type(compact_model(create_model("resnet20"), torch.randn(2, 3, 32, 32))).__name__ == "CifarResNet"
    with pytest.raises(ValueError, match=r"layer 1 \(GELU\)"):
        compact_model(nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="groups=4"):
        compact_model(nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Flatten(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="needs a Flatten"):
        compact_model(nn.Sequential(nn.Conv2d(1, 4, 1), nn.Linear(4, 2)))
