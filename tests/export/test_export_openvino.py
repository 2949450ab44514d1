"""OpenVINO on a real Fashion-MNIST ticket: export.json's bf16 accuracy from raw images beside fp32, and
auto's precision rule on the run's own labelled test examples."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from compress import paths
from compress.bench import labelled_test_examples, make_backends
from compress.bench.auto import top1_accuracy
from compress.data import load_dataset
from compress.io import save_text
from compress.models import build_model
from compress.pipeline import export_run
from compress.pruning import (
    apply_masks,
    effective_weights,
    folded_state_dict,
    magnitude_masks,
    ones_masks,
    plain_state_dict,
    prunable_modules,
)
from compress.recipe import DataConfig, ModelConfig, Recipe, dump_recipe, recipe_to_dict
from compress.ticket import save_ticket

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fashion_mnist_root) -> Path:
    """A LeNet-300-100 trained 150 steps on Fashion-MNIST, pruned once (20 %), saved as a run's ticket.pt."""
    torch.manual_seed(0)
    recipe = Recipe(name="ov", model=ModelConfig(name="lenet300_100"),
                    data=DataConfig(name="fashion_mnist", root=str(fashion_mnist_root), test_subset=500,
                                    validation_size=0, download=False))
    data = load_dataset(recipe.data, 0, torch.device("cpu"))
    model = build_model(recipe.model, 10, 1, 28)
    start = plain_state_dict(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1.2e-3)
    for x, y in itertools.islice(data.train.batches(60, 0), 150):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    names = [name for name, _ in prunable_modules(model)]
    masks = magnitude_masks(effective_weights(model, names), ones_masks(model, names), dict.fromkeys(names, 0.2),
                            {n: n for n in names})
    apply_masks(model, masks)
    folder = tmp_path_factory.mktemp("ov") / "run"
    save_text(dump_recipe(recipe), folder / paths.RECIPE)
    save_ticket(folder / paths.TICKET, model_config=recipe_to_dict(recipe)["model"],
                shape={"num_classes": 10, "in_channels": 1, "image_size": 28}, masks=masks,
                rewind_state={key: value * masks[key[:-7]] if key[:-7] in masks and key.endswith(".weight") else value
                              for key, value in start.items()},  # folded, as ticket.py's contract says
                trained_state=folded_state_dict(model), info={"round": 1})
    return folder


def test_export_json_has_openvino_f32_and_bf16_accuracy_from_raw_images(run_dir):
    accuracy = export_run(run_dir)["accuracy"]
    assert accuracy["test_examples"] == 500
    # the same file on the same raw pixels: two runtimes at f32 agree up to near-tie argmaxes
    assert abs(accuracy["openvino_f32_raw_images"] - accuracy["onnx_raw_images"]) <= 2 / 500
    assert accuracy["openvino_bf16_ran_as"] in ("f32", "bf16")
    if accuracy["openvino_bf16_ran_as"] == "f32":  # no bf16 kernels on this CPU: the very same computation
        assert accuracy["openvino_bf16_raw_images"] == accuracy["openvino_f32_raw_images"]
    assert accuracy["onnx_raw_images"] > 0.5  # trained: far above chance, so the comparison means something


def test_auto_checks_reduced_precision_on_the_runs_labelled_test_examples(run_dir):
    x, y = labelled_test_examples(run_dir, limit=300)
    assert x.shape == (300, 1, 28, 28) and y.shape == (300,)
    built, unavailable = make_backends(["torch_dense", "openvino_bf16", "ort_int8", "auto"], run_dir,
                                       batch_sizes=[1], budget_s=0.005, accuracy_data=(x, y), threads=1)
    auto = built["auto"]
    assert auto.accuracy["fp32"] == top1_accuracy(built["torch_dense"], x, y) > 0.5
    for name in ("openvino_bf16", "ort_int8"):
        admitted = auto.accuracy[name] >= auto.accuracy["fp32"] - auto.accuracy["tolerance"]
        assert (name in auto.choices[1]["dropped"]) == (not admitted)
