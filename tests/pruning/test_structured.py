"""Structured tickets in the lottery engine: channel groups of a residual net through IMP, aligned widths,
the structured random control, the dry-run widths, and a real CIFAR-10 run exporting a compacted ONNX."""

from __future__ import annotations

import pytest
import torch

from compress.errors import UserError
from compress.lottery import LotterySearch
from compress.lottery.controls import CONTROLS, ControlInput
from compress.lottery.dry_run import plan_table
from compress.models import create_model
from compress.pipeline import run_recipe
from compress.pruning.compact.graph import compact_graph
from compress.pruning.structured import group_widths
from compress.pruning.widths import aligned_keep, resolve_multiple
from compress.recipe import recipe_from_dict
from compress.runtime import vector_block

torch.set_num_threads(1)


def _recipe(**prune):
    return recipe_from_dict({"name": "structured", "model": {"name": "resnet20"}, "data": {"name": "cifar10"},
                             "prune": {"granularity": "channel", "rates": {"conv": 0.3, "linear": 0.3}, **prune},
                             "lottery": {"rounds": 3}, "train": {"iterations": 10}})


@pytest.mark.parametrize(("alive", "rate", "multiple", "kept"), [
    (64, 0.3, 1, 45), (64, 0.3, 16, 48), (45, 0.3, 16, 32), (32, 0.2, 16, 32), (24, 0.5, 16, 16), (10, 0.9, 16, 10),
    (16, 0.9, 16, 16), (100, 0.99, 8, 8), (3, 0.5, 1, 1)])
def test_aligned_keep_rounds_to_the_nearest_multiple_never_below_it(alive, rate, multiple, kept):
    assert aligned_keep(alive, rate, multiple) == kept


def test_channel_multiple_auto_and_errors():
    assert resolve_multiple("auto") == vector_block() in (1, 8, 16)
    for bad in (0, -16, "16", 2.0, True):
        with pytest.raises(UserError, match="channel_multiple"):
            resolve_multiple(bad)
    with pytest.raises(UserError, match="prune.channel_multiple"):
        LotterySearch(create_model("resnet20"), _recipe(channel_multiple="fast"))


def test_imp_on_a_residual_net_prunes_whole_groups_and_compacts_exactly():
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    search = LotterySearch(model, _recipe(channel_multiple=4, keep=["@stem"]))
    assert search.structure is not None and "fc" in search.names, "the classifier's inputs are masked with the group"
    previous = search.masks
    history = []
    search.snapshot()  # the rewind point (step 0), as a training loop's first step would take it
    for _ in range(3):
        assert search.prune_and_rewind()  # the public transition, never search.level by hand
        masks = search.masks
        assert all(bool((masks[n] <= previous[n]).all()) for n in masks), "masks only shrink"
        previous = masks
        history.append(group_widths(search.structure.groups, masks))
    assert history[-1]["conv"] == 16, "the stem's group is kept"
    for widths in history:
        assert all(w % 4 == 0 for name, w in widths.items() if name != "conv")
    assert history[0]["blocks.6.conv1"] == 44 and history[2]["blocks.6.conv1"] == 24  # 64 -> 44.8 -> 44; ...
    x = torch.randn(4, 3, 32, 32)
    result = compact_graph(model, x)
    assert result.max_abs_diff <= 1e-5
    conv = dict(result.module.named_modules())["blocks.6.conv1"]
    assert conv.out_channels == 24

    # resume: a saved state loads into a fresh search of the same recipe
    fresh = LotterySearch(create_model("resnet20"), _recipe(channel_multiple=4, keep=["@stem"]))
    fresh.load_state_dict(search.state_dict())
    assert all(torch.equal(fresh.masks[n], search.masks[n]) for n in search.names)

    control = CONTROLS.get("random_prune")(ControlInput(
        round_index=3, masks=search.masks, start_state={}, seed=11, granularity="channel",
        make_model=lambda seed=None: create_model("resnet20")))
    _, random = control
    assert group_widths(search.structure.groups, random) == history[-1], "same units kept per group"
    assert any(not torch.equal(random[n], search.masks[n]) for n in search.names)


