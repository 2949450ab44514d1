"""Hardening: YAML 1.1 integer traps, unsafe or hostile recipe files, bounds that silently gave
wrong results, model.kwargs the factory does not take, and a run-dir hash of results-relevant
non-default fields only. Every refusal is one RecipeError / UserError line."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

from compress.errors import UserError
from compress.models import build_model
from compress.models.registry import MODELS
from compress.recipe import (
    ModelConfig,
    RecipeError,
    dump_recipe,
    load_recipe,
    recipe_from_dict,
    recipe_hash,
    recipe_to_dict,
    result_fields,
    results_hash,
)
from compress.recipe.checks import OPSET_RANGE


def refused(path: Path | str, overrides: list[str] | None = None) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message, message
    return message


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# 1. YAML 1.1 integer traps -------------------------------------------------------------------

@pytest.mark.parametrize(("text", "line", "key", "advice"), [
    ("name: a\nseed: 010\n", 2, "seed", "write 10"),
    ("train:\n  iterations: 0x10\n", 2, "train.iterations", "write it in decimal, 16"),
    ("train:\n  iterations: 0o17\n", 2, "train.iterations", "write it in decimal, 15"),
    ("train:\n  iterations: 0b101\n", 2, "train.iterations", "write it in decimal, 5"),
    ("train:\n  iterations: 1_000\n", 2, "train.iterations", "write it without underscores, 1000"),
    ("train:\n  iterations: 1:30\n", 2, "train.iterations", "base 60 (90); write 90"),
    ("train:\n  schedule:\n    milestones: [100, 0200]\n", 3, "train.schedule.milestones[1]", "write 200"),
    ("train:\n  optimizer:\n    lr: 01\n", 3, "train.optimizer.lr", "write 1"),
    ("model:\n  name: timm/resnet18\n  kwargs: {depth: 010}\n", 3, "model.kwargs.depth", "write 10"),
])
def test_loose_integers_in_files_are_refused(tmp_path: Path, text: str, line: int, key: str, advice: str) -> None:
    path = write(tmp_path, text)
    message = refused(path)
    assert message.startswith(f"{path}:{line}: {key}: "), message
    assert "not a plain decimal integer" in message and advice in message, message


@pytest.mark.parametrize(("item", "key", "advice"), [
    ("seed=010", "seed", "write 10"),
    ("train.iterations=0x10", "train.iterations", "16"),
    ("train.iterations=1_000", "train.iterations", "1000"),
    ("train.iterations=1:30", "train.iterations", "90"),
    ("lottery.rounds=07", "lottery.rounds", "write 7"),
])
def test_loose_integers_in_set_are_refused(tmp_path: Path, item: str, key: str, advice: str) -> None:
    message = refused(write(tmp_path, "name: a\n"), [item])
    assert message.startswith(f"--set: {key}: "), message
    assert "not a plain decimal integer" in message and advice in message, message


def test_plain_decimals_and_yaml12_floats_still_load(tmp_path: Path) -> None:
    path = write(tmp_path, "seed: 0\ntrain:\n  iterations: +300\n  optimizer:\n    lr: 3e-4\n    momentum: 0\n")
    recipe = load_recipe(path, ["lottery.rounds=10", "train.optimizer.weight_decay=5e-4"])
    assert (recipe.seed, recipe.train.iterations, recipe.lottery.rounds) == (0, 300, 10)
    assert recipe.train.optimizer.lr == 3e-4 and recipe.train.optimizer.weight_decay == 5e-4


def test_integer_looking_text_stays_text_for_string_keys(tmp_path: Path) -> None:
    assert load_recipe(write(tmp_path, "name: 010\n")).name == "010"
    recipe = load_recipe(write(tmp_path, "name: a\n"), ["name=1_000"])
    assert recipe.name == "1_000" and type(recipe.name) is str
    again = write(tmp_path, dump_recipe(recipe), "again.yaml")
    assert "'1_000'" in again.read_text() and load_recipe(again) == recipe


# 2. Recipe file safety ----------------------------------------------------------------------

@pytest.mark.parametrize(("text", "line", "what"), [
    ("name: a\n# \x1b[31mred\n", 2, "escape character"),
    ("name: a\nseed: 1\x00\n", 2, "NUL byte"),
    ("name: a\n\n\nseed: \x07\n", 4, "U+0007"),
    ("name: a\x85\n", 1, "U+0085"),
])
def test_control_characters_are_refused(tmp_path: Path, text: str, line: int, what: str) -> None:
    path = write(tmp_path, text)
    message = refused(path)
    assert message.startswith(f"{path}:{line}: "), message
    assert what in message, message


def test_tab_and_crlf_are_fine(tmp_path: Path) -> None:
    assert load_recipe(write(tmp_path, "name: a\r\nseed: 3  # a\ttab\r\n")).seed == 3


def test_non_regular_files_are_refused(tmp_path: Path) -> None:
    if os.path.exists("/dev/zero"):
        assert refused("/dev/zero") == "/dev/zero: not a regular file (a character device); a recipe is a YAML text file"
    assert "not a regular file (a directory)" in refused(tmp_path)
    if os.path.exists("/proc/self/environ"):
        message = refused(write(tmp_path, "extends: /proc/self/environ\n", "proc.yaml"))
        assert message.startswith("/proc/self/environ: not a regular file"), message
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo")  # opening it for reading would block forever
        assert "not a regular file (a FIFO)" in refused(tmp_path / "fifo")
        assert "not a regular file (a FIFO)" in refused(write(tmp_path, "extends: fifo\n", "child.yaml"))


def test_oversized_recipe_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "name: a\n# " + "x" * (1 << 20) + "\n")
    assert refused(path) == f"{path}: larger than 1 MiB; a recipe is a small YAML text file"


def test_binary_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_bytes(b"name: a\n\xff\xfe\n")
    assert refused(path).startswith(f"{path}:2: not UTF-8 text")


@pytest.mark.parametrize("text", [
    "a: " + "[" * 5000 + "]" * 5000 + "\n",
    "a: " + "[" * 500_000 + "\n",
    "a: " + "{b: " * 5000 + "1" + "}" * 5000 + "\n",
    "".join(" " * depth + "k:\n" for depth in range(1000)),
])
def test_deep_nesting_is_one_line(tmp_path: Path, text: str) -> None:
    message = refused(write(tmp_path, text))
    assert "nested more than 32 levels deep" in message, message


def test_alias_bomb_fails_fast(tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    text = "\n".join(lines) + "\n"
    assert len(text) < 700  # ~387 million strings once expanded
    message = refused(write(tmp_path, text))
    assert "more than 100000 values once aliases (*name) are expanded" in message, message
    message = refused(write(tmp_path, "name: a\n"), ["model.kwargs=" + text.replace("\n", ", ").join("{}")])
    assert "more than 100000 values" in message, message


def test_recursive_alias_and_many_aliases_are_refused(tmp_path: Path) -> None:
    assert "alias (*name) inside the value it names" in refused(write(tmp_path, "a: &x [1, *x]\n"))
    many = "a: &a 1\nb: [" + ", ".join(["*a"] * 101) + "]\n"
    assert "more than 100 aliases" in refused(write(tmp_path, many))


@pytest.mark.parametrize("text", ["", "# only a comment\n\n", "---\n", "---\n# nothing\n...\n"])
def test_empty_recipe_is_an_error(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert refused(path).startswith(f"{path}: empty recipe")


def test_empty_base_recipe_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "# todo\n", "base.yaml")
    assert refused(write(tmp_path, "extends: base.yaml\nname: a\n")).startswith(f"{tmp_path / 'base.yaml'}: empty recipe")


SECRET = "hunter2SECRETsalt"


@pytest.mark.parametrize("content", [
    f"root:$6${SECRET}$hash:19000:0:99999:7:::\nbin:*:19000::::::\n",  # /etc/shadow: lines end in ':'
    f"root:x:0:0:{SECRET}:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n",  # /etc/passwd
    f"*{SECRET}\n",
    f"!{SECRET} x\n",
    f"{SECRET}: [\n",
    f"- {SECRET}\n",
    f'"{SECRET}\\q"\n',
    f"{SECRET}\n",
])
def test_non_recipe_content_is_never_echoed(tmp_path: Path, content: str) -> None:
    secret = write(tmp_path, content, "shadow")
    for path in (secret, write(tmp_path, f"extends: {secret}\nname: a\n")):
        message = refused(path)
        assert SECRET not in message and "hunter2" not in message, message


def test_typo_in_a_real_recipe_still_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "nmae: x\n")
    assert refused(path) == f"{path}:1: nmae: unknown key (did you mean 'name'?)"


# 3. Bounds that silently gave wrong results -------------------------------------------------

@pytest.mark.parametrize(("text", "line", "key", "fragments"), [
    ("lottery:\n  ticket_tolerance: 1\n", 2, "lottery.ticket_tolerance", ("[0, 0.1]", "fraction", "0.01 = 1 point")),
    ("lottery:\n  ticket_tolerance: 0.5\n", 2, "lottery.ticket_tolerance", ("fraction",)),
    ("data:\n  image_size: 1025\n", 2, "data.image_size", ("1025", "[1, 1024]")),
    ("data:\n  image_size: 0\n", 2, "data.image_size", ("[1, 1024]",)),
    ("export:\n  opset: 6\n", 2, "export.opset", ("[9, 20]",)),
    ("export:\n  opset: 21\n", 2, "export.opset", ("[9, 20]",)),
    ("name: /abs/path\n", 1, "name", ("plain folder name",)),
    ("name: ../..\n", 1, "name", ("plain folder name",)),
    ("name: a/b\n", 1, "name", ("plain folder name",)),
    ("name: .hidden\n", 1, "name", ("plain folder name",)),
    ("name: ''\n", 1, "name", ("plain folder name",)),
    ("name: a b\n", 1, "name", ("plain folder name",)),
    ("name: " + "a" * 101 + "\n", 1, "name", ("at most 100 characters",)),
])
def test_bounds(tmp_path: Path, text: str, line: int, key: str, fragments: tuple[str, ...]) -> None:
    path = write(tmp_path, text)
    message = refused(path)
    assert message.startswith(f"{path}:{line}: {key}: "), message
    for fragment in fragments:
        assert fragment in message, message


def test_bounds_accept_their_edges(tmp_path: Path) -> None:
    text = ("name: A.b-c_9\ndata:\n  image_size: 1024\nlottery:\n  ticket_tolerance: 0.1\nexport:\n  opset: 9\n")
    recipe = load_recipe(write(tmp_path, text), ["export.opset=20"])
    assert (recipe.name, recipe.data.image_size, recipe.lottery.ticket_tolerance, recipe.export.opset) == \
        ("A.b-c_9", 1024, 0.1, 20)
    assert load_recipe(write(tmp_path, "name: " + "a" * 100 + "\n")).name == "a" * 100
    assert "plain folder name" in refused(write(tmp_path, "name: a\n"), ["name=../../etc"])


def test_opset_range_mirrors_the_exporter() -> None:
    from compress.export.onnx import export as onnx_export

    assert getattr(onnx_export, "OPSET_RANGE", (9, 20)) == OPSET_RANGE


# 4. model.kwargs the factory does not take --------------------------------------------------

def test_unknown_model_kwarg_is_a_user_error() -> None:
    with pytest.raises(UserError) as info:
        build_model(ModelConfig(name="lenet5", kwargs={"widht": 3}), 10, 1, 28)
    message = str(info.value)
    assert not isinstance(info.value, TypeError)
    assert message.startswith("model.kwargs.widht: model 'lenet5' takes no argument 'widht'"), message
    assert "it accepts: image_size" in message and "\n" not in message


def test_unknown_model_kwarg_is_refused_at_load(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  name: conv2\n  kwargs:\n    image_size: 32\n    dropout: 0.5\n")
    message = refused(path)
    assert message.startswith(f"{path}:5: model.kwargs.dropout: model 'conv2' takes no argument"), message
    assert "in_channels" in refused(write(tmp_path, "model:\n  kwargs: {in_channels: 3}\n"))


def test_factory_with_var_kwargs(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.nn as nn

    def inner(num_classes: int, width: int = 4) -> nn.Module:
        return nn.Linear(width, num_classes)

    def wrapped(num_classes: int = 10, in_channels: int = 1, **kwargs: object) -> nn.Module:
        return inner(num_classes, **kwargs)  # type: ignore[arg-type]

    def broken(num_classes: int = 10, in_channels: int = 1, **kwargs: object) -> nn.Module:
        return nn.Linear("4", num_classes)  # type: ignore[arg-type]  # a bug, not the user's mistake

    monkeypatch.setitem(MODELS._entries, "test_wrapped", wrapped)
    monkeypatch.setitem(MODELS._entries, "test_broken", broken)
    assert isinstance(build_model(ModelConfig(name="test_wrapped", kwargs={"width": 3}), 10, 1, None), nn.Linear)
    with pytest.raises(UserError, match=r"^model\.kwargs\.depth: model 'test_wrapped' does not take 'depth'"):
        build_model(ModelConfig(name="test_wrapped", kwargs={"depth": 3}), 10, 1, None)
    with pytest.raises(TypeError) as info:
        build_model(ModelConfig(name="test_broken", kwargs={"depth": 3}), 10, 1, 28)
    assert not isinstance(info.value, UserError)


def test_image_size_only_goes_to_factories_that_take_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.nn as nn

    def pooled(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes))

    monkeypatch.setitem(MODELS._entries, "test_pooled", pooled)
    assert isinstance(build_model(ModelConfig(name="test_pooled"), 10, 3, 64), nn.Sequential)


# 5. Run-dir hash: results-relevant, non-default fields only --------------------------------

BASE = {"name": "h", "train": {"iterations": 400, "optimizer": {"lr": 1e-3}}, "lottery": {"rounds": 3}}


@pytest.mark.parametrize("change", [
    {"export": {"opset": 11}},
    {"export": {"onnx": False, "compact": True}},
    {"train": {"device": "cpu", "checkpoint_every": 100}},
    {"data": {"root": "/elsewhere", "download": False}},
    {"name": "renamed"},
])
def test_hash_ignores_fields_that_do_not_change_results(change: dict) -> None:
    base = recipe_from_dict(BASE)
    other = recipe_from_dict(BASE, overrides={f"{k}.{kk}" if isinstance(v, dict) else k: vv
                                              for k, v in change.items()
                                              for kk, vv in (v.items() if isinstance(v, dict) else [(None, v)])})
    assert other != base
    assert recipe_hash(other) == recipe_hash(base)
    assert results_hash(other) == results_hash(base)


@pytest.mark.parametrize("override", ["train.optimizer.lr=2e-3", "seed=1", "data.image_size=32",
                                      "lottery.ticket_tolerance=0.01", "prune.rates.conv=0.2"])
def test_hash_changes_with_results(override: str) -> None:
    key, _, value = override.partition("=")
    base = recipe_from_dict(BASE)
    other = recipe_from_dict(BASE, overrides=[override])
    assert recipe_hash(other) != recipe_hash(base) and results_hash(other) != results_hash(base), key


def test_hash_covers_only_non_defaults() -> None:
    defaults = recipe_from_dict({"name": "x"})
    explicit = recipe_from_dict(recipe_to_dict(defaults))  # every default written out
    assert recipe_hash(explicit) == recipe_hash(defaults)
    assert recipe_hash(defaults) == hashlib.sha256(b"{}").hexdigest()[:8]
    lr = recipe_from_dict({"train": {"optimizer": {"lr": 0.1}}})
    canonical = b'{"train":{"optimizer":{"lr":0.1}}}'
    assert recipe_hash(lr) == hashlib.sha256(canonical).hexdigest()[:8]


def test_result_fields_and_results_hash() -> None:
    recipe = recipe_from_dict(BASE)
    fields = result_fields(recipe)
    assert fields["train"]["optimizer"]["lr"] == 1e-3 and fields["train"]["batch_size"] == 60  # defaults too
    assert "name" not in fields and "export" not in fields
    assert "device" not in fields["train"] and "checkpoint_every" not in fields["train"]
    assert "root" not in fields["data"] and "download" not in fields["data"]
    assert fields["prune"]["rates"] == {"conv": 0.1, "linear": 0.2, "output": 0.1}
    assert re.fullmatch(r"[0-9a-f]{16}", results_hash(recipe))
    assert results_hash(recipe) == results_hash(recipe_from_dict(recipe_to_dict(recipe)))


def test_public_api() -> None:
    import compress.recipe as pkg

    for name in ("result_fields", "results_hash"):
        assert name in pkg.__all__ and callable(getattr(pkg, name))
