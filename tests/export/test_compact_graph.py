"""Exact compaction of any graph: structured masks (channel groups, heads) -> a smaller dense model and ONNX."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import timm
import torch
import torch.nn as nn

from compress.export.onnx.exporter import to_onnx
from compress.models import create_model
from compress.pruning import count_macs, count_params, get_masks
from compress.pruning.compact import compact
from compress.pruning.compact.graph import compact_model
from compress.pruning.groups import find_groups
from compress.pruning.structured import group_widths, prune_channels, random_group_masks

torch.set_num_threads(1)

# name -> (factory, input shape): small inputs keep each case a few seconds on 2 cores
TIMM = {"resnet18": 64, "resnet50d": 64, "mobilenetv3_small_100": 64, "efficientnet_b0": 64, "convnext_atto": 32,
        "regnetx_002": 64, "vit_tiny_patch16_224": 32}
OURS = {"resnet20": (3, 32), "lenet300_100": (1, 28), "lenet5": (1, 28), "conv2": (3, 32), "conv4": (3, 32),
        "conv6": (3, 32), "vgg19": (3, 32)}
CASES = [f"timm/{name}" for name in TIMM] + list(OURS)


def build(case: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if case.startswith("timm/"):
        name = case[5:]
        side = TIMM[name]
        kwargs = {"img_size": side} if name.startswith("vit") else {}
        model = timm.create_model(name, num_classes=10, **kwargs)
        shape = (3, side, side)
    else:
        channels, side = OURS[case]
        model = create_model(case, in_channels=channels)
        shape = (channels, side, side)
    with torch.no_grad():  # random BatchNorm statistics and affine params, so dead channels are not trivially 0
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                if module.affine:
                    module.weight.normal_(1, 0.1)
                    module.bias.normal_(0, 0.1)
    return model.eval(), torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))


def check_compaction(model: nn.Module, x: torch.Tensor) -> nn.Module:
    small = compact_model(model, x)
    with torch.no_grad():
        expected, actual = model(x), small(x)
    scale = max(1.0, float(expected.abs().max()))
    assert float((expected - actual).abs().max()) <= 1e-5 * scale
    assert count_params(small) < count_params(model)
    assert count_macs(small, x) < count_macs(model, x)
    data = to_onnx(small.cpu().float().eval(), x[:2], 17, outputs=1)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert float((torch.from_numpy(onnx_out) - expected).abs().max()) <= 1e-4 * scale
    return small


@pytest.mark.parametrize("case", CASES)
def test_structured_masks_compact_exactly_and_export(case):
    model, x = build(case)
    groups = find_groups(model, x)
    masks = prune_channels(model, x, 0.5, groups=groups)
    assert masks, "something is pruned"
    for group in groups:  # a unit is gone in every member or in none: structured, not scattered
        dead = []
        for member in group.members:
            per_position = masks[member.module].transpose(0, member.dim).flatten(1).eq(0).all(1)
            dead.append(per_position[torch.tensor(member.index)].all(1))
            assert torch.equal(per_position[torch.tensor(member.index)].any(1), dead[-1]), "whole units"
        assert all(torch.equal(d, dead[0]) for d in dead)
    widths = group_widths(groups, masks)
    assert all(widths[g.name] == g.units - round(0.5 * g.units) for g in groups)
    small = check_compaction(model, x)
    if "regnet" in case:  # grouped convs lose whole conv groups, inputs and outputs together
        grouped = [m for m in small.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
        assert grouped and all(m.in_channels // m.groups == 8 for m in grouped)
        assert sum(m.groups for m in grouped) < sum(m.groups for m in model.modules()
                                                     if isinstance(m, nn.Conv2d) and m.groups > 1)
    if "vit" in case:
        heads = [m.num_heads for m in small.modules() if hasattr(m, "num_heads")]
        assert heads and all(h == 1 for h in heads), "3 heads -> round(1.5) = 2 pruned, 1 left"


@pytest.mark.parametrize("case", [f"timm/{name}" for name in TIMM] + ["resnet20"])
def test_random_control_masks_are_structured_with_the_same_widths(case):
    model, x = build(case)
    groups = find_groups(model, x)
    masks = prune_channels(model, x, 0.5, groups=groups)
    random = random_group_masks(groups, masks, torch.Generator().manual_seed(3))
    assert group_widths(groups, random) == group_widths(groups, masks)
    assert any(not torch.equal(random[name], masks[name]) for name in masks), "a different choice of units"
    fresh, _ = build(case)
    from compress.pruning import apply_masks

    apply_masks(fresh, random)
    check_compaction(fresh.eval(), x)


def test_aligned_widths_are_multiples_and_compaction_stays_exact():
    model, x = build("timm/resnet18")
    masks = prune_channels(model, x, 0.3, channel_multiple=16, keep=["@stem", "@classifier"])
    groups = find_groups(model, x)
    for group in groups:
        width = group_widths(groups, masks)[group.name]
        assert width == group.units or (width % 16 == 0 and width >= 16), (group.name, width)
    kept = [g for g in groups if "conv1" in g.modules or "fc" in g.modules]
    assert kept and all(group_widths(groups, masks)[g.name] == g.units for g in kept), "keep respected"
    assert "conv1" not in get_masks(model) and "fc" not in get_masks(model)
    small = check_compaction(model, x)
    widths = {name: m.out_channels for name, m in small.named_modules() if isinstance(m, nn.Conv2d)}
    assert widths["layer1.0.conv1"] == 48 and widths["layer4.1.conv1"] == 352  # 64*0.7=44.8->45->48; 512->358->352


def test_exporter_compacts_a_graph_model(tmp_path):
    from compress.export import export_onnx

    model, x = build("resnet20")
    prune_channels(model, x, 0.5)
    report = export_onnx(model, tmp_path / "t.onnx", verify_inputs=x, compact=True)
    assert report.compact is not None and report.compact.max_abs_diff <= 1e-4
    assert (tmp_path / "t.compact.onnx").exists()
    assert compact(model, x).module is not model
