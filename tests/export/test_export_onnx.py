"""export_onnx on every shipped model at ~90% sparsity, plus the checks failing loudly."""

from __future__ import annotations

import inspect

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from compress.export import export_onnx, save_sparse_onnx
from compress.export.onnx.verify import check_zero_counts
from compress.models import MODELS, create_model, list_models
from compress.pruning import (
    apply_masks,
    effective_weights,
    get_masks,
    is_pruned,
    magnitude_masks,
    ones_masks,
    prunable_modules,
)

torch.set_num_threads(1)  # the machine is shared; these tests are bound by serialisation, not math

TIMM_CNN = "timm/resnet18"


def input_shape(name: str) -> tuple[int, int, int]:
    """One example's shape from the factory's defaults, so newly registered models are covered too."""
    if name == TIMM_CNN:
        return (3, 32, 32)
    params = inspect.signature(MODELS.get(name)).parameters
    side = params["image_size"].default if "image_size" in params else 32
    return (params["in_channels"].default, side, side)


def pruned(model: nn.Module, rate: float = 0.9) -> nn.Module:
    """Layer-wise magnitude pruning of every Conv2d/Linear weight through compress.pruning."""
    names = [name for name, _ in prunable_modules(model)]
    masks = magnitude_masks(effective_weights(model, names), ones_masks(model, names),
                            {n: rate for n in names}, {n: n for n in names})
    return apply_masks(model, masks).eval()


def ort_run(path, x: torch.Tensor) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def initializers(path) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("name", [*list_models(), TIMM_CNN])
def test_export_pruned_model(name, tmp_path):
    torch.manual_seed(0)
    shape = input_shape(name)
    model = pruned(create_model(name, num_classes=10, in_channels=shape[0]))
    masks = get_masks(model)
    x = torch.randn(4, *shape)
    sequential = isinstance(model, nn.Sequential)
    path = tmp_path / "model.onnx"

    report = export_onnx(model, path, x[:2], verify_inputs=x, compact=sequential)

    assert path.exists() and report.path == str(path)
    assert report.max_abs_diff <= 1e-4 and report.opset == 17
    # the user's model keeps its prune reparametrisation and masks
    assert all(is_pruned(module) for name_, module in model.named_modules() if name_ in masks)
    assert all(hasattr(dict(model.named_modules())[n], "weight_orig") for n in masks)
    assert all(torch.equal(get_masks(model)[n], masks[n]) for n in masks)
    # zero counts, checked here independently of the exporter's own mapping: initializer by name
    arrays = initializers(path)
    with torch.no_grad():
        for module_name, mask in masks.items():
            key = f"{module_name}.weight"
            folded = (dict(model.named_modules())[module_name].weight_orig * mask).numpy()
            zeros = int((arrays[key] == 0).sum())
            assert zeros == int((folded == 0).sum()) >= int((mask == 0).sum())
            assert report.zeros[key]["pruned"] == int((mask == 0).sum())
            assert report.zeros[key]["zeros"] == zeros
    assert abs(sum(int((m == 0).sum()) for m in masks.values()) / sum(m.numel() for m in masks.values()) - 0.9) < 0.01
    sizes = report.sizes
    assert sizes["raw"] == path.stat().st_size
    assert max(sizes["gzip"], sizes["sparse"], sizes["bitmask"]) < sizes["raw"]
    # another batch size than the verification: the batch dimension is dynamic
    with torch.no_grad():
        expected = model(x[:3]).numpy()
    assert np.abs(ort_run(path, x[:3]) - expected).max() <= 1e-4

    if not sequential:
        assert report.compact is None
        return
    small = report.compact
    compact_file = tmp_path / "model.compact.onnx"
    assert small.path == str(compact_file) and compact_file.exists()
    assert small.max_abs_diff <= 1e-4 and small.torch_max_abs_diff <= 1e-5 * max(1.0, float(np.abs(expected).max()))
    assert np.abs(ort_run(compact_file, x[:3]) - expected).max() <= 1e-4
    assert small.params_after <= small.params_before == report.params
    assert small.macs_after <= small.macs_before == report.macs
    assert small.size_after == compact_file.stat().st_size
    # the compacted file holds plain dense weights: no masks, no sparse initializers
    assert not any("mask" in key or "orig" in key for key in initializers(compact_file))


def test_ticket_like_vit_weights_are_found_transposed(tmp_path):
    """A Linear on tokens exports as MatMul with a pre-transposed, renamed weight: still mapped and checked."""
    torch.manual_seed(0)
    model = pruned(nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)))
    report = export_onnx(model, tmp_path / "tokens.onnx", torch.randn(2, 5, 8))
    assert set(report.zeros) == {"0.weight", "2.weight"}
    assert {entry["matched_by"] for entry in report.zeros.values()} <= {"name", "transposed", "values"}
    assert all(entry["zeros"] >= entry["pruned"] > 0 for entry in report.zeros.values())


