from __future__ import annotations

import math

import pytest
import torch

from compress.data import load_dataset
from compress.io import read_jsonl
from compress.models import create_model
from compress.recipe import recipe_from_dict
from compress.recipe.schema import ScheduleConfig
from compress.training import lr_factor, train


def _recipe(data: dict, **train_overrides):
    train_section = {"iterations": 300, "batch_size": 60, "eval_every": 100, "eval_batch_size": 1000,
                     "optimizer": {"name": "adam", "lr": 1.2e-3}, **train_overrides}
    return recipe_from_dict({"name": "t", "data": data, "train": train_section, "export": {"onnx": False}})


def test_real_data_training_beats_chance_and_records_early_stop(tmp_path, fashion_mnist_root):
    recipe = _recipe({"name": "fashion_mnist", "root": str(fashion_mnist_root)})
    data = load_dataset(recipe.data, recipe.seed, "cpu")
    torch.manual_seed(0)
    model = create_model("lenet300_100")
    result = train(model, data, recipe.train, seed=0, metrics_path=tmp_path / "m.jsonl", progress=False)
    assert result.test_accuracy > 0.75  # chance is 0.10
    assert [p["iteration"] for p in result.history] == [100, 200, 300]
    best = min(result.history, key=lambda p: p["val_loss"])
    assert result.early_stop_iteration == best["iteration"]
    assert result.early_stop_test_accuracy == best["test_accuracy"]
    assert read_jsonl(tmp_path / "m.jsonl") == result.history


def test_same_seed_same_metrics_twice():
    recipe = _recipe({"name": "synthetic", "validation_size": 100}, iterations=60, eval_every=20, batch_size=32)
    data = load_dataset(recipe.data, recipe.seed, "cpu")
    histories = []
    for _ in range(2):
        torch.manual_seed(1)
        model = create_model("lenet300_100")
        histories.append(train(model, data, recipe.train, seed=1, progress=False).history)
    assert histories[0] == histories[1]


def test_sgd_with_momentum_and_step_schedule_trains():
    recipe = _recipe({"name": "synthetic", "validation_size": 100}, iterations=80, eval_every=40, batch_size=32,
                     optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True},
                     schedule={"name": "step", "milestones": [40], "gamma": 0.1, "warmup": 5})
    data = load_dataset(recipe.data, recipe.seed, "cpu")
    result = train(create_model("lenet300_100"), data, recipe.train, seed=0, progress=False)
    assert result.test_accuracy > 0.5


@pytest.mark.parametrize(("name", "step", "expected"), [
    ("constant", 50, 1.0), ("step", 9, 1.0), ("step", 10, 0.1), ("step", 30, 0.01), ("cosine", 100, 0.0),
])
def test_lr_factor(name, step, expected):
    config = ScheduleConfig(name=name, milestones=(10, 20), gamma=0.1)
    assert math.isclose(lr_factor(config, 100, step), expected, abs_tol=1e-9)


def test_warmup_is_linear():
    config = ScheduleConfig(name="constant", warmup=4)
    assert [lr_factor(config, 100, s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_bf16_and_channels_last_are_honoured_on_the_cpu():
    """Neither key is CUDA-only: on the CPU a set key changes what runs, it is never silently ignored."""
    recipe = _recipe({"name": "synthetic", "validation_size": 100, "image_size": 32}, iterations=4, eval_every=4,
                     batch_size=8, bf16=True, channels_last=True)
    data = load_dataset(recipe.data, recipe.seed, "cpu")
    torch.manual_seed(0)
    model = create_model("conv2", num_classes=10, in_channels=1, image_size=32)
    seen: list[tuple[torch.dtype, bool]] = []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda _m, args, out: seen.append(
        (out.dtype, args[0].is_contiguous(memory_format=torch.channels_last))))
    train(model, data, recipe.train, seed=0, progress=False)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert seen and all(dtype == torch.bfloat16 for dtype, _ in seen)  # autocast, in training and evaluation
    assert seen[0][1]  # the training batches arrive channels_last
