"""Recipes for one's own training loop: ``load_recipe(path, sections=PARTIAL_SECTIONS)``."""

from __future__ import annotations

import pytest

from compress.recipe import PARTIAL_SECTIONS, Recipe, RecipeError, load_recipe, recipe_from_dict


def _write(tmp_path, text: str):
    path = tmp_path / "loop.yaml"
    path.write_text(text)
    return path


def test_a_file_with_only_prune_lottery_and_seed_loads(tmp_path):
    path = _write(tmp_path, "seed: 3\nprune:\n  rates: {conv: 0.3}\n  keep: ['@stem', '@classifier']\n"
                            "lottery:\n  rounds: 4\n  rewind_to: 5000\n")
    recipe = load_recipe(path, sections=PARTIAL_SECTIONS)
    assert recipe.seed == 3 and recipe.lottery.rewind_to == 5000 and recipe.prune.rates == {"conv": 0.3}
    assert recipe.prune.keep == ("@stem", "@classifier")
    assert recipe.train == Recipe().train  # not read: the schema default
    # the full loader still checks rewind_to against the (default) training budget
    with pytest.raises(RecipeError, match=r"loop.yaml:7: lottery.rewind_to: 5000 is beyond the training budget"):
        load_recipe(path)


def test_other_sections_are_not_validated_at_all(tmp_path):
    path = _write(tmp_path, "model: {name: my_own_net}\ndata: {name: my_data}\n"
                            "train:\n  iterations: 100\n  schedule: {name: onecycle, max_lr: 0.1}\n"
                            "prune:\n  scope: global\nlottery:\n  rewind_to: 1000\n")
    recipe = load_recipe(path, sections=("prune", "lottery"))
    assert recipe.prune.scope == "global" and recipe.lottery.rewind_to == 1000
    assert recipe.model == Recipe().model and recipe.data == Recipe().data
    with pytest.raises(RecipeError, match="train.schedule.name: .onecycle. is not one of"):
        load_recipe(path)


def test_the_chosen_sections_are_still_checked_with_locations(tmp_path):
    path = _write(tmp_path, "prune:\n  scope: everywhere\n")
    with pytest.raises(RecipeError, match=r"loop.yaml:2: prune.scope: 'everywhere' is not one of"):
        load_recipe(path, sections=PARTIAL_SECTIONS)
    typo = _write(tmp_path, "prune:\n  rates: {conv: 0.2}\nloterry:\n  rounds: 2\n")
    with pytest.raises(RecipeError, match=r"loop.yaml:3: loterry: unknown key \(did you mean 'lottery'\?\)"):
        load_recipe(typo, sections=PARTIAL_SECTIONS)
    bad_selector = _write(tmp_path, "prune:\n  keep: ['@stme']\n")
    with pytest.raises(RecipeError, match=r"loop.yaml:2: prune.keep\[0\]: .*did you mean '@stem'"):
        load_recipe(bad_selector, sections=PARTIAL_SECTIONS)


def test_overrides_and_dicts_and_bad_section_names():
    recipe = recipe_from_dict({"prune": {"scope": "global"}, "train": {"schedule": {"name": "onecycle"}}},
                              overrides=["lottery.rounds=2", "prune.keep=[@stem]"], sections=PARTIAL_SECTIONS)
    assert recipe.lottery.rounds == 2 and recipe.prune.keep == ("@stem",)
    with pytest.raises(RecipeError, match="unknown section 'prnue' \\(did you mean 'prune'\\?\\)"):
        recipe_from_dict({}, sections=("prnue",))
    with pytest.raises(RecipeError, match="list of section names"):
        recipe_from_dict({}, sections="prune")


def test_role_selectors_unquoted_in_yaml_get_a_hint(tmp_path):
    path = _write(tmp_path, "prune:\n  keep: [@stem]\n")
    with pytest.raises(RecipeError, match=r"loop.yaml:2: invalid YAML: .*quote selectors that start with @"):
        load_recipe(path, sections=PARTIAL_SECTIONS)
