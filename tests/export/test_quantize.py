"""int8 exports: pruned weights stay exact int8 zeros (zero point 0), metadata survives, accuracy side by side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from compress import paths
from compress.errors import UserError
from compress.export import export_onnx, quantize_onnx, read_metadata
from compress.export.onnx.preprocess import Preprocess
from compress.export.onnx.verify import session
from compress.export.quantize.int8 import choose_mode
from compress.io import save_text, save_torch
from compress.lottery import find_ticket
from compress.models import build_model
from compress.pipeline import export_run
from compress.pruning import (
    apply_masks,
    fold_masks,
    folded_state_dict,
    magnitude_masks,
    ones_masks,
    prunable_modules,
)
from compress.pruning import effective_weights as effective
from compress.recipe import DataConfig, ModelConfig, Recipe, dump_recipe, load_recipe, recipe_to_dict
from compress.ticket import save_ticket

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]
PRE = Preprocess("synthetic", tuple(f"c{i}" for i in range(10)), (0.5,), (0.2,), (1, 28, 28))


def _pruned(name: str, rate: float = 0.9) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name), 10, 1, 28)
    names = [n for n, _ in prunable_modules(model)]
    masks = magnitude_masks(effective(model, names), ones_masks(model, names), dict.fromkeys(names, rate),
                            {n: n for n in names})
    apply_masks(model, masks)
    return model.eval()


def _int8_zero_counts(int8: onnx.ModelProto, folded: nn.Module) -> dict[str, tuple[int, int]]:
    """(zeros in the fp32 weight, zeros in its int8 initializer), found independently by shape and zero
    positions; also asserts every fp32 zero is an int8 zero."""
    quantized = {i.name: numpy_helper.to_array(i) for i in int8.graph.initializer if i.name.endswith("_quantized")}
    counts = {}
    for name, module in folded.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        weight = module.weight.detach().numpy()
        candidates = [c for q in quantized.values() for c in ((q, q.T) if q.ndim == 2 else (q,))
                      if c.shape == weight.shape]
        assert len(candidates) >= 1, name
        q = next(c for c in candidates if c.shape == weight.shape and not np.any(c[weight == 0]))
        assert q.dtype == np.int8
        counts[name] = (int((weight == 0).sum()), int((q == 0).sum()))
    return counts


@pytest.mark.parametrize("model_name, mode", [("lenet300_100", "int8-dynamic"), ("conv2", "int8-static")])
def test_pruned_zeros_stay_exact_int8_zeros(model_name, mode, tmp_path):
    model = _pruned(model_name)
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    export_onnx(model, tmp_path / "m.onnx", x[:2], verify_inputs=x, preprocess=PRE)
    assert choose_mode(onnx.load(str(tmp_path / "m.onnx")), "int8")[0] == mode  # the automatic rule
    result = quantize_onnx(tmp_path / "m.onnx", tmp_path / "q.onnx", mode="int8", calibration=x.numpy())
    assert result.mode == mode
    int8 = onnx.load(str(tmp_path / "q.onnx"))
    onnx.checker.check_model(int8, full_check=True)
    counts = _int8_zero_counts(int8, fold_masks(model))
    assert counts and all(int8_zeros >= fp32_zeros > 0 for fp32_zeros, int8_zeros in counts.values())
    zero_points = [numpy_helper.to_array(i) for i in int8.graph.initializer
                   if i.name.endswith("_zero_point") and i.data_type == onnx.TensorProto.INT8]
    assert zero_points and all(not zp.any() for zp in zero_points)  # symmetric int8 weights
    assert read_metadata(int8)["mean"] == [0.5]  # preprocessing survives quantization
    out = session(int8.SerializeToString()).run(None, {"input": x.numpy()})[0]
    assert out.shape == (64, 10) and np.isfinite(out).all()


def test_static_int8_without_calibration_and_unknown_modes_are_refused(tmp_path):
    model = _pruned("conv2")
    export_onnx(model, tmp_path / "m.onnx", torch.randn(2, 1, 28, 28))
    with pytest.raises(UserError, match="needs calibration"):
        quantize_onnx(tmp_path / "m.onnx", mode="int8")
    with pytest.raises(UserError, match="not one of"):
        quantize_onnx(tmp_path / "m.onnx", mode="int4")


@pytest.fixture()
def synthetic_run(tmp_path: Path) -> Path:
    recipe = Recipe(name="int8-test", model=ModelConfig(name="conv2"), data=DataConfig(name="synthetic",
                                                                                       validation_size=100))
    model = _pruned("conv2")
    masks = {name: module.weight_mask for name, module in model.named_modules() if hasattr(module, "weight_mask")}
    folder = tmp_path / "run"
    save_text(dump_recipe(recipe), folder / paths.RECIPE)
    save_ticket(folder / paths.TICKET, model_config=recipe_to_dict(recipe)["model"],
                shape={"num_classes": 10, "in_channels": 1, "image_size": 28}, masks=masks,
                rewind_state=folded_state_dict(model), trained_state=folded_state_dict(model), info={"round": 1})
    save_torch(masks, paths.round_dir(folder, 1) / paths.MASK)
    return folder


def test_export_run_int8_static_for_conv_with_accuracy_side_by_side(synthetic_run):
    result = export_run(synthetic_run, quantize="int8", qat="off")
    int8 = result["int8"]
    assert int8["mode"] == "int8-static" and int8["calibration_examples"] == 256
    assert (synthetic_run / "ticket.int8.onnx").exists()
    for entry in int8["zeros"].values():
        assert entry["zeros_int8"] >= entry["zeros_fp32"] >= entry["pruned"] > 0
    assert 0 <= int8["accuracy_int8"] <= 1 and int8["accuracy_fp32"] == result["accuracy"]["onnx_raw_images"]
    assert int8["qat"] == {"setting": "off", "tolerance": 0.005, "ran": False}
    saved = json.loads((synthetic_run / "export.json").read_text())
    assert saved["int8"]["accuracy_int8"] == int8["accuracy_int8"]


def test_cli_quantize_flag(synthetic_run):
    done = subprocess.run([sys.executable, str(REPO / "tools" / "export_onnx.py"), "--run", str(synthetic_run),
                           "--quantize", "int8-dynamic", "--qat", "off", "--preprocess", "embed"],
                          capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert "int8 (int8-dynamic)" in done.stdout and "accuracy fp32" in done.stdout
    assert read_metadata(synthetic_run / "ticket.int8.onnx")["mode"] == "embedded"
    bad = subprocess.run([sys.executable, str(REPO / "tools" / "export_onnx.py"), "--run", str(synthetic_run),
                          "--quantize", "int4"], capture_output=True, text=True)
    assert bad.returncode == 2


def test_real_fashion_ticket_int8_accuracy_beside_fp32(tmp_path, fashion_mnist_root):
    recipe = load_recipe(REPO / "recipes" / "lth_lenet300_fashion.yaml", overrides=[
        f"data.root={fashion_mnist_root}", "train.iterations=200", "train.eval_every=100",
        "train.checkpoint_every=200", "lottery.rounds=1", "lottery.controls=[]", "export.onnx=false"])
    find_ticket(recipe, tmp_path / "run", progress=False)
    result = export_run(tmp_path / "run", quantize="int8", qat="off")
    int8 = result["int8"]
    assert int8["mode"] == "int8-dynamic" and result["accuracy"]["test_examples"] == 10000
    # post-training int8 of a Linear net: within a point of fp32 on the full test set
    assert abs(int8["accuracy_fp32"] - int8["accuracy_int8"]) < 0.01
    assert all(entry["zeros_int8"] >= entry["pruned"] > 0 for entry in int8["zeros"].values())
