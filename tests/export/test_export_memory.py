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
    need = 3 * plain_state_bytes(model)  # the masks are not part of it: the folded model has none
    assert need == 3 * 4 * (784 * 300 + 300 + 300 * 10 + 10)
    monkeypatch.setattr(runtime, "available_memory", lambda device: need - 1)
    with pytest.raises(UserError, match=r"export_onnx \(Sequential\) needs at least .* GiB more memory on cpu"):
        export_onnx(model, tmp_path / "m.onnx", example_input=torch.randn(2, 1, 28, 28))
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(runtime, "available_memory", lambda device: need)
    report = export_onnx(model, tmp_path / "m.onnx", example_input=torch.randn(2, 1, 28, 28))
    assert (tmp_path / "m.onnx").exists() and report.max_abs_diff <= report.tolerance
