"""Layer roles: the output layer and the stem are inferred visibly, or the recipe must name them."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch.nn as nn

from compress.errors import UserError
from compress.models import create_model
from compress.pruning import build_plan
from compress.pruning.plan import infer_output, infer_stem, plan_layers
from compress.recipe import PruneConfig

REPO = Path(__file__).resolve().parents[2]


class ProjectionHead(nn.Module):
    """Classifier ``fc`` defined *before* a projection head ``proj``: the last Linear is not the output."""

    def __init__(self, num_classes: int | None = None) -> None:
        super().__init__()
        if num_classes is not None:
            self.num_classes = num_classes
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, num_classes or 10)
        self.proj = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, gate: type[nn.Module]) -> None:
        super().__init__()
        conv = gate is nn.Conv2d
        self.reduce = nn.Conv2d(channels, 4, 1) if conv else nn.Linear(channels, 4)
        self.expand = nn.Conv2d(4, channels, 1) if conv else nn.Linear(4, channels)


class ConvHeadWithSE(nn.Module):
    """3x3 features, an SE block whose gates are 1x1 convs or Linears, and a 1x1-conv classifier."""

    def __init__(self, gate: type[nn.Module]) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3)
        self.features = nn.Sequential(nn.Conv2d(16, 16, 3), SqueezeExcite(16, gate))
        self.head = nn.Conv2d(16, 10, 1)


def _roles(model: nn.Module, config: PruneConfig | None = None) -> dict[str, str]:
    return {layer.name: layer.role for layer in plan_layers(model, config or PruneConfig())}


@pytest.mark.parametrize(("name", "stem", "output"), [
    ("lenet300_100", "1", "5"), ("conv4", "0", "15"), ("resnet20", "conv", "fc"), ("vgg19", "0", "54"),
])
def test_paper_models_infer_first_and_last_layer_without_warning(name, stem, output):
    model = create_model(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        roles = _roles(model)
    assert roles[stem] == "stem" and roles[output] == "output"
    assert sum(role == "output" for role in roles.values()) == 1


def test_projection_head_after_classifier_without_num_classes_asks_for_prune_output():
    with pytest.raises(UserError) as error:
        build_plan(ProjectionHead(), PruneConfig())
    message = str(error.value)
    assert "\n" not in message and "prune.output" in message
    assert "fc (8->10)" in message and "proj.2 (16->4)" in message and "proj.0" not in message


def test_projection_head_after_classifier_chosen_by_num_classes_with_a_warning():
    with pytest.warns(UserWarning, match=r"'fc' chosen by num_classes = 10 among candidates fc \(8->10\), proj.2"):
        roles = _roles(ProjectionHead(num_classes=10))
    assert roles["fc"] == "output" and roles["proj.2"] == "hidden"


def test_prune_output_names_the_classifier_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        targets = {t.name: t for t in build_plan(ProjectionHead(), PruneConfig(output="fc"))}
    assert targets["fc"].kind == "output" and targets["fc"].role == "output"
    assert targets["proj.2"].kind == "linear" and targets["proj.2"].rate == 0.2


@pytest.mark.parametrize("gate", [nn.Conv2d, nn.Linear])
def test_conv_head_wins_over_squeeze_excite_gates(gate):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        roles = _roles(ConvHeadWithSE(gate))
    assert roles == {"stem": "stem", "features.0": "hidden", "features.1.reduce": "hidden",
                     "features.1.expand": "hidden", "head": "output"}
    assert infer_output(ConvHeadWithSE(gate)) == ["head"]


def test_model_ending_in_a_3x3_conv_warns_that_nothing_is_output():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 10, 3))
    with pytest.warns(UserWarning, match="no layer has role 'output'; set prune.output"):
        assert infer_output(model) == []


def test_role_selectors_and_parent_modules_in_keep_and_rates():
    model = ConvHeadWithSE(nn.Conv2d)
    layers = {layer.name: layer for layer in plan_layers(
        model, PruneConfig(rates={"conv": 0.2, "output": 0.1, "features.1": 0.5}, keep=("@stem", "@classifier")))}
    assert layers["stem"].rate == 0 and layers["stem"].reason == "kept (prune.keep[0] @stem)"
    assert layers["head"].rate == 0 and layers["head"].reason == "kept (prune.keep[1] @classifier)"
    assert layers["features.1.reduce"].rate == 0.5 and layers["features.1.expand"].rate == 0.5
    assert layers["features.0"].rate == 0.2 and layers["features.0"].reason == ""
    kept = plan_layers(model, PruneConfig(keep=("features",)))
    assert [layer.name for layer in kept if layer.reason.startswith("kept")] == [
        "features.0", "features.1.reduce", "features.1.expand"]


def test_exclude_is_the_older_name_of_keep_and_reasons_for_rate_zero_and_channel_output():
    model = create_model("lenet300_100")
    layers = {layer.name: layer for layer in plan_layers(
        model, PruneConfig(rates={"linear": 0.0, "output": 0.1}, exclude=("1",), granularity="channel"))}
    assert layers["1"].reason == "kept (prune.exclude[0] 1)"
    assert layers["3"].reason == "rate 0"
    assert layers["5"].reason.startswith("output")
    assert build_plan(model, PruneConfig(keep=("1",))) == build_plan(model, PruneConfig(exclude=("1",)))


def test_prune_output_selector_matching_nothing_is_an_error_with_location():
    with pytest.raises(UserError, match=r"^r\.yaml:9: prune.output: selector 'head' matches no prunable module"):
        build_plan(create_model("lenet300_100"), PruneConfig(output="head"), where=lambda path: "r.yaml:9")


def test_unknown_role_selector_is_an_error():
    with pytest.raises(UserError, match=r"prune.keep\[0\]: selector '@head': unknown role"):
        build_plan(create_model("lenet300_100"), PruneConfig(keep=("@head",)))


def test_timm_stem_and_classifier_from_pretrained_cfg():
    pytest.importorskip("timm")
    for name, stem, output in [("timm/mobilenetv3_small_100", "conv_stem", "classifier"),
                               ("timm/convnext_atto", "stem.0", "head.fc")]:
        model = create_model(name)
        assert infer_stem(model) == [stem] and infer_output(model) == [output]


@pytest.mark.parametrize(("model_name", "stem", "classifier"), [
    ("timm/resnet18", "conv1", "fc"),
    ("timm/mobilenetv3_small_100", "conv_stem", "classifier"),
    ("timm/convnext_atto", "stem.0", "head.fc"),
    ("timm/vit_tiny_patch16_224", "patch_embed.proj", "head"),
])
def test_shipped_timm_recipe_dry_runs_on_every_family(model_name, stem, classifier):
    pytest.importorskip("timm")
    from compress.lottery import dry_run
    from compress.recipe import load_recipe, where

    recipe = load_recipe(REPO / "recipes" / "lth_timm_resnet18_cifar.yaml", [f"model.name={model_name}"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        text = dry_run(recipe, lambda key_path: where(recipe, key_path))
    rows = {line.split()[0]: line for line in text.splitlines() if ".weight " in line}
    assert rows[f"{stem}.weight"].split()[1] == "stem"
    assert rows[f"{stem}.weight"].endswith("kept (prune.keep[0] @stem)")
    assert rows[f"{classifier}.weight"].split()[1] == "output"
    assert rows[f"{classifier}.weight"].endswith("kept (prune.keep[1] @classifier)")
    pruned = [line for line in rows.values() if "not pruned" not in line and "kept" not in line]
    assert len(pruned) == len(rows) - 2 and "nothing is pruned" not in text
