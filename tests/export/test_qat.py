"""Quantization-aware fine-tuning: masks kept, pruned weights exactly zero, deterministic, exported as int8."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn

from compress import paths
from compress.data import load_dataset
from compress.export.quantize.qat import attach_fake_quant, fake_quant_weight, qat_finetune
from compress.io import save_text
from compress.models import build_model
from compress.pipeline import export_run
from compress.pruning import (
    apply_masks,
    effective_weights,
    folded_state_dict,
    get_masks,
    magnitude_masks,
    ones_masks,
    prunable_modules,
)
from compress.recipe import DataConfig, ExportConfig, ModelConfig, Recipe, dump_recipe, recipe_to_dict
from compress.ticket import save_ticket

torch.set_num_threads(1)


def _pruned(name: str, rate: float) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name), 10, 1, 28)
    names = [n for n, _ in prunable_modules(model)]
    masks = magnitude_masks(effective_weights(model, names), ones_masks(model, names), dict.fromkeys(names, rate),
                            {n: n for n in names})
    apply_masks(model, masks)
    return model.eval()


@pytest.fixture()
def synthetic_run(tmp_path):
    """A run dir holding a pruned LeNet-300-100 ticket on the synthetic dataset; 30 QAT iterations."""
    recipe = Recipe(name="qat-test", model=ModelConfig(name="lenet300_100"),
                    data=DataConfig(name="synthetic", validation_size=100), export=ExportConfig(qat_iterations=30))
    model = _pruned("lenet300_100", 0.9)
    folder = tmp_path / "run"
    save_text(dump_recipe(recipe), folder / paths.RECIPE)
    save_ticket(folder / paths.TICKET, model_config=recipe_to_dict(recipe)["model"],
                shape={"num_classes": 10, "in_channels": 1, "image_size": 28}, masks=get_masks(model),
                rewind_state=folded_state_dict(model), trained_state=folded_state_dict(model), info={"round": 1})
    return folder


def test_fake_quant_is_per_channel_symmetric_and_keeps_zeros():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 3, 3, 3, generator=generator) * torch.arange(1, 7).view(6, 1, 1, 1)
    weight[weight.abs() < 0.5] = 0.0
    q = fake_quant_weight(weight)
    scale = weight.reshape(6, -1).abs().amax(1) / 127
    steps = q / scale.view(6, 1, 1, 1)
    assert torch.allclose(steps, steps.round(), atol=1e-3)  # on each channel's own int8 grid
    assert steps.abs().max() <= 127 + 1e-3
    assert torch.equal(q[weight == 0], torch.zeros_like(q[weight == 0]))
    assert (q - weight).abs().max() <= scale.max() / 2 + 1e-6


def _data():
    return load_dataset(DataConfig(name="synthetic", validation_size=100), seed=0)


def test_qat_keeps_masks_and_is_deterministic():
    data = _data()
    runs = []
    for _ in range(2):
        model = _pruned("lenet300_100", rate=0.8)
        masks = {k: v.clone() for k, v in get_masks(model).items()}
        stats = qat_finetune(model, data, iterations=20, lr=1e-3, batch_size=32, seed=0)
        assert stats["iterations"] == 20 and stats["loss_last"] == stats["loss_last"]  # finite, not NaN
        modules = dict(model.named_modules())
        for name, mask in masks.items():
            assert torch.equal(get_masks(model)[name], mask)
            assert not torch.count_nonzero(modules[name].weight[mask == 0])  # what the forward uses
        assert not any(m._forward_pre_hooks and len(m._forward_pre_hooks) > 1 for m in model.modules())
        runs.append(copy.deepcopy(model.state_dict()))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_fake_quant_hooks_change_the_forward_until_removed():
    model = _pruned("lenet300_100", rate=0.5)
    x = torch.randn(4, 1, 28, 28)
    plain = model(x)
    handles = attach_fake_quant(model)
    quantized = model(x)
    for handle in handles:
        handle.remove()
    assert not torch.allclose(plain, quantized) and torch.allclose(plain, model(x))
    assert isinstance(model, nn.Module)


def test_export_run_with_qat_on_writes_the_fine_tuned_int8(synthetic_run):
    result = export_run(synthetic_run, quantize="int8", qat="on")
    int8 = result["int8"]
    qat = int8["qat"]
    assert qat["ran"] and qat["iterations"] == 30 and (synthetic_run / "ticket.qat.onnx").exists()
    assert {"accuracy_int8", "accuracy_drop"} <= set(int8["post_training"])
    assert 0 <= int8["accuracy_int8"] <= 1 and 0 <= qat["accuracy_fp32_after_qat"] <= 1
    for entry in int8["zeros"].values():  # checked on the fine-tuned weights: masks kept through QAT
        assert entry["zeros_int8"] >= entry["zeros_fp32"] >= entry["pruned"] > 0
    saved = json.loads((synthetic_run / "export.json").read_text())
    assert saved["int8"]["qat"]["ran"] is True
