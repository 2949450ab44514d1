"""Every bad input is one RecipeError line naming file:line and the key path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from compress.recipe import RecipeError, load_recipe, recipe_from_dict


def error_for(tmp_path: Path, text: str, name: str = "bad.yaml") -> RecipeError:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert isinstance(info.value, ValueError)
    return info.value


def check(tmp_path: Path, text: str, line: int, key: str, *fragments: str) -> str:
    error = error_for(tmp_path, text)
    message = str(error)
    assert message.startswith(f"{tmp_path / 'bad.yaml'}:{line}: {key}: "), message
    assert (error.location, error.key) == (f"{tmp_path / 'bad.yaml'}:{line}", key)
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize(("text", "line", "key", "hint"), [
    ("train:\n  iteratons: 5\n", 2, "train.iteratons", "did you mean 'iterations'?"),
    ("nmae: x\n", 1, "nmae", "did you mean 'name'?"),
    ("train:\n  optimizer:\n    learning_rate: 0.1\n", 3, "train.optimizer.learning_rate", "unknown key"),
    ("lottery:\n  rounds: 3\n  rewind: 5\n", 3, "lottery.rewind", "did you mean 'rewind_to'?"),
])
def test_unknown_keys(tmp_path: Path, text: str, line: int, key: str, hint: str) -> None:
    check(tmp_path, text, line, key, "unknown key", hint)


def test_free_form_mappings_take_any_key(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    # timm: the factory's arguments are only known when it is called (registered ones are checked)
    path.write_text("model:\n  name: timm/resnet18\n  kwargs: {anything: 1, goes: [a]}\n"
                    "prune:\n  rates: {features.0: 0.3, conv: 0.1}\n")
    recipe = load_recipe(path)
    assert recipe.model.kwargs == {"anything": 1, "goes": ["a"]}
    assert recipe.prune.rates == {"features.0": 0.3, "conv": 0.1}


@pytest.mark.parametrize(("text", "line", "key", "fragment"), [
    ("train:\n  iterations: 1.5\n", 2, "train.iterations", "expected int, got float 1.5"),
    ("train:\n  iterations: '100'\n", 2, "train.iterations", "expected int, got string '100'"),
    ("train:\n  iterations: true\n", 2, "train.iterations", "expected int, got boolean true"),
    ("train:\n  optimizer:\n    lr: fast\n", 3, "train.optimizer.lr", "expected float, got string 'fast'"),
    ("train:\n  optimizer:\n    lr: true\n", 3, "train.optimizer.lr", "expected float, got boolean"),
    ("data:\n  augment: 1\n", 2, "data.augment", "expected bool, got int 1"),
    ("name: [a]\n", 1, "name", "expected str, got a list"),
    ("lottery:\n  controls: reinit\n", 2, "lottery.controls", "expected a list"),
    ("lottery:\n  controls: [reinit, 3]\n", 2, "lottery.controls[1]", "expected str, got int 3"),
    ("train: 5\n", 1, "train", "expected a mapping (a section)"),
    ("prune:\n  rates: [0.1]\n", 2, "prune.rates", "expected a mapping"),
    ("prune:\n  rates: {conv: high}\n", 2, "prune.rates.conv", "expected float"),
    ("train:\n  schedule:\n    milestones: [100, 2.5]\n", 3, "train.schedule.milestones[1]", "expected int"),
    ("model:\n  num_classes: ten\n", 2, "model.num_classes", "expected int"),
    ("train:\n  optimizer:\n    lr: .nan\n", 3, "train.optimizer.lr", "not a finite number"),
])
def test_wrong_types(tmp_path: Path, text: str, line: int, key: str, fragment: str) -> None:
    check(tmp_path, text, line, key, fragment)


def test_int_is_fine_for_float(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("train:\n  optimizer:\n    lr: 1\n    momentum: 0\n")
    optimizer = load_recipe(path).train.optimizer
    assert optimizer.lr == 1.0 and isinstance(optimizer.lr, float) and isinstance(optimizer.momentum, float)


@pytest.mark.parametrize(("text", "line", "key", "fragment"), [
    ("prune:\n  rates: {conv: 1.0}\n", 2, "prune.rates.conv", "must be in [0, 1)"),
    ("prune:\n  rates: {linear: -0.1}\n", 2, "prune.rates.linear", "must be in [0, 1)"),
    ("prune:\n  rates:\n    fc1: 1.5\n", 3, "prune.rates.fc1", "must be in [0, 1)"),
    ("train:\n  iterations: 0\n", 2, "train.iterations", "must be > 0"),
    ("train:\n  batch_size: -4\n", 2, "train.batch_size", "must be > 0"),
    ("train:\n  eval_every: 0\n", 2, "train.eval_every", "must be > 0"),
    ("train:\n  checkpoint_every: 0\n", 2, "train.checkpoint_every", "must be > 0"),
    ("train:\n  optimizer:\n    lr: 0\n", 3, "train.optimizer.lr", "must be > 0"),
    ("train:\n  optimizer:\n    lr: -1e-3\n", 3, "train.optimizer.lr", "must be > 0"),
    ("lottery:\n  rounds: -1\n", 2, "lottery.rounds", "must be >= 0"),
    ("lottery:\n  rewind_to: -1\n", 2, "lottery.rewind_to", "must be >= 0"),
    ("data:\n  validation_size: -1\n", 2, "data.validation_size", "must be >= 0"),
    ("lottery:\n  ticket_tolerance: -0.01\n", 2, "lottery.ticket_tolerance", "must be in [0, 0.1]"),
])
def test_out_of_range(tmp_path: Path, text: str, line: int, key: str, fragment: str) -> None:
    check(tmp_path, text, line, key, fragment)


def test_rewind_beyond_budget(tmp_path: Path) -> None:
    text = "train:\n  iterations: 1000\nlottery:\n  rewind_to: 1000\n"
    check(tmp_path, text, 4, "lottery.rewind_to", "beyond the training budget", "train.iterations = 1000")


def test_rewind_beyond_budget_set_by_override(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("lottery:\n  rewind_to: 500\n")
    with pytest.raises(RecipeError, match=rf"^{re.escape(str(path))}:2: lottery.rewind_to: .*beyond the training budget"):
        load_recipe(path, ["train.iterations=400"])


@pytest.mark.parametrize(("text", "line", "key", "allowed"), [
    ("train:\n  optimizer:\n    name: adamw\n", 3, "train.optimizer.name", "adam, sgd"),
    ("train:\n  schedule:\n    name: linear\n", 3, "train.schedule.name", "constant, step, cosine"),
    ("prune:\n  scope: local\n", 2, "prune.scope", "layerwise, global"),
    ("prune:\n  method: l1\n", 2, "prune.method", "magnitude, random"),
    ("prune:\n  granularity: filter\n", 2, "prune.granularity", "weight, channel"),
    ("lottery:\n  controls:\n    - reinit\n    - shufle\n", 4, "lottery.controls[1]", "reinit, random_prune, shuffle, invert"),
    ("train:\n  device: gpu\n", 2, "train.device", "auto, cpu, cuda"),
])
def test_choices(tmp_path: Path, text: str, line: int, key: str, allowed: str) -> None:
    check(tmp_path, text, line, key, "is not one of", allowed)


def test_choice_suggests_close_value(tmp_path: Path) -> None:
    check(tmp_path, "train:\n  optimizer:\n    name: SGD\n", 3, "train.optimizer.name", "did you mean 'sgd'?")


def test_unknown_model_and_dataset(tmp_path: Path) -> None:
    check(tmp_path, "model:\n  name: lenet300\n", 2, "model.name", "unknown model", "timm/")
    check(tmp_path, "data:\n  name: cifar100\n", 2, "data.name", "unknown dataset", "did you mean 'cifar10'?")
    check(tmp_path, "model:\n  name: timm/\n", 2, "model.name", "timm/ needs a model name")
    path = tmp_path / "timm.yaml"
    path.write_text("model:\n  name: timm/resnet18\n")
    assert load_recipe(path).model.name == "timm/resnet18"


@pytest.mark.parametrize(("text", "line", "key", "fragment"), [
    ("prune:\n  exclude: ['re:fc[']\n", 2, "prune.exclude[0]", "invalid regex"),
    ("prune:\n  exclude:\n    - conv1\n    - 'type:'\n", 4, "prune.exclude[1]", "class name"),
    ("prune:\n  exclude:\n    - 'type:nn.Linear'\n", 3, "prune.exclude[0]", "class name"),
    ("prune:\n  exclude: ['regex:fc.*']\n", 2, "prune.exclude[0]", "unknown prefix 'regex:'"),
    ("prune:\n  exclude: ['']\n", 2, "prune.exclude[0]", "empty selector"),
    ("prune:\n  rates:\n    conv: 0.1\n    're:(a': 0.2\n", 4, "prune.rates.re:(a", "invalid regex"),
])
def test_bad_selectors(tmp_path: Path, text: str, line: int, key: str, fragment: str) -> None:
    check(tmp_path, text, line, key, fragment)


def test_good_selectors(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("prune:\n  exclude: [conv1, 'layer*.0.*', 're:^fc\\d$', 'type:BatchNorm2d']\n"
                    "  rates: {'re:features\\.(0|3)': 0.05, 'type:Linear': 0.3}\n")
    assert len(load_recipe(path).prune.exclude) == 4


@pytest.mark.parametrize(("text", "line", "key", "fragment"), [
    ("train:\n  schedule:\n    name: step\n", 3, "train.schedule", "needs at least one milestone"),
    ("train:\n  schedule:\n    milestones: [10, 10]\n", 3, "train.schedule.milestones[1]", "strictly increasing"),
    ("train:\n  optimizer:\n    nesterov: true\n", 3, "train.optimizer.nesterov", "needs optimizer sgd"),
    ("lottery:\n  controls: [reinit, reinit]\n", 2, "lottery.controls[1]", "duplicate"),
    ("model:\n  kwargs: {num_classes: 3}\n", 2, "model.kwargs.num_classes", "set model.num_classes instead"),
])
def test_cross_field_rules(tmp_path: Path, text: str, line: int, key: str, fragment: str) -> None:
    if key == "train.schedule":
        message = str(error_for(tmp_path, text))
        assert message.startswith(f"{tmp_path / 'bad.yaml'}:2: train.schedule.milestones: "), message
        assert fragment in message
        return
    check(tmp_path, text, line, key, fragment)


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("train:\n  iterations: 5\n   batch_size: 3\n", 3, "invalid YAML"),
    ("train: {iterations: 5\n", 2, "invalid YAML"),
    ("name: a\nname: b\n", 2, "duplicate key"),
    ("- a\n- b\n", 1, "must be a mapping"),
    ("train:\n  on: 3\n", 2, "not a string"),
    ("name: !!python/object:os.system x\n", 1, "invalid YAML"),
    ("a: 1\n---\nb: 2\n", 2, "invalid YAML"),
])
def test_yaml_problems(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    message = str(error_for(tmp_path, text))
    assert message.startswith(f"{tmp_path / 'bad.yaml'}:{line}: "), message
    assert fragment in message


def test_missing_file(tmp_path: Path) -> None:
    (tmp_path / "lth_conv2.yaml").write_text("name: a\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(tmp_path / "lth_conv3.yaml")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'lth_conv3.yaml'}: no such recipe file"), message
    assert "lth_conv2.yaml" in message and "\n" not in message


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    with pytest.raises(RecipeError, match=r"empty recipe"):  # not a silent run of all the defaults
        load_recipe(path)


def test_dict_source_errors() -> None:
    with pytest.raises(RecipeError, match=r"^<dict>: train.iteratons: unknown key \(did you mean 'iterations'\?\)$"):
        recipe_from_dict({"train": {"iteratons": 3}})
    with pytest.raises(RecipeError, match=r"^mine: extends: unknown key.*only files"):
        recipe_from_dict({"extends": "x.yaml"}, source="mine")


def test_null_means_default(tmp_path: Path) -> None:
    path = tmp_path / "null.yaml"
    path.write_text("train:\n  iterations: null\n  optimizer: ~\nprune:\n  rates: {conv: 0.2, linear: null}\n")
    recipe = load_recipe(path)
    assert recipe.train == recipe_from_dict({}).train
    assert recipe.prune.rates == {"conv": 0.2}
