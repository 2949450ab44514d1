"""An export that cannot fit in memory is refused with one line before anything is built or written."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress import runtime
from compress.errors import UserError
from compress.export import export_onnx
from compress.pruning import apply_masks, plain_state_bytes


def test_an_export_that_does_not_fit_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 10))
    mask = (torch.rand(300, 784, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    apply_masks(model, {"1": mask})
    need = 2 * plain_state_bytes(model)  # the ONNX bytes and onnxruntime's: the folded model shares the model's
    assert need == 2 * 4 * (784 * 300 + 300 + 300 * 10 + 10)
    monkeypatch.setattr(runtime, "available_memory", lambda device: need - 1)
    with pytest.raises(UserError, match=r"export_onnx \(Sequential\) needs at least .* GiB more memory on cpu"):
        export_onnx(model, tmp_path / "m.onnx", example_input=torch.randn(2, 1, 28, 28))
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(runtime, "available_memory", lambda device: need)
    report = export_onnx(model, tmp_path / "m.onnx", example_input=torch.randn(2, 1, 28, 28))
    assert (tmp_path / "m.onnx").exists() and report.max_abs_diff <= report.tolerance


def test_the_verifying_session_skips_the_layout_copy_and_the_report_says_so(tmp_path):
    import onnxruntime as ort

    from compress.export.onnx.exporter import to_onnx
    from compress.export.onnx.verify import session

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()
    data = to_onnx(model, torch.randn(2, 3, 8, 8), 17)
    level = session(data).get_session_options().graph_optimization_level
    assert level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # NCHWc would copy each conv weight twice
    report = export_onnx(model, tmp_path / "m.onnx", example_input=torch.randn(2, 3, 8, 8))
    assert report.to_dict()["ort_optimization"] == "ORT_ENABLE_EXTENDED"


@pytest.mark.parametrize("kept", [0.1, 0.6])  # sparse: the converted file; dense: the file as exported
def test_the_sparse_size_is_the_length_of_the_sparse_file(kept):
    import onnx

    from compress.export.onnx.exporter import to_onnx
    from compress.export.onnx.storage import sizes_and_sparse

    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    with torch.no_grad():
        model[0].weight.mul_((torch.rand(64, 64, generator=torch.Generator().manual_seed(1)) < kept).float())
    data = to_onnx(model, torch.randn(2, 64), 17)
    sizes, sparse = sizes_and_sparse(data, onnx.load_from_string(data))
    assert (sparse is not None) == (kept < 1 / 3)
    assert sizes["sparse"] == len(sparse if sparse is not None else data) and sizes["raw"] == len(data)


def test_a_permanent_ticket_exports_with_its_zeros_checked_as_a_masked_one(tmp_path):
    from compress.pruning import make_permanent

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 10))
    mask = (torch.rand(300, 784, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    apply_masks(model, {"1": mask})
    x = torch.randn(2, 1, 28, 28)
    masked = export_onnx(model, tmp_path / "masked.onnx", example_input=x)
    permanent = export_onnx(make_permanent(model), tmp_path / "permanent.onnx", example_input=x)
    assert set(permanent.zeros) == {"1.weight"} == set(masked.zeros)
    assert permanent.zeros["1.weight"]["pruned"] == masked.zeros["1.weight"]["pruned"] == int((mask == 0).sum())
    assert (tmp_path / "masked.onnx").read_bytes() == (tmp_path / "permanent.onnx").read_bytes()
