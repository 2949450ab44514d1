"""Regression tests of the defects #23 lists (each fails on ee37812's behaviour)."""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
from pathlib import Path

import torch
import torch.nn as nn

import compress.io as cio
from compress import paths

sys.path.insert(0, str(Path(__file__).parent / "lottery"))
from tiny import tiny_recipe  # noqa: E402


def test_atomic_write_never_touches_the_umask_and_fsyncs_the_directory(tmp_path, monkeypatch):
    def no_umask(_mask):
        raise AssertionError("os.umask changes the mask of every thread of the process")

    synced_dirs = []
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced_dirs.append(fd)
        return real_fsync(fd)

    mask = os.umask(0o022)
    os.umask(mask)
    monkeypatch.setattr(os, "umask", no_umask)
    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / "out.json"
    cio.save_json({"a": 1}, target)
    assert json.loads(target.read_text()) == {"a": 1}
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert synced_dirs, "the directory holding the renamed file was not fsynced"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left


def test_int8_quantization_leaves_the_root_logger_level_alone(tmp_path, monkeypatch):
    import onnxruntime.quantization as ort_quantization

    from compress.export import export_onnx, quantize_onnx

    seen = []
    real = ort_quantization.quantize_dynamic

    def spy(*args, **kwargs):
        seen.append(logging.getLogger().level)
        return real(*args, **kwargs)

    monkeypatch.setattr(ort_quantization, "quantize_dynamic", spy)  # imported at call time
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.INFO)
    try:
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
        export_onnx(model, tmp_path / "m.onnx", torch.randn(2, 1, 4, 4))
        quantize_onnx(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", mode="int8-dynamic")
        assert seen == [logging.INFO] and root.level == logging.INFO
    finally:
        root.setLevel(before)


def test_no_validation_split_writes_null_never_nan(tmp_path):
    from compress.lottery import find_ticket
    from compress.recipe import recipe_from_dict

    recipe = recipe_from_dict(tiny_recipe(data={"validation_size": 0}, lottery={"rounds": 0, "controls": []},
                                          train={"iterations": 20, "eval_every": 10, "checkpoint_every": 10}))
    find_ticket(recipe, tmp_path / "run", progress=False)

    def refuse(constant):
        raise AssertionError(f"{constant} in a JSON file")

    for name in (paths.RESULT, ):
        result = json.loads((paths.round_dir(tmp_path / "run", 0) / name).read_text(), parse_constant=refuse)
        assert result["early_stop_val_accuracy"] is None
    json.loads((tmp_path / "run" / paths.SUMMARY).read_text(), parse_constant=refuse)


def test_random_channel_method_prunes_whole_channels():
    from compress.registry import PRUNING_METHODS

    masks = {"a": torch.ones(8, 4), "b": torch.ones(6, 3, 3, 3)}
    weights = {name: torch.randn(mask.shape, generator=torch.Generator().manual_seed(1)) for name, mask in masks.items()}
    new = PRUNING_METHODS.get("random")(weights, masks, {"a": 0.5, "b": 0.5}, groups={"a": "a", "b": "b"},
                                        granularity="channel", generator=torch.Generator().manual_seed(0))
    for name, mask in new.items():
        rows = mask.flatten(1)
        whole = rows.eq(0).all(1) | rows.eq(1).all(1)
        assert bool(whole.all()), f"{name}: a channel is partly pruned"
        assert int(rows.eq(0).all(1).sum()) == round(0.5 * mask.shape[0])


def test_structured_path_refuses_a_method_it_has_no_rule_for():
    import pytest

    from compress.errors import UserError
    from compress.pruning.groups import find_groups
    from compress.pruning.structured import next_group_masks

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3)

        def forward(self, x):
            return self.b(torch.relu(self.a(x))).mean((2, 3))

    model = Net()
    groups = find_groups(model, torch.randn(1, 3, 8, 8))
    weights = {name: module.weight for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}
    masks = {name: torch.ones_like(w) for name, w in weights.items()}
    rates = {group.name: 0.5 for group in groups}
    assert next_group_masks(groups, weights, masks, rates, method="magnitude")  # the rule it has
    with pytest.raises(UserError, match="no rule for channel groups"):
        next_group_masks(groups, weights, masks, rates, method="snip")


