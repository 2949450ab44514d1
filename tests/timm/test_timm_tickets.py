"""timm models as lottery tickets: global pruning with selectors, rewinding with BatchNorm, ONNX + ORT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compress.export import export_onnx
from compress.lottery import LotterySearch
from compress.models import create_model
from compress.pipeline import run_recipe
from compress.recipe import load_recipe, recipe_from_dict
from compress.training import build_optimizer, build_schedule

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TIMM_FAMILIES = {
    "timm/resnet18": {},
    "timm/mobilenetv3_small_100": {},
    "timm/efficientnet_b0": {},
    "timm/vit_tiny_patch16_224": {"image_size": 32},
}


def _recipe(name: str, **prune) -> object:
    return recipe_from_dict({"name": "timm", "model": {"name": name}, "data": {"name": "cifar10"},
                             "prune": {"scope": "global", "rates": {"conv": 0.8, "linear": 0.8, "output": 0.0},
                                       **prune},
                             "lottery": {"rounds": 1}, "train": {"iterations": 10}})


@pytest.mark.parametrize("name", sorted(TIMM_FAMILIES))
def test_timm_global_80_percent_exports_and_verifies(tmp_path, name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=3, **TIMM_FAMILIES[name]).eval()
    search = LotterySearch(model, _recipe(name))
    search.prune()
    report = search.report()
    assert 0.19 < report["weights_remaining"] < 0.21  # global: 80% of the pooled weights, wherever they are
    x = torch.randn(4, 3, 32, 32)
    result = export_onnx(model, tmp_path / "t.onnx", verify_inputs=x)
    assert result.max_abs_diff <= 1e-4
    assert hasattr(dict(model.named_modules())[search.names[0]], "weight_mask")  # the user's model keeps masks


def test_first_conv_and_classifier_are_excludable():
    model = create_model("timm/resnet18", num_classes=10)
    search = LotterySearch(model, _recipe("timm/resnet18", exclude=["conv1", "fc"]))
    assert "conv1" not in search.names and "fc" not in search.names
    assert all(name.startswith("layer") for name in search.names)


def test_rewind_restores_batchnorm_statistics_from_iteration_k():
    torch.manual_seed(0)
    model = create_model("resnet20")
    recipe = recipe_from_dict({"name": "bn", "model": {"name": "resnet20"}, "data": {"name": "cifar10"},
                               "prune": {"scope": "global", "rates": {"conv": 0.2, "output": 0.0}},
                               "lottery": {"rounds": 1, "rewind_to": 2}, "train": {"iterations": 10}})
    search = LotterySearch(model, recipe)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(1, 5):
        model.train()
        optimizer.zero_grad()
        model(torch.randn(8, 3, 32, 32)).logsumexp(1).mean().backward()
        optimizer.step()
        search.step(step)
        if step == 2:
            at_k = {key: value.clone() for key, value in model.state_dict().items()}
    assert search.prune_and_rewind()
    state = model.state_dict()
    for key in ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked", "blocks.0.bn1.weight", "fc.bias"):
        assert torch.equal(state[key], at_k[key]), key
    assert not torch.equal(at_k["bn.running_mean"], torch.zeros_like(at_k["bn.running_mean"]))


def test_schedule_restarts_at_the_rewind_iteration():
    recipe = load_recipe(RECIPES / "lth_resnet20_rewind.yaml")
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(model.parameters(), recipe.train.optimizer)
    k = recipe.train.schedule.milestones[0] + 1
    build_schedule(optimizer, recipe.train.schedule, recipe.train.iterations, offset=k)
    expected = recipe.train.optimizer.lr * recipe.train.schedule.gamma
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)


def test_timm_resnet18_rewind_recipe_end_to_end_on_cifar(tmp_path, cifar10_tar):
    recipe = load_recipe(RECIPES / "lth_timm_resnet18_cifar.yaml", overrides=[
        f"data.root={cifar10_tar}", "data.validation_size=200", "data.test_subset=200", "train.iterations=12",
        "train.batch_size=32", "train.eval_every=6", "lottery.rewind_to=3", "lottery.rounds=1",
        "train.eval_batch_size=200", "export.onnx=true"])
    summary = run_recipe(recipe, tmp_path / "run", progress=False)
    assert [entry["round"] for entry in summary["rounds"]] == [0, 1]
    assert (tmp_path / "run" / "rewind.pt").exists()
    export = summary["export"]
    assert export["max_abs_diff"] <= 1e-4
    assert (tmp_path / "run" / "ticket.onnx").exists()
