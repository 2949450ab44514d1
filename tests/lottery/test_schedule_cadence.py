"""A watched LR scheduler is replayed one step per optimizer step at a rewind: one stepped per epoch (or a
metric-driven one) would be replayed wrongly and silently, so the search refuses it where a replay happens,
and keeps accepting it where a rewind only restores the schedule's start; one watched but never stepped is
restored to its start (the rates the dense level trained at), not replayed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import compress
from compress.errors import UserError


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def _search(make_recipe, model, **lottery):
    recipe = make_recipe(lottery={"rounds": 2, "controls": [], **lottery}, prune={"rates": {"linear": 0.5}})
    return compress.LotterySearch(model, recipe, iterations=12)


def _train(search, model, optimizer, scheduler, epoch_length: int | None, driver: str) -> list[float]:
    """Step-driven (on_step) or level-driven (step(i)); the scheduler steps per optimizer step, or, with
    ``epoch_length``, once per epoch of that many steps. Returns the learning rate of every step."""
    gen = torch.Generator().manual_seed(1)
    rates = []
    for _level in search.levels():
        for i in range(search.start_step + 1, search.iterations + 1):
            x, y = torch.randn(4, 12, generator=gen), torch.randint(0, 3, (4,), generator=gen)
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            if epoch_length is None or i % epoch_length == 0:
                scheduler.step()
            if driver == "on_step":
                if search.on_step().level_finished:
                    break
            else:
                search.step(i)
        if driver == "step":
            search.prune_and_rewind()
    return rates


def _step_lr(optimizer):
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)


def _chained(optimizer):
    return torch.optim.lr_scheduler.ChainedScheduler([torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.9),
                                                      _step_lr(optimizer)])


@pytest.mark.parametrize("driver", ["on_step", "step"])
@pytest.mark.parametrize("lottery,make_scheduler", [({"rewind_to": 3}, _step_lr),
                                                    ({"rewind_to": 0, "retrain": "finetune"}, _step_lr),
                                                    ({"rewind_to": 3}, _chained)])
def test_a_scheduler_stepped_per_epoch_is_refused_where_a_rewind_replays_it(make_recipe, driver, lottery,
                                                                            make_scheduler):
    model = _net()
    search = _search(make_recipe, model, **lottery)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = make_scheduler(optimizer)
    search.watch(optimizer, scheduler)
    with pytest.raises(UserError, match=r"stepped 1 times in 3 optimizer steps") as caught:
        _train(search, model, optimizer, scheduler, epoch_length=4, driver=driver)
    assert "\n" not in str(caught.value)
    assert search.level == 0 and search.step_count <= 4  # refused at the first epoch's end, not at the level's


@pytest.mark.parametrize("driver", ["on_step", "step"])
def test_per_step_schedulers_pass_and_restore_only_rewinds_accept_any_cadence(make_recipe, driver):
    # once per optimizer step with a replayed rewind: the rewound level's rates equal level 0's from step 4
    model = _net()
    search = _search(make_recipe, model, rewind_to=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
    search.watch(optimizer, scheduler)
    rates = _train(search, model, optimizer, scheduler, epoch_length=None, driver=driver)
    assert search.done and rates[12:21] == rates[3:12] == rates[21:30]

    # rewind_to 0 with retrain: rewind only restores the start, which is right for any cadence
    model = _net()
    search = _search(make_recipe, model, rewind_to=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    search.watch(optimizer, scheduler)
    rates = _train(search, model, optimizer, scheduler, epoch_length=4, driver=driver)
    assert search.done and rates[:12] == rates[12:24] == rates[24:] and rates[:5] == [0.1] * 4 + [0.05]


def test_reduce_on_plateau_is_refused_where_a_rewind_replays_it(make_recipe):
    for lottery in ({"rewind_to": 3}, {"retrain": "finetune"}, {"rewind_to": 2, "retrain": "lr_rewind"}):
        model = _net()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
        with pytest.raises(UserError, match="ReduceLROnPlateau follows a metric"):
            _search(make_recipe, model, **lottery).watch(optimizer, plateau)
    model = _net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    _search(make_recipe, model, rewind_to=0).watch(optimizer, torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer))


@pytest.mark.parametrize("lottery", [{"rewind_to": 3}, {"rewind_to": 3, "retrain": "lr_rewind"},
                                     {"retrain": "finetune"}])
def test_a_watched_scheduler_never_stepped_keeps_the_dense_levels_rate(make_recipe, lottery):
    model = _net()
    search = _search(make_recipe, model, **lottery)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    search.watch(optimizer, _step_lr(optimizer))  # watched for the optimizer reset; the loop never steps it
    gen = torch.Generator().manual_seed(1)
    rates = []
    while not search.done:
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.zero_grad()
        F.cross_entropy(model(torch.randn(4, 12, generator=gen)), torch.randint(0, 3, (4,), generator=gen)).backward()
        optimizer.step()
        search.on_step()
    assert len(rates) > 12 and set(rates) == {0.1}  # a replay would have decayed it 3 or 11 times