def test_dry_run_shows_widths_per_level():
    table = plan_table(_recipe(channel_multiple=8, keep=["@stem"]))
    assert "widths per level (prune.channel_multiple = 8" in table
    line = next(row for row in table.splitlines() if row.startswith("blocks.6.conv1 "))
    assert line.split()[-4:] == ["64", "48", "32", "24"]  # 64 -> 44.8 -> 48; 48 -> 33.6 -> 32; 32 -> 22.4 -> 24
    assert "touches conv" in next(row for row in table.splitlines() if row.startswith("conv "))


@pytest.mark.slow
@pytest.mark.needs_cifar
def test_channel_lottery_on_cifar_exports_a_compacted_verified_onnx(tmp_path, cifar10_tar):
    recipe = recipe_from_dict({
        "name": "structured_cifar", "model": {"name": "resnet20"},
        "data": {"name": "cifar10", "root": str(cifar10_tar), "validation_size": 200, "test_subset": 200,
                 "train_subset": 2000},
        "train": {"iterations": 8, "batch_size": 32, "eval_every": 4, "eval_batch_size": 200,
                  "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
        "prune": {"granularity": "channel", "rates": {"conv": 0.4, "linear": 0.4}, "keep": ["@stem"],
                  "channel_multiple": 8},
        "lottery": {"rounds": 2, "rewind_to": 2, "controls": ["random_prune"]},
        "export": {"onnx": True, "compact": True}})
    summary = run_recipe(recipe, tmp_path / "run", progress=False)
    assert [entry["round"] for entry in summary["rounds"]] == [0, 1, 2]
    export = summary["export"]
    assert export["max_abs_diff"] <= 1e-4
    assert export["compact"]["max_abs_diff"] <= 1e-4
    assert export["compact"]["macs_after"] < export["compact"]["macs_before"]
    assert (tmp_path / "run" / "ticket.compact.onnx").exists()


@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_sequential_channel_tickets_align_too(scope):
    """Conv-4 (an nn.Sequential) keeps per-layer output channels; channel_multiple aligns them the same way."""
    recipe = recipe_from_dict({"name": "c4", "model": {"name": "conv4"}, "data": {"name": "cifar10"},
                               "prune": {"granularity": "channel", "scope": scope, "channel_multiple": 16,
                                         "rates": {"conv": 0.3, "linear": 0.3}},
                               "lottery": {"rounds": 3}, "train": {"iterations": 10}})
    torch.manual_seed(0)
    model = create_model("conv4")
    search = LotterySearch(model, recipe)
    assert search.structure is None
    search.snapshot()  # the rewind point (step 0), as a training loop's first step would take it
    for _ in range(3):
        assert search.prune_and_rewind()  # the public transition, never search.level by hand
    widths = {name: int(mask.flatten(1).any(1).sum()) for name, mask in search.masks.items()}
    assert all(w % 16 == 0 and w >= 16 for w in widths.values()), widths
    if scope == "layerwise":
        assert widths["0"] == 16 and widths["11"] == 96  # the --dry-run widths: 64 48 32 16 / 256 176 128 96


def test_the_channel_plan_leaves_no_copy_of_the_model_behind(monkeypatch):
    """The traced copy and the probe's copies sit in Torch-Pruning's reference cycles: freed when the plan is
    made, not whenever the cyclic collector next runs (a model's worth of memory through training)."""
    import gc
    import weakref

    import compress.pruning.apply as apply_module
    import compress.pruning.compact.graph as graph_module
    import compress.pruning.probe as probe_module
    from compress.pruning.structured import channel_plan

    copies = []
    real_fold = apply_module.fold_masks

    def fold_and_watch(model):  # the real fold_masks; the copy it makes is watched, not kept
        folded = real_fold(model)
        copies.append(weakref.ref(folded))
        return folded

    for module in (apply_module, graph_module, probe_module):
        monkeypatch.setattr(module, "fold_masks", fold_and_watch)
    torch.manual_seed(0)
    model = create_model("resnet20")
    gc.collect()
    gc.disable()  # what keeps a copy alive is then only what the plan itself did not free
    try:
        plan = channel_plan(model, _recipe().prune, torch.randn(2, 3, 32, 32))
        alive = sum(ref() is not None for ref in copies)
    finally:
        gc.enable()
    assert plan.pruned and len(copies) >= 3, "the trace, the probe and its compaction each fold a copy"
    assert alive == 0, f"{alive} of {len(copies)} copies of the model outlive the plan"