def test_global_scope_can_normalise_per_layer():
    import pytest

    from compress.errors import UserError
    from compress.pruning import magnitude_masks
    from compress.recipe import recipe_from_dict

    big, small = torch.ones(100) * 10 + torch.rand(100), torch.ones(100) * 0.1 + torch.rand(100) * 0.01
    weights, masks = {"big": big, "small": small}, {"big": torch.ones(100), "small": torch.ones(100)}
    pool = {"big": "all", "small": "all"}
    raw = magnitude_masks(weights, masks, {"big": 0.5, "small": 0.5}, pool)
    assert int(raw["small"].sum()) == 0 and int(raw["big"].sum()) == 100  # raw |w|: the small layer empties
    fair = magnitude_masks(weights, masks, {"big": 0.5, "small": 0.5}, pool, normalize=True)
    assert 20 <= int(fair["small"].sum()) <= 80 and int(fair["big"].sum() + fair["small"].sum()) == 100
    recipe = recipe_from_dict(tiny_recipe(prune={"scope": "global", "global_normalize": True}))
    assert recipe.prune.global_normalize
    with pytest.raises(UserError, match="global_normalize"):
        recipe_from_dict(tiny_recipe(prune={"global_normalize": True}))  # layerwise: refused, not ignored


def test_rewind_to_zero_saves_the_initial_weights_and_resumes_from_them(tmp_path):
    from compress.lottery import find_ticket
    from compress.recipe import recipe_from_dict
    from compress.ticket import read_ticket

    recipe = recipe_from_dict(tiny_recipe(lottery={"rounds": 1, "controls": [], "rewind_to": 0},
                                          train={"iterations": 20, "eval_every": 10, "checkpoint_every": 10}))
    run = tmp_path / "run"
    find_ticket(recipe, run, progress=False)
    init = torch.load(run / paths.INIT, weights_only=True)
    identity = json.loads((paths.round_dir(run, 1) / "identity.json").read_text())
    assert identity["torch"] == torch.__version__
    ticket = read_ticket(run / paths.TICKET)
    for name, mask in ticket["masks"].items():  # the ticket rewinds to exactly the saved initial weights
        assert torch.equal(ticket["rewind_state"][f"{name}.weight"], init[f"{name}.weight"] * mask)
    # a resume reads init.pt, never regenerates it: other saved weights are what round 1 retrains from
    changed = {key: value * 0.5 if key.endswith("weight") else value for key, value in init.items()}
    torch.save(changed, run / paths.INIT)
    for name in (paths.RESULT, paths.FINAL, paths.MASK):
        (paths.round_dir(run, 1) / name).unlink()
    (run / paths.TICKET).unlink()
    find_ticket(recipe, run, progress=False)
    again = read_ticket(run / paths.TICKET)
    for name, mask in again["masks"].items():
        assert torch.equal(again["rewind_state"][f"{name}.weight"], changed[f"{name}.weight"] * mask)


def test_the_headline_is_the_shipped_weights_accuracy_and_missing_validation_is_said_per_round(tmp_path):
    from compress.lottery.report import write_report
    from compress.lottery.summary import build_summary
    from compress.recipe import recipe_from_dict

    recipe = recipe_from_dict(tiny_recipe())
    rounds = [{"round": r, "weights_remaining": 0.8 ** r, "early_stop_test_accuracy": 0.9, "test_accuracy": 0.8 - r / 100,
               "early_stop_iteration": 10, "early_stop_val_accuracy": 0.9} for r in range(3)]
    summary = build_summary(recipe, rounds)
    chosen = rounds[summary["ticket"]["round"]]
    assert summary["ticket"]["shipped_test_accuracy"] == chosen["test_accuracy"]
    write_report(tmp_path, summary, recipe)
    report = (tmp_path / paths.REPORT).read_text()
    assert f"test accuracy {chosen['test_accuracy'] * 100:.2f}% with the weights `ticket.pt`" in report
    rounds[2]["early_stop_val_accuracy"] = None  # one round without a validation accuracy: said, by round
    assert "round 2 has no finite validation accuracy" in build_summary(recipe, rounds)["ticket"]["rule"]
