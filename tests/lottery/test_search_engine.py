"""LotterySearch as the one IMP engine: step-driven loops, checkpoints across processes, the CLI's masks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from tests_paths import REPO
from tiny import tiny_recipe

import compress
from compress import paths
from compress.data import load_dataset
from compress.errors import UserError
from compress.models import build_model, create_model

# A user's own loop with an ordinary checkpoint {model, optimizer, scheduler, search}. Batches are a
# pure function of (level, step), as a resumable loop's must be. Modes: full (to the end), stop (save a
# checkpoint at level/step and exit, like a kill right after it), resume (a fresh process continues it),
# resume-late (the same, watching the scheduler only after everything is loaded, as trainer callbacks do).
USER_LOOP = r'''
import json, sys
import torch
import torch.nn.functional as F
from compress.lottery import LotterySearch
from compress.models import create_model
from compress.recipe import recipe_from_dict

torch.set_num_threads(1)
mode, recipe_json, folder, stop_level, stop_step = sys.argv[1:]
recipe = recipe_from_dict(json.loads(recipe_json))
torch.manual_seed(0)
model = create_model("lenet300_100")
search = LotterySearch(model, recipe)   # before model.load_state_dict: it installs the prune reparametrisation
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
if mode != "resume-late":
    search.watch(optimizer, scheduler)
if mode.startswith("resume"):
    checkpoint = torch.load(folder + "/checkpoint.pt", weights_only=True)
    search.load_state_dict(checkpoint["search"])
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    search.watch(optimizer, scheduler)  # the schedule's start comes from the search state
while not search.done:
    if mode == "stop" and (search.level, search.step_count) == (int(stop_level), int(stop_step)):
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "search": search.state_dict()}, folder + "/checkpoint.pt")
        sys.exit(0)
    g = torch.Generator().manual_seed(1000 * search.level + search.step_count)
    x, y = torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    search.on_step()
torch.save({"masks": search.masks, "model": model.state_dict(), "lr": scheduler.get_last_lr()},
           folder + "/" + mode.split("-")[0] + ".pt")
'''


def _run_loop(tmp_path, mode: str, recipe: dict, stop: tuple[int, int] = (-1, -1)) -> None:
    script = tmp_path / "user_loop.py"
    script.write_text(USER_LOOP)
    result = subprocess.run([sys.executable, str(script), mode, json.dumps(recipe), str(tmp_path), *map(str, stop)],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize(("rewind_to", "stop", "resume"), [(0, (1, 6), "resume"), (4, (1, 8), "resume"),
                                                       (4, (1, 5), "resume-late"), (4, (2, 4), "resume")])
def test_a_checkpoint_mid_level_resumes_bit_for_bit_in_a_fresh_process(tmp_path, rewind_to, stop, resume):
    recipe = tiny_recipe(train={"iterations": 12}, lottery={"rounds": 2, "rewind_to": rewind_to, "controls": []})
    _run_loop(tmp_path, "full", recipe)
    _run_loop(tmp_path, "stop", recipe, stop)
    _run_loop(tmp_path, resume, recipe)
    full = torch.load(tmp_path / "full.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resume.pt", weights_only=True)
    assert set(full["masks"]) == set(resumed["masks"])
    for name, mask in full["masks"].items():
        assert torch.equal(mask, resumed["masks"][name]), name
        assert 0 < int(mask.sum()) < mask.numel()
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert full["lr"] == resumed["lr"]


def test_a_step_driven_loop_finds_the_masks_of_find_ticket(tmp_path, make_recipe):
    recipe = make_recipe(lottery={"rounds": 2, "rewind_to": 5, "controls": []})
    compress.find_ticket(recipe, tmp_path / "cli", progress=False)

    data = load_dataset(recipe.data, recipe.seed, "cpu")
    model = build_model(recipe.model, data.num_classes, data.in_channels, data.image_size, seed=recipe.seed)
    search = compress.LotterySearch(model, recipe)
    # built once: watch() clears its state at every rewind, as a fresh optimizer would start
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.train.optimizer.lr, fused=True)
    search.watch(optimizer)
    events = []
    level, batches = None, None
    while not search.done:
        if search.level != level:  # a new level resumes the batch stream where the level starts
            level, batches = search.level, data.train.batches(recipe.train.batch_size, recipe.seed,
                                                              start=search.step_count)
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        events.append(search.on_step())

    assert [e.step for e in events if e.snapshot_taken] == [5]
    assert [(e.step, e.level, e.done) for e in events if e.level_finished] == [(60, 1, False), (60, 2, False),
                                                                               (60, 2, True)]
    assert len(events) == 60 + 2 * 55
    cli = torch.load(paths.round_dir(tmp_path / "cli", 2) / paths.MASK, weights_only=True)
    own = search.masks
    assert set(own) == set(cli)
    for name, mask in cli.items():
        assert torch.equal(own[name], mask), name
    with pytest.raises(UserError, match="after the search is done"):
        search.on_step()


def test_a_state_of_another_recipe_is_refused_and_changes_nothing(make_recipe, tmp_path):
    torch.manual_seed(0)
    model = create_model("lenet300_100")
    search = compress.LotterySearch(model, make_recipe(lottery={"rounds": 2}))
    search.prune_and_rewind()
    torch.save(search.state_dict(), tmp_path / "search.pt")
    state = torch.load(tmp_path / "search.pt", weights_only=True)  # plain tensors and values only

    other = compress.LotterySearch(create_model("lenet300_100"), make_recipe(prune={"rates": {"linear": 0.3}}))
    before = other.masks
    with pytest.raises(UserError, match="other settings.*prune"):
        other.load_state_dict(state)
    assert all(torch.equal(before[name], mask) for name, mask in other.masks.items())
    assert other.level == 0

    fresh = compress.LotterySearch(create_model("lenet300_100"), make_recipe(lottery={"rounds": 2}))
    fresh.load_state_dict(state)
    assert fresh.level == 1 and fresh.step_count == fresh.start_step == 0
    assert all(torch.equal(search.masks[name], mask) for name, mask in fresh.masks.items())
    fresh.model.load_state_dict(search.model.state_dict())  # a pruned checkpoint loads once the search exists