def test_sparse_initializer_file_loads_in_onnxruntime(tmp_path):
    torch.manual_seed(0)
    model = pruned(create_model("lenet300_100"))
    dense = tmp_path / "dense.onnx"
    report = export_onnx(model, dense, torch.randn(2, 1, 28, 28))
    result = save_sparse_onnx(dense, tmp_path / "sparse.onnx")
    sparse_proto = onnx.load(str(tmp_path / "sparse.onnx"))
    onnx.checker.check_model(sparse_proto)
    sparse_names = {tensor.values.name for tensor in sparse_proto.graph.sparse_initializer}
    assert len(sparse_names) == result["sparse_tensors"]
    assert {"1.weight", "3.weight", "5.weight"} <= sparse_names  # (the all-zero Glorot biases too)
    assert result["max_abs_diff"] <= 1e-6
    assert result["sparse"] == (tmp_path / "sparse.onnx").stat().st_size < result["raw"]
    assert abs(result["sparse"] - report.sizes["sparse"]) < 100  # the report measured the same thing
    x = torch.randn(5, 1, 28, 28)
    assert np.array_equal(ort_run(tmp_path / "sparse.onnx", x), ort_run(dense, x))


def test_unexportable_module_is_named(tmp_path):
    class Bessel(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.special.bessel_j0(x)

    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), Bessel()), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"cannot export module '1\.1' \(Bessel\)"):
        export_onnx(model, tmp_path / "bad.onnx", torch.randn(2, 4))
    assert not (tmp_path / "bad.onnx").exists()


def test_zero_count_check_names_the_parameter(tmp_path):
    torch.manual_seed(0)
    model = pruned(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), rate=0.5)
    path = tmp_path / "small.onnx"
    export_onnx(model, path, torch.randn(2, 6))
    proto = onnx.load(str(path))
    folded = {f"{n}.weight": dict(model.named_modules())[n].weight.detach() for n in get_masks(model)}
    pruned_counts = {k: int((v == 0).sum()) for k, v in folded.items()}
    check_zero_counts(proto, folded, pruned_counts, "ok")  # passes as exported
    for init in proto.graph.initializer:
        if init.name == "0.weight":  # revive one pruned weight in the file
            array = numpy_helper.to_array(init).copy()
            array[array == 0] = 1.0
            init.CopyFrom(numpy_helper.from_array(array, init.name))
    with pytest.raises(ValueError, match="'0.weight'"):
        check_zero_counts(proto, folded, pruned_counts, "tampered")
    with pytest.raises(ValueError, match="'9.weight'.*not among the ONNX initializers"):
        check_zero_counts(proto, {"9.weight": torch.ones(7, 7)}, {}, "missing")


def test_bad_arguments(tmp_path):
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ValueError, match="example_input or verify_inputs"):
        export_onnx(model, tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "x.onnx", torch.randn(2, 4), opset=99)
    with pytest.raises(ValueError, match="cannot run on inputs"):
        export_onnx(model, tmp_path / "x.onnx", torch.randn(2, 5))
    assert not list(tmp_path.iterdir())


def test_sparsify_copies_all_but_the_moved_initializers_and_never_copies_for_nothing(tmp_path):
    from compress.export.onnx.storage import sparsify

    torch.manual_seed(0)
    export_onnx(pruned(create_model("lenet300_100")), tmp_path / "m.onnx", torch.randn(2, 1, 28, 28))
    proto = onnx.load(str(tmp_path / "m.onnx"))
    proto.metadata_props.add(key="k", value="v")
    sparse, converted = sparsify(proto)
    moved = {t.values.name for t in sparse.graph.sparse_initializer}
    assert converted == len(moved) > 0
    # everything but the moved initializers equal: what a full CopyFrom, then a move, would give
    dense_rest, sparse_rest = onnx.ModelProto(), onnx.ModelProto()
    for source, target in ((proto, dense_rest), (sparse, sparse_rest)):
        target.CopyFrom(source)
        kept = [init for init in target.graph.initializer if init.name not in moved]
        del target.graph.initializer[:], target.graph.sparse_initializer[:]
        target.graph.initializer.extend(kept)
    assert dense_rest.SerializeToString() == sparse_rest.SerializeToString()
    unpruned = onnx.load(str(tmp_path / "m.onnx"))
    for init in unpruned.graph.initializer:  # dense weights: nothing is smaller sparse, nothing is copied
        init.CopyFrom(onnx.numpy_helper.from_array(np.ones(onnx.numpy_helper.to_array(init).shape, np.float32),
                                                   init.name))
    same, none = sparsify(unpruned)
    assert same is unpruned and none == 0
