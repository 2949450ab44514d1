"""A Trainer-built schedule (it spans max_steps, all levels) becomes one fresh training's per level."""

from __future__ import annotations

import pytest
import torch

from compress.recipe import PARTIAL_SECTIONS, recipe_from_dict


def test_trainer_schedule_is_resized_to_a_level_and_rewound():
    transformers = pytest.importorskip("transformers")
    from compress.integrations.transformers import LotteryTicketCallback, per_level_schedule

    recipe = recipe_from_dict({"train": {"iterations": 10}, "lottery": {"rounds": 2, "rewind_to": 3}},
                              sections=PARTIAL_SECTIONS)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    callback = LotteryTicketCallback(recipe, model)
    args = transformers.TrainingArguments(output_dir="unused", max_steps=callback.total_steps, warmup_steps=0.2,
                                          use_cpu=True, report_to=[])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    # what Trainer.create_scheduler builds: a linear decay over max_steps (24 steps, 3 levels)
    scheduler = transformers.get_scheduler("linear", optimizer, num_warmup_steps=args.get_warmup_steps(24),
                                           num_training_steps=24)
    assert per_level_schedule(scheduler, callback.iterations, args)
    assert not per_level_schedule(torch.optim.lr_scheduler.StepLR(optimizer, 1), 10, args)  # not the Trainer's
    callback.search.watch(optimizer, scheduler)
    level0 = []
    for _ in range(callback.iterations):
        level0.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        callback.search.on_step()
    # warm-up of 2 steps (20% of one level), then down to 0 at the level's end: a fresh training's schedule
    assert level0[0] == 0 and level0[2] == max(level0) == 1.0 and level0[-1] == pytest.approx(1 / 8)
    level1 = [optimizer.param_groups[0]["lr"]]
    for _ in range(callback.iterations - recipe.lottery.rewind_to - 1):
        optimizer.step()
        scheduler.step()
        callback.search.on_step()
        level1.append(optimizer.param_groups[0]["lr"])
    assert callback.search.level == 1
    assert level1 == level0[recipe.lottery.rewind_to:]  # each level replays the schedule from rewind_to on
