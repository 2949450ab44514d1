"""An own loop's ``report()`` counts each level's compute the way ``find_ticket.py``'s summary does."""

from __future__ import annotations

import pytest
import torch
from tiny import train_step

import compress
from compress import paths
from compress.data import load_dataset
from compress.errors import UserError
from compress.io import load_json
from compress.models import build_model

FIELDS = ("iterations_trained", "final_iteration", "train_flops", "train_flops_sparse", "compute_to_ticket")


def _own_search(recipe, *, restart_at: int | None = None):
    """The README's level-driven loop on find_ticket.py's batches; ``restart_at``: save the search's state
    at that level's middle and go on in a fresh search loaded from it (a resumed process)."""
    data = load_dataset(recipe.data, recipe.seed, "cpu")
    model = build_model(recipe.model, data.num_classes, data.in_channels, data.image_size, seed=recipe.seed)
    search = compress.LotterySearch(model, recipe)
    while not search.done:  # search.levels(), but the search object may change (the restart)
        level = search.level
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.train.optimizer.lr, fused=True)
        batches = data.train.batches(recipe.train.batch_size, recipe.seed)
        for step in range(search.start_step + 1, recipe.train.iterations + 1):
            train_step(model, optimizer, batches)
            search.step(step)
            if level == restart_at and step == recipe.train.iterations // 2:
                state = search.state_dict()
                search = compress.LotterySearch(model, recipe)
                search.load_state_dict(state)
        search.prune_and_rewind()
    return search, next(data.train.batches(recipe.train.batch_size, recipe.seed))[0]


@pytest.mark.parametrize("lottery", [{"rounds": 2, "controls": [], "rewind_to": 5},
                                     {"rounds": 2, "controls": [], "strategy": "at_init"}],
                         ids=["imp_rewind", "at_init"])
def test_own_loop_compute_equals_find_ticket_summary(tmp_path, make_recipe, lottery):
    recipe = make_recipe(lottery=lottery, prune={"method": "magnitude"})
    compress.find_ticket(recipe, tmp_path / "cli", progress=False)
    rounds = load_json(tmp_path / "cli" / paths.SUMMARY)["rounds"]

    search, inputs = _own_search(recipe, restart_at=1)
    rows = search.report(example_batch=inputs)["compute"]
    assert [row["level"] for row in rows] == [entry["round"] for entry in rounds] == [0, 1, 2]
    for row, entry in zip(rows, rounds, strict=True):
        assert {key: row[key] for key in FIELDS} == {key: entry[key] for key in FIELDS}, row["level"]
    # imp: cumulative over the chain; a level after a rewind to 5 trains 55 steps
    expected = [60, 60, 60] if lottery.get("strategy") == "at_init" else [60, 55, 55]
    assert [row["iterations_trained"] for row in rows] == expected


def test_without_a_batch_report_counts_steps_and_their_sum(make_recipe):
    recipe = make_recipe(lottery={"rounds": 2, "controls": [], "rewind_to": 5})
    search, _ = _own_search(recipe)
    compute = search.report()["compute"]
    assert [c["iterations_trained"] for c in compute] == [60, 55, 55]
    assert [c["compute_to_ticket"] for c in compute] == [{"iterations": 60}, {"iterations": 115},
                                                         {"iterations": 170}]
    assert "train_flops" not in compute[0]


def test_a_level_in_progress_reports_its_steps_so_far(make_recipe):
    recipe = make_recipe(lottery={"rounds": 2, "controls": []})
    model = build_model(recipe.model, 10, 1, 28, seed=0)
    search = compress.LotterySearch(model, recipe)
    for _ in range(60 + 7):  # level 0, then 7 steps of level 1
        search.on_step()
    compute = search.report(example_batch=torch.randn(4, 1, 28, 28))["compute"]
    assert [c["iterations_trained"] for c in compute] == [60, 7]
    assert compute[1]["train_flops_sparse"] < compute[1]["train_flops"] == compute[0]["train_flops"] * 7 / 60


def test_early_bird_level_counts_the_steps_to_its_stop(make_recipe):
    recipe = make_recipe(lottery={"rounds": 2, "controls": [], "early_bird": {"every": 2, "distance": 0.5,
                                                                             "patience": 2}})
    model = build_model(recipe.model, 10, 1, 28, seed=0)
    search = compress.LotterySearch(model, recipe)
    while not search.done:
        search.on_step()
    compute = search.report()["compute"]
    stop = search.early_bird_steps[0]
    assert stop is not None and compute[0]["iterations_trained"] == compute[0]["early_bird_step"] == stop < 60
    assert compute[1]["compute_to_ticket"]["iterations"] == stop + compute[1]["iterations_trained"]


@pytest.mark.parametrize("batch", [torch.randn(784), "images", torch.randn(2, 3, 32, 32)],
                         ids=["unbatched", "not_a_tensor", "wrong_shape"])
def test_a_batch_that_is_not_the_models_input_is_one_line(make_recipe, batch):
    recipe = make_recipe(lottery={"rounds": 1, "controls": []})
    search = compress.LotterySearch(build_model(recipe.model, 10, 1, 28, seed=0), recipe)
    search.on_step()
    with pytest.raises(UserError, match=r"report\(example_batch=\.\.\.\)"):
        search.report(example_batch=batch)
