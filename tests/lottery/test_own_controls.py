"""Controls from one's own loop: ``search.control_models`` builds them as find_ticket.py does, and
``record`` / ``report()["levels"]`` show them (a control the recipe asks for and nobody recorded: None)."""

from __future__ import annotations

import pytest
import torch
from tiny import train_step

import compress
from compress import paths
from compress.data import load_dataset
from compress.errors import UserError
from compress.models import build_model


def _train(model, data, recipe, start: int) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.train.optimizer.lr, fused=True)
    batches = data.train.batches(recipe.train.batch_size, recipe.seed)
    for _ in range(start):  # the data order resumes at the rewind point, as the toolkit's loop does
        next(batches)
    for _step in range(start + 1, recipe.train.iterations + 1):
        train_step(model, optimizer, batches)


def test_own_loop_controls_are_find_tickets_bit_for_bit(tmp_path, make_recipe):
    recipe = make_recipe(lottery={"rounds": 1, "controls": ["reinit", "random_prune"]})
    compress.find_ticket(recipe, tmp_path / "cli", progress=False, executor="inline")

    data = load_dataset(recipe.data, recipe.seed, "cpu")

    def make_model(seed):
        return build_model(recipe.model, data.num_classes, data.in_channels, data.image_size, seed=seed)

    search = compress.LotterySearch(make_model(recipe.seed), recipe)
    with pytest.raises(UserError, match="level 0 is the dense network"):
        search.control_models(make_model)
    for level in search.levels():
        _train(search.model, data, recipe, search.start_step)
        search.record("ticket", accuracy=0.5)
        if level > 0:
            for name, control in search.control_models(make_model).items():
                folder = paths.experiment_dir(tmp_path / "cli", level, name)
                cli_masks = torch.load(folder / paths.MASK, weights_only=True)
                for layer, mask in cli_masks.items():
                    assert torch.equal(dict(control.named_modules())[layer].weight_mask, mask), (name, layer)
                _train(control, data, recipe, search.start_step)
                final = torch.load(folder / paths.FINAL, weights_only=True)
                for key, value in control.state_dict().items():
                    assert torch.equal(value, final[key]), (name, key)
                if name == "reinit":
                    search.record(name, accuracy=0.1)
        search.prune_and_rewind()
    rows = search.report()["levels"]
    assert [row["level"] for row in rows] == [0, 1]
    assert rows[1]["reinit"] == {"accuracy": 0.1} and rows[1]["random_prune"] is None  # not recorded: shows
    restored = compress.LotterySearch(make_model(recipe.seed), recipe)
    restored.load_state_dict(search.state_dict())
    assert restored.report()["levels"] == rows


def test_a_restored_watched_search_refuses_to_rewind_until_watched_again(make_recipe):
    recipe = make_recipe(lottery={"rounds": 1, "controls": [], "rewind_to": 2}, train={"iterations": 4})
    model = build_model(recipe.model, 10, 1, 28, seed=0)
    search = compress.LotterySearch(model, recipe)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)
    search.watch(optimizer, scheduler)
    for _ in range(3):
        search.on_step()
    state = search.state_dict()
    assert state["watched"] == [True, True]

    restored = compress.LotterySearch(build_model(recipe.model, 10, 1, 28, seed=0), recipe)
    restored.load_state_dict(state)
    with pytest.raises(UserError, match=r"saved watching an optimizer and scheduler: call search.watch"):
        restored.on_step()
    assert restored.level == 0 and restored.step_count == 3  # the refusal changed nothing
    optimizer2 = torch.optim.SGD(restored.model.parameters(), lr=0.1)
    restored.watch(optimizer2, torch.optim.lr_scheduler.StepLR(optimizer2, 1, 0.5))
    assert restored.on_step().level_finished and restored.level == 1
