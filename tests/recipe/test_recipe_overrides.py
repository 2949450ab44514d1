"""--set overrides: YAML-parsed, schema-typed, checked paths; dict form; extends chains."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from compress.recipe import RecipeError, load_recipe, recipe_from_dict, where


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "base.yaml"
    path.write_text("name: base\ntrain:\n  iterations: 1000\nprune:\n  rates: {conv: 0.1, linear: 0.2}\n")
    return path


def test_set_types_values(base: Path) -> None:
    recipe = load_recipe(base, [
        "train.optimizer.lr=3e-4",
        "train.iterations=200",
        "lottery.controls=[reinit]",
        "data.augment=true",
        "train.schedule.milestones=[50, 150]",
        "name=2024",
        "data.root=null",
    ])
    assert recipe.train.optimizer.lr == 3e-4 and isinstance(recipe.train.optimizer.lr, float)
    assert recipe.train.iterations == 200
    assert recipe.lottery.controls == ("reinit",)
    assert recipe.data.augment is True
    assert recipe.train.schedule.milestones == (50, 150)
    assert recipe.name == "2024"  # kept as text for a string key
    assert recipe.data.root is None


def test_set_float_from_int_text(base: Path) -> None:
    assert load_recipe(base, ["train.optimizer.lr=1"]).train.optimizer.lr == 1.0


def test_set_merges_into_mappings_and_sections(base: Path) -> None:
    recipe = load_recipe(base, ["prune.rates.conv=0.3", "prune.rates.re:features.0=0.5",
                                "train={batch_size: 32}"])
    assert recipe.prune.rates == {"conv": 0.3, "linear": 0.2, "re:features.0": 0.5}
    assert (recipe.train.iterations, recipe.train.batch_size) == (1000, 32)
    assert where(recipe, "prune.rates.re:features.0") == "--set"
    assert where(recipe, "prune.rates.linear") == f"{base}:5"


def test_set_null_restores_default(base: Path) -> None:
    assert load_recipe(base, ["train.iterations=null"]).train.iterations == recipe_from_dict({}).train.iterations
    assert load_recipe(base, ["prune.rates.linear=null"]).prune.rates == {"conv": 0.1}


def test_dict_overrides(base: Path) -> None:
    recipe = load_recipe(base, {"train.iterations": 200, "train.optimizer.lr": "3e-4",
                                "lottery.controls": ["reinit", "random_prune"]})
    assert recipe.train.iterations == 200 and recipe.train.optimizer.lr == 3e-4
    assert recipe.lottery.controls == ("reinit", "random_prune")
    assert where(recipe, "train.iterations") == "overrides"


@pytest.mark.parametrize(("item", "key", "fragment"), [
    ("train.iteratons=5", "train.iteratons", "did you mean 'iterations'?"),
    ("trian.iterations=5", "trian", "did you mean 'train'?"),
    ("train.iterations.x=5", "train.iterations.x", "has no keys"),
    ("extends=other.yaml", "extends", "unknown key"),
    ("lottery.controls[0]=reinit", "lottery.controls[0]", "whole list"),
])
def test_set_unknown_paths(base: Path, item: str, key: str, fragment: str) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(base, [item])
    message = str(info.value)
    assert message.startswith(f"--set: {key}: "), message
    assert fragment in message and "\n" not in message


@pytest.mark.parametrize(("items", "fragment"), [
    (["train.iterations"], "expected 'key.path=value'"),
    (["train.iterations=[1,"], "cannot parse value"),
    (["train.iterations=abc"], "expected int, got string 'abc'"),
    (["train.optimizer.lr=fast"], "expected float"),
    (["lottery.controls=reinit"], "expected a list"),
    (["prune.rates.conv=1.5"], "must be in [0, 1)"),
])
def test_set_bad_values(base: Path, items: list[str], fragment: str) -> None:
    with pytest.raises(RecipeError) as info:
        load_recipe(base, items)
    message = str(info.value)
    assert message.startswith("--set: "), message
    assert fragment in message and "\n" not in message


def test_later_override_wins(base: Path) -> None:
    assert load_recipe(base, ["train.iterations=5", "train.iterations=7"]).train.iterations == 7


def test_recipe_from_dict_accepts_overrides() -> None:
    recipe = recipe_from_dict({"train": {"iterations": 50}}, overrides=["train.batch_size=8"])
    assert (recipe.train.iterations, recipe.train.batch_size) == (50, 8)


def test_extends_chain_and_null_reset(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text(
        "name: a\ntrain:\n  iterations: 900\n  batch_size: 10\nlottery:\n  rewind_to: 5\n"
        "  controls: [reinit, random_prune]\nprune:\n  rates: {conv: 0.1, linear: 0.2, output: 0.1}\n")
    (tmp_path / "sub" / "b.yaml").write_text("extends: ../a.yaml\nname: b\ntrain:\n  batch_size: 20\n")
    (tmp_path / "sub" / "c.yaml").write_text(
        "extends: b.yaml\nlottery:\n  rewind_to: null\n  controls: [reinit]\nprune:\n  rates: {output: null}\n")
    recipe = load_recipe(tmp_path / "sub" / "c.yaml")
    assert recipe.name == "b"
    assert (recipe.train.iterations, recipe.train.batch_size) == (900, 20)
    assert recipe.lottery.rewind_to == 0  # null resets to the schema default
    assert recipe.lottery.controls == ("reinit",)  # lists replace, they do not merge
    assert recipe.prune.rates == {"conv": 0.1, "linear": 0.2}  # null drops a mapping entry
    assert where(recipe, "train.iterations") == f"{tmp_path / 'a.yaml'}:3"
    assert where(recipe, "train.batch_size") == f"{tmp_path / 'sub' / 'b.yaml'}:4"
    assert where(recipe, "lottery.controls[0]") == f"{tmp_path / 'sub' / 'c.yaml'}:4"


def test_extends_errors_point_at_the_right_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: a\ntrain:\n  batch_sise: 10\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    with pytest.raises(RecipeError, match=rf"^{re.escape(str(tmp_path / 'a.yaml'))}:3: train.batch_sise: unknown key"):
        load_recipe(tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text("extends: b.yaml\nlottery:\n  rewind_to: 9999\n")
    with pytest.raises(RecipeError, match=rf"^{re.escape(str(tmp_path / 'a.yaml'))}:3: "):
        load_recipe(tmp_path / "c.yaml")  # the first error in merged order is still a's typo


def test_extends_rewind_checked_after_merge(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("train:\n  iterations: 100\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nlottery:\n  rewind_to: 100\n")
    with pytest.raises(RecipeError, match=rf"^{re.escape(str(tmp_path / 'b.yaml'))}:3: lottery.rewind_to: .*budget"):
        load_recipe(tmp_path / "b.yaml")


def test_extends_cycle(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("name: b\nextends: a.yaml\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(tmp_path / "a.yaml")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'b.yaml'}:2: extends: extends cycle"), message
    assert "a.yaml -> " in message and "\n" not in message
    (tmp_path / "self.yaml").write_text("extends: self.yaml\n")
    with pytest.raises(RecipeError, match=rf"^{re.escape(str(tmp_path / 'self.yaml'))}:1: extends: extends cycle"):
        load_recipe(tmp_path / "self.yaml")


def test_extends_missing_or_bad(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: a\n\nextends: nope.yaml\n")
    with pytest.raises(RecipeError, match=rf"^{re.escape(str(tmp_path / 'a.yaml'))}:3: extends: no such recipe file 'nope.yaml'"):
        load_recipe(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("extends: [a.yaml]\n")
    with pytest.raises(RecipeError, match=rf"^{re.escape(str(tmp_path / 'b.yaml'))}:1: extends: expected the path"):
        load_recipe(tmp_path / "b.yaml")
