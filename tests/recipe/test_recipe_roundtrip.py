"""Shipped recipes load; load -> dump -> load is the identity; hashes and where() behave."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from compress.recipe import (
    Recipe,
    dump_recipe,
    load_recipe,
    recipe_from_dict,
    recipe_hash,
    recipe_to_dict,
    where,
)

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


def test_recipes_are_shipped() -> None:
    names = {p.name for p in RECIPES}
    assert {"lth_lenet300.yaml", "lth_lenet300_fashion.yaml", "lth_conv2.yaml", "lth_conv4.yaml",
            "lth_conv6.yaml", "lth_vgg19_rewind.yaml", "lth_resnet20_rewind.yaml",
            "lth_timm_resnet18_cifar.yaml", "timm_imagefolder_template.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_loads_and_round_trips(path: Path, tmp_path: Path) -> None:
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert path.read_text().startswith("#"), "every shipped recipe starts with a header comment"
    text = dump_recipe(recipe)
    assert recipe_from_dict(yaml.safe_load(text)) == recipe
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(text)
    again = load_recipe(dumped)
    assert again == recipe
    assert dump_recipe(again) == text
    assert recipe_hash(again) == recipe_hash(recipe)


def test_lenet300_matches_the_paper() -> None:
    recipe = load_recipe(Path(RECIPES[0]).parent / "lth_lenet300.yaml")
    assert (recipe.model.name, recipe.data.name) == ("lenet300_100", "mnist")
    assert recipe.train.optimizer.lr == pytest.approx(1.2e-3)
    assert (recipe.train.batch_size, recipe.train.iterations, recipe.lottery.rounds) == (60, 50000, 15)
    assert recipe.prune.rates == {"linear": 0.2, "output": 0.1}
    assert recipe.lottery.controls == ("reinit", "random_prune")


def test_fashion_extends_lenet300() -> None:
    folder = Path(RECIPES[0]).parent
    base, child = load_recipe(folder / "lth_lenet300.yaml"), load_recipe(folder / "lth_lenet300_fashion.yaml")
    assert child.data.name == "fashion_mnist" and child.lottery.controls == base.lottery.controls
    assert child.train.optimizer == base.train.optimizer  # inherited
    assert where(child, "train.optimizer.lr").startswith(str(folder / "lth_lenet300.yaml") + ":")
    assert where(child, "train.iterations").startswith(str(folder / "lth_lenet300_fashion.yaml") + ":")  # overridden


def test_dump_keeps_schema_order_and_plain_types() -> None:
    recipe = recipe_from_dict({"lottery": {"controls": ["reinit"]}, "name": "x"})
    data = recipe_to_dict(recipe)
    assert list(data) == [f.name for f in dataclasses.fields(Recipe)]
    assert data["lottery"]["controls"] == ["reinit"]
    assert isinstance(data["train"]["schedule"]["milestones"], list)
    assert list(yaml.safe_load(dump_recipe(recipe))) == list(data)


def test_dump_round_trips_awkward_values(tmp_path: Path) -> None:
    recipe = recipe_from_dict({
        "name": "1e-3",  # a string YAML 1.2 would read as a number
        "model": {"name": "timm/resnet18", "kwargs": {"depth": 3, "widths": [8, 16], "act": "yes", "opt": None, "nested": {"a": 1.5}}},
        "train": {"optimizer": {"lr": 3e-6}},
        "prune": {"rates": {"conv": 0.0, "re:features\\.0": 0.5, "layer1.*": 0.25}, "exclude": ["type:Linear"]},
    })
    path = tmp_path / "r.yaml"
    path.write_text(dump_recipe(recipe))
    assert load_recipe(path) == recipe
    assert load_recipe(path).name == "1e-3"


def test_hash_is_short_stable_and_sensitive() -> None:
    a = recipe_from_dict({"prune": {"rates": {"conv": 0.1, "linear": 0.2}}})
    b = recipe_from_dict({"prune": {"rates": {"linear": 0.2, "conv": 0.1}}})
    c = recipe_from_dict({"prune": {"rates": {"linear": 0.2, "conv": 0.15}}})
    assert len(recipe_hash(a)) == 8 and int(recipe_hash(a), 16) >= 0
    assert recipe_hash(a) == recipe_hash(b) != recipe_hash(c)
    assert recipe_hash(recipe_from_dict({"train": {"optimizer": {"lr": 1}}})) == \
        recipe_hash(recipe_from_dict({"train": {"optimizer": {"lr": 1.0}}}))


def test_where_points_at_keys_items_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("name: w\n"
                    "prune:\n"
                    "  exclude:\n"
                    "    - fc1\n"
                    "    - 're:fc\\d'\n"
                    "  rates: {linear: 0.2, re:a.b: 0.3}\n"
                    "lottery:\n"
                    "  controls: [reinit]\n")
    recipe = load_recipe(path, ["train.iterations=200"])
    assert where(recipe, "name") == f"{path}:1"
    assert where(recipe, "prune.exclude") == f"{path}:3"
    assert where(recipe, "prune.exclude[0]") == f"{path}:4"
    assert where(recipe, "prune.exclude[1]") == f"{path}:5"
    assert where(recipe, "prune.rates.re:a.b") == f"{path}:6"
    assert where(recipe, "lottery.controls[0]") == f"{path}:8"
    assert where(recipe, "train.iterations") == "--set"
    assert where(recipe, "train.batch_size") == ""  # a default: written nowhere
    assert where(recipe, "prune.method") == ""  # not the 'prune:' line of its section
    assert where(recipe, "no.such.key") == ""
    assert where(recipe_from_dict({}), "name") == ""


def test_locations_do_not_affect_equality() -> None:
    recipe = load_recipe(Path(RECIPES[0]).parent / "lth_conv2.yaml")
    same = dataclasses.replace(recipe)
    assert same == recipe and where(same, "name") == ""
    assert repr(recipe) == repr(same)
