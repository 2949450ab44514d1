"""LotterySearch's transitions: counted steps, misuse refused before anything changes, copies and EMAs."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from compress.errors import UserError
from compress.lottery import LotterySearch
from compress.models import create_model
from compress.pruning import refresh_weights


def _search(make_recipe, **lottery) -> LotterySearch:
    torch.manual_seed(0)
    return LotterySearch(create_model("lenet300_100"), make_recipe(lottery={"rounds": 2, **lottery}),
                         iterations=5)


def _train_step(model, optimizer, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    loss = F.cross_entropy(model(torch.randn(8, 1, 28, 28, generator=g)), torch.randint(0, 10, (8,), generator=g))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def _equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_on_step_counts_snapshots_prunes_and_finishes(make_recipe):
    search = _search(make_recipe, rewind_to=2)
    events = [search.on_step() for _ in range(5 + 3 + 3)]
    assert [e.step for e in events] == [1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5]
    assert [e.snapshot_taken for e in events].index(True) == 1 and sum(e.snapshot_taken for e in events) == 1
    assert [(e.level, e.done) for e in events if e.level_finished] == [(1, False), (2, False), (2, True)]
    assert search.done and search.level == 2
    with pytest.raises(UserError, match="after the search is done"):
        search.on_step()


def test_prune_and_rewind_called_too_often_prunes_only_rounds_times(make_recipe):
    search = _search(make_recipe)
    remaining = []
    results = []
    for _ in range(3):
        results.append(search.prune_and_rewind())
        remaining.append(search.report()["weights_remaining"])
    assert results == [True, True, False] and search.done and search.level == 2
    assert remaining[1] == remaining[2] < remaining[0] < 1
    for _ in range(2):
        with pytest.raises(UserError, match="after the search is done"):
            search.prune_and_rewind()
    assert search.report()["weights_remaining"] == remaining[-1]
    assert list(search.levels()) == []


def test_levels_refuses_a_level_without_prune_and_rewind(make_recipe):
    search = _search(make_recipe)
    with pytest.raises(UserError, match="without prune_and_rewind"):
        for _level in search.levels():
            pass


def test_a_missed_snapshot_is_named_at_once_and_the_failed_prune_changes_nothing(make_recipe):
    search = _search(make_recipe, rewind_to=3)
    with pytest.raises(UserError, match="missed the rewind snapshot at step 3.*0-based"):
        search.step(4)
    before_masks, before_weights = search.masks, {k: v.clone() for k, v in search.model.state_dict().items()}
    with pytest.raises(UserError, match="missed the rewind snapshot at step 3"):
        search.prune_and_rewind()
    assert _equal(search.masks, before_masks) and _equal(search.model.state_dict(), before_weights)
    assert search.level == 0 and not search.done
    search.step(3)  # the snapshot, now; then the transition goes through
    assert search.prune_and_rewind() and search.level == 1 and search.step_count == 3


def test_a_refused_state_changes_nothing(make_recipe):
    search = _search(make_recipe)
    state = search.state_dict()
    state["masks"] = {name: mask * 0.5 for name, mask in state["masks"].items()}  # an averaged copy
    search.prune_and_rewind()
    before = search.masks
    with pytest.raises(UserError, match="not 0/1"):
        search.load_state_dict(state)
    assert _equal(search.masks, before) and search.level == 1


def test_deepcopy_between_steps_and_a_copy_computes_the_same(make_recipe):
    search = _search(make_recipe)
    model = search.model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(7):  # through a prune + rewind
        _train_step(model, optimizer, step)
        search.on_step()
        clone = copy.deepcopy(model)
        x = torch.randn(4, 1, 28, 28)
        with torch.no_grad():
            assert torch.equal(clone(x), model(x))
    assert search.level == 1
    refresh_weights(model)  # readers of .weight between steps: fresh orig * mask
    layer = model[1]
    h = torch.randn(3, layer.in_features)
    with torch.no_grad():  # .weight (read before any forward recomputes it) is what the forward computes with
        assert torch.equal(torch.nn.functional.linear(h, layer.weight, layer.bias), layer(h))


def test_an_ema_keeps_exact_masks_with_copy_masks_to(make_recipe):
    timm_utils = pytest.importorskip("timm.utils")
    search = _search(make_recipe)
    model = search.model
    ema = timm_utils.ModelEmaV3(model, decay=0.9)
    plain_ema = timm_utils.ModelEmaV3(model, decay=0.9)  # the same, without copy_masks_to
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(8):  # through a prune: the model's masks change under the EMA
        _train_step(model, optimizer, step)
        search.on_step()
        ema.update(model)
        plain_ema.update(model)
        search.copy_masks_to(ema.module)
    ema_masks = {n: m.weight_mask for n, m in ema.module.named_modules() if hasattr(m, "weight_mask")}
    assert _equal(ema_masks, search.masks)
    drifted = plain_ema.module[1].weight_mask
    assert not bool(((drifted == 0) | (drifted == 1)).all())  # why copy_masks_to exists
    pruned = search.masks["1"] == 0
    with torch.no_grad():
        ema.module(torch.randn(2, 1, 28, 28))  # the forward hook recomputes weight = orig * mask
    assert bool((ema.module[1].weight[pruned] == 0).all())


def test_rewind_scheduler_restarts_the_schedule_at_rewind_to(make_recipe):
    search = _search(make_recipe, rewind_to=2)
    optimizer = torch.optim.SGD(search.model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    with pytest.raises(UserError, match="watch"):
        search.rewind_scheduler(scheduler)
    search.watch(optimizer, scheduler)
    lrs = []
    for step in range(5):
        _train_step(search.model, optimizer, step)
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
        search.on_step()
    assert search.level == 1 and not optimizer.state
    assert optimizer.param_groups[0]["lr"] == lrs[1] == 0.25  # the lr after step rewind_to = 2


def test_a_finished_level_drops_its_gradients(make_recipe):
    """They belong to weights that are pruned and rewound: not held (a model's worth) while masks are computed."""
    search = _search(make_recipe, rewind_to=1)
    optimizer = torch.optim.SGD(search.model.parameters(), lr=0.1)
    for step in range(1, 6):
        _train_step(search.model, optimizer, step)
        search.step(step)
    assert all(p.grad is not None for p in search.model.parameters())
    search.prune_and_rewind()
    assert all(p.grad is None for p in search.model.parameters())
    _train_step(search.model, optimizer, 9)  # the next level trains as before
    assert all(p.grad is not None for p in search.model.parameters())


def test_a_level_driven_counter_restarted_at_a_rewound_level_is_warned_once(make_recipe):
    search = _search(make_recipe, rewind_to=2)
    for i in range(1, 6):
        search.step(i)
    search.prune_and_rewind()
    with pytest.warns(UserWarning, match=r"step\(1\) at level 1: this level was rewound to step 2 and resumes at 3"):
        search.step(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i in range(2, 6):  # once per search
            search.step(i)
        search.prune_and_rewind()
        for i in range(3, 6):  # a counter from start_step + 1: nothing to say
            search.step(i)
