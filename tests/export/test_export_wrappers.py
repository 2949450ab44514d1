"""export_onnx through torch.compile / DistributedDataParallel wrappers, and the unwrap helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from test_export_onnx import ort_run, pruned  # the same helpers as the plain-model tests
from torch.nn.parallel import DataParallel, DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from compress.export import export_onnx
from compress.models import create_model
from compress.models.unwrap import strip_wrapper_prefix, unwrap_model
from compress.pruning import (
    fold_masks,
    get_masks,
    is_pruned,
)
from compress.pruning.compact import compact_model

torch.set_num_threads(1)


def pruned_lenet(rate: float = 0.9) -> nn.Module:
    torch.manual_seed(0)
    return pruned(create_model("lenet300_100", num_classes=10), rate)


def check_export(wrapped: nn.Module, plain: nn.Module, tmp_path, compact: bool = False) -> None:
    masks = get_masks(plain)
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = plain(x).numpy()  # the plain model: the compiled one is never run here
    path = tmp_path / "wrapped.onnx"

    report = export_onnx(wrapped, path, x[:2], verify_inputs=x, compact=compact)

    assert report.max_abs_diff <= 1e-4
    np.testing.assert_allclose(ort_run(path, x), expected, atol=1e-4, rtol=0)
    assert set(report.zeros) == {f"{name}.weight" for name in masks}
    for name, mask in masks.items():
        assert report.zeros[f"{name}.weight"]["pruned"] == int((mask == 0).sum())
    # the wrapped model keeps its reparametrisation and masks
    assert all(is_pruned(module) for name, module in plain.named_modules() if name in masks)
    if compact:
        assert report.compact is not None and report.compact.params_after < report.compact.params_before
        np.testing.assert_allclose(ort_run(report.compact.path, x), expected, atol=1e-4, rtol=0)


def test_export_torch_compile(tmp_path):
    model = pruned_lenet()
    compiled = torch.compile(model)
    assert type(compiled).__name__ == "OptimizedModule"
    assert unwrap_model(compiled) is model

    check_export(compiled, model, tmp_path, compact=True)
    # compaction directly on the compiled wrapper, too
    small = compact_model(compiled)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), atol=1e-5, rtol=0)


def test_export_distributed_data_parallel(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = pruned_lenet()
        ddp = DistributedDataParallel(model)
        assert unwrap_model(ddp) is model
        check_export(ddp, model, tmp_path)
    finally:
        dist.destroy_process_group()


def test_export_nested_wrappers(tmp_path):
    model = pruned_lenet(0.8)
    wrapped = torch.compile(DataParallel(model))  # CPU-only DataParallel just holds the module
    assert unwrap_model(wrapped) is model
    check_export(wrapped, model, tmp_path)


def test_unwrap_model_only_known_wrappers():
    model = nn.Sequential(nn.Linear(4, 3))
    assert unwrap_model(model) is model
    assert unwrap_model(DataParallel(torch.compile(model))) is model
    ema = AveragedModel(model)
    assert unwrap_model(ema) is ema.module  # the averaged copy

    class Holder(nn.Module):  # a user's own module with a `module` attribute is not a wrapper
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.Linear(2, 2)

    holder = Holder()
    assert unwrap_model(holder) is holder
    # folded copies of a wrapped model are plain
    pruned = pruned_lenet()
    assert not any(is_pruned(m) for m in fold_masks(unwrap_model(torch.compile(pruned))).modules())


@pytest.mark.parametrize(("name", "plain"), [
    ("fc1.weight", "fc1.weight"),
    ("module.fc1.weight", "fc1.weight"),
    ("_orig_mod.fc1.weight", "fc1.weight"),
    ("module._orig_mod.0.weight_orig", "0.weight_orig"),
    ("_orig_mod.module.features.module.conv", "features.module.conv"),  # only leading prefixes
    ("module", ""),
    ("_orig_mod", ""),
    ("modules.x", "modules.x"),
    ("", ""),
])
def test_strip_wrapper_prefix(name, plain):
    assert strip_wrapper_prefix(name) == plain


def test_wrapped_state_dict_keys_strip_to_plain():
    model = pruned_lenet()
    plain_keys = set(model.state_dict())
    assert {strip_wrapper_prefix(k) for k in torch.compile(DataParallel(model)).state_dict()} == plain_keys
