"""Strategies, retraining variants, early-bird draws and controls through the own-loop API (in process)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from compress.errors import UserError
from compress.lottery import LotterySearch
from compress.lottery.controls import CONTROLS, ControlInput
from compress.lottery.strategies import EarlyBird, finetune_config, mask_distance
from compress.lottery.summary import add_compute_to_ticket
from compress.pruning.scorers import snip_scores
from compress.recipe import recipe_from_dict
from compress.recipe.schema import EarlyBirdConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lottery"))
from tiny import tiny_recipe  # noqa: E402


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))


def _recipe(**lottery):
    prune = lottery.pop("prune", {})
    return recipe_from_dict({"train": {"iterations": 30}, "prune": {"rates": {"linear": 0.5, "output": 0.2}, **prune},
                             "lottery": {"rounds": 2, **lottery}})


def _data():
    gen = torch.Generator().manual_seed(3)
    return torch.randn(32, 12, generator=gen), torch.randint(0, 3, (32,), generator=gen)


def _drive(search: LotterySearch, model: nn.Module, lr: float = 0.05) -> list:
    x, y = _data()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    search.watch(optimizer)
    events = []
    while not search.done:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        events.append(search.on_step())
    return events


def test_at_init_masks_are_the_scorer_masks_of_the_init_at_each_density():
    model = _net()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    search = LotterySearch(model, _recipe(strategy="at_init", prune={"method": "snip"}))
    x, y = _data()
    search.score_at_init([(x, y)])
    reference = _net()
    reference.load_state_dict(init)
    scores = snip_scores(reference, ["0", "2"], None, [(x, y)])
    _drive(search, model)
    masks = search.masks  # level 2: 25% of layer 0, 64% of the output kept, the highest init scores
    for name, fraction in (("0", 0.25), ("2", 0.64)):
        kept = int(masks[name].sum())
        assert kept == round(masks[name].numel() * fraction)
        assert scores[name][masks[name].bool()].min() >= scores[name][~masks[name].bool()].max()


def test_at_init_without_batches_is_one_line_for_data_scorers():
    search = LotterySearch(_net(), _recipe(strategy="at_init", prune={"method": "grasp"}))
    with pytest.raises(UserError, match="score_at_init"):
        search.next_masks()


@pytest.mark.parametrize("lottery,prune,key", [
    ({}, {"method": "snip"}, "prune.method"),
    ({"strategy": "at_init", "retrain": "finetune"}, {}, "lottery.retrain"),
    ({"strategy": "at_init"}, {"method": "synflow", "granularity": "channel"}, "prune.granularity"),
    ({"early_bird": {"every": 5}, "retrain": "lr_rewind"}, {}, "lottery.early_bird.every"),
    ({"strategy": "bogus"}, {}, "lottery.strategy"),
    ({"controls": ["invert"]}, {"granularity": "channel"}, "lottery.controls"),
])
def test_bad_combinations_are_refused_in_one_line(lottery, prune, key):
    with pytest.raises(UserError) as error:
        recipe_from_dict({"prune": prune, "lottery": lottery})
    assert key in str(error.value) and "\n" not in str(error.value)


def test_finetune_keeps_trained_weights_and_the_final_learning_rate():
    recipe = recipe_from_dict(tiny_recipe(train={"schedule": {"name": "cosine"}}))
    tuned = finetune_config(recipe.train)
    assert tuned.schedule.name == "constant" and 0 < tuned.optimizer.lr < recipe.train.optimizer.lr
    model = _net()
    search = LotterySearch(model, _recipe(retrain="finetune"))
    x, y = _data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    # no scheduler watched: the search cannot hold the learning rate, and says so once
    with pytest.warns(UserWarning, match="no scheduler is watched") as caught:
        for _ in range(30):
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            search.on_step()
    assert search.level == 1 and len([w for w in caught if "no scheduler" in str(w.message)]) == 1
    trained = model[0].weight_orig.detach().clone()
    kept = search.masks["0"].bool()
    assert torch.equal(model[0].weight_orig.detach()[kept], trained[kept])  # not rewound to the init
    assert not torch.equal(trained, search.rewind_state["0.weight"])


SCHEDULES = {
    "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=30),  # periodic past T_max
    "onecycle": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=30),  # raises past it
    "step": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=20, gamma=0.1),  # decays for ever
    "multistep": lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[10, 25], gamma=0.5),
}


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("retrain", ["finetune", "lr_rewind", "rewind"])
def test_own_schedulers_give_each_retraining_its_learning_rates(schedule, retrain):
    """Your loop steps your scheduler; the search decides where it stands: finetune holds the final lr
    (the last step's) for every step after level 0, lr_rewind and rewind replay the schedule from k."""
    model = _net()
    search = LotterySearch(model, _recipe(retrain=retrain, rewind_to=5))
    x, y = _data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = SCHEDULES[schedule](optimizer)
    search.watch(optimizer, scheduler)
    levels: dict[int, list[float]] = {}
    while not search.done:
        levels.setdefault(search.level, []).append(optimizer.param_groups[0]["lr"])
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        search.on_step()
    dense = levels[0]
    assert len(dense) == 30 and [len(levels[level]) for level in (1, 2)] == [25, 25]
    for level in (1, 2):
        expected = [dense[-1]] * 25 if retrain == "finetune" else dense[5:]
        assert levels[level] == expected, (level, levels[level][:6])


def test_early_bird_ends_a_level_when_draws_converge_and_records_the_step():
    model = _net()
    search = LotterySearch(model, _recipe(early_bird={"every": 2, "distance": 0.5, "patience": 2}))
    events = _drive(search, model, lr=0.01)
    finished = [e.step for e in events if e.level_finished and not e.done]
    assert search.early_bird_steps[0] is not None and finished[0] == search.early_bird_steps[0] < 30
    state = search.state_dict()
    assert state["early_bird_steps"] == search.early_bird_steps


@pytest.mark.parametrize("end_early", [True, False])
def test_early_bird_in_a_level_driven_loop(end_early):
    # step(i) draws and reports convergence (it had ignored lottery.early_bird): ending the level there is
    # the step-driven loop's run; training on, the next level still starts from the converged draw
    early_bird = {"every": 2, "distance": 0.5, "patience": 2}
    reference_model = _net()
    reference = LotterySearch(reference_model, _recipe(early_bird=early_bird))
    _drive(reference, reference_model, lr=0.01)
    model = _net()
    search = LotterySearch(model, _recipe(early_bird=early_bird))
    x, y = _data()
    draws = {}
    for level in search.levels():
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)  # no state: a fresh one per level is the same
        for i in range(search.start_step + 1, 31):
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            if search.step(i):
                draws[level] = search.early_bird.masks
                if end_early:
                    break
        search.prune_and_rewind()
        if level in draws:
            assert all(torch.equal(search.masks[name], draws[level][name]) for name in draws[level])
    assert search.early_bird_steps == reference.early_bird_steps and set(draws) == {0, 1}
    if end_early:
        assert all(torch.equal(search.masks[name], reference.masks[name]) for name in reference.masks)


