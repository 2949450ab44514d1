"""Graphs the TorchScript exporter cannot write with a dynamic batch go through the dynamo exporter, at the
opset asked for or refused naming the one that works (timm HaloNet, CSATv2, VOLO, NaFlexViT in the zoo sweep)."""

import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as prune

from compress.errors import UserError
from compress.export import export_onnx
from compress.export.onnx.exporter import DYNAMO_EXPORTER, EXPORTER


def _pruned(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            prune.l1_unstructured(module, "weight", amount=0.5)
    return model.eval()


def _opset(path) -> int:
    proto = onnx.load(str(path))
    return next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))


def test_adaptive_pool_of_a_non_divisible_size_exports_through_dynamo_at_the_asked_opset(tmp_path):
    # TorchScript: "adaptive_avg_pool2d, input size not accessible" under a dynamic batch (CSATv2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(3),
                          nn.Flatten(), nn.Linear(36, 10))
    model(torch.randn(8, 3, 8, 8))  # BatchNorm statistics that are not the identity: its folding would show
    model = _pruned(model)
    x = torch.randn(2, 3, 8, 8)
    report = export_onnx(model, tmp_path / "pool.onnx", x, opset=17)
    assert report.exporter == DYNAMO_EXPORTER
    assert _opset(tmp_path / "pool.onnx") == 17
    assert report.max_abs_diff <= report.tolerance
    # every pruned weight is still an exact zero in the file, in the initializer of its own name (BatchNorm
    # not folded into it: the file holds the weights as trained, as the TorchScript path's does)
    assert {entry["matched_by"] for entry in report.zeros.values()} == {"name"}
    assert {name: entry["zeros"] >= entry["pruned"] > 0 for name, entry in report.zeros.items()} == \
        {"0.weight": True, "5.weight": True}


def test_a_model_the_dynamo_exporter_writes_only_at_a_later_opset_is_refused_naming_it(tmp_path):
    # F.fold is Col2Im, opset 18: asked for 17, the dynamo exporter keeps 18 -- never silently
    torch.manual_seed(0)
    model = _pruned(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Unfold(2, stride=2), nn.Fold((8, 8), 2, stride=2),
                                  nn.Flatten(), nn.Linear(256, 10)))
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(UserError, match=r"opset 17 failed .*set export\.opset: 18") as raised:
        export_onnx(model, tmp_path / "fold.onnx", x, opset=17)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "fold.onnx").exists()
    # the TorchScript error is chained for the report, but without its frames: a caller that exports again
    # from its except block would otherwise hold the failed attempt's graph and weight copies meanwhile
    cause = raised.value.__cause__
    assert cause is not None and cause.__traceback__ is None
    frames = [tb.tb_frame for tb in _walk(raised.value.__traceback__)]
    assert not any("data" in frame.f_locals or "dynamo" in frame.f_locals for frame in frames)
    report = export_onnx(model, tmp_path / "fold.onnx", x, opset=18)
    assert report.exporter == EXPORTER
    assert report.max_abs_diff <= report.tolerance


def _walk(traceback):
    while traceback is not None:
        yield traceback
        traceback = traceback.tb_next