def test_early_bird_distance_and_patience():
    bird = EarlyBird(EarlyBirdConfig(every=1, distance=0.3, patience=2))
    a = {"w": torch.tensor([1.0, 1.0, 0.0, 0.0])}
    b = {"w": torch.tensor([1.0, 0.0, 1.0, 0.0])}
    assert mask_distance(a, b) == 0.5
    assert not bird.check(1, a) and not bird.check(2, b)  # 0.5: not below
    assert not bird.check(3, b) and bird.check(4, b) and bird.stop_step == 4


def test_shuffle_keeps_counts_and_invert_uses_the_given_ranking():
    masks = {"a": (torch.rand(6, 5, generator=torch.Generator().manual_seed(1)) > 0.5).float()}
    ticket = ControlInput(round_index=1, masks=masks, start_state={}, seed=3, granularity="weight",
                          make_model=lambda seed=None: _net(), inverted=lambda: {"a": 1 - masks["a"]})
    _, shuffled = CONTROLS.get("shuffle")(ticket)
    assert shuffled["a"].sum() == masks["a"].sum() and not torch.equal(shuffled["a"], masks["a"])
    _, inverted = CONTROLS.get("invert")(ticket)
    assert torch.equal(inverted["a"], 1 - masks["a"])


def test_compute_to_ticket_is_cumulative_for_imp_and_own_for_at_init():
    rounds = [{"round": r, "iterations_trained": 100, "train_flops": 10.0 * (r + 1), "train_flops_sparse": 5.0,
               "final_iteration": 100, "early_bird_step": 40 if r == 0 else None} for r in range(3)]
    imp = [dict(entry) for entry in rounds]
    add_compute_to_ticket(_recipe(), imp)
    assert [e["compute_to_ticket"]["iterations"] for e in imp] == [100, 140, 240]
    assert imp[1]["compute_to_ticket"]["flops"] == pytest.approx(0.4 * 10 + 20)
    at_init = [dict(entry) for entry in rounds]
    add_compute_to_ticket(_recipe(strategy="at_init"), at_init)
    assert [e["compute_to_ticket"]["flops"] for e in at_init] == [10.0, 20.0, 30.0]


@pytest.mark.parametrize("strategy", ["imp", "at_init"])
def test_invert_control_from_an_own_loop_keeps_the_lowest_at_equal_counts(strategy):
    model = _net()
    search = LotterySearch(model, _recipe(strategy=strategy, controls=["invert"]))
    x, y = _data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    trained = None
    while search.level == 0:
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        if search.step_count == search.iterations - 1:
            trained = {n: (m.weight_orig * m.weight_mask).detach().abs() for n, m in (("0", model[0]), ("2", model[2]))}
        search.on_step()
    [control] = search.control_models(lambda seed: _net(), ("invert",)).values()
    for name, module in (("0", control[0]), ("2", control[2])):
        ticket, inverted = search.masks[name], module.weight_mask
        assert int(inverted.sum()) == int(ticket.sum())
        if strategy == "imp":  # by the trained magnitudes: what invert dropped is above what it kept
            assert trained[name][~inverted.bool()].min() >= trained[name][inverted.bool()].max()
            assert not torch.equal(inverted, ticket)
