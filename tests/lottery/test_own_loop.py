"""A hand-written training loop driven through the public API finds the CLI's masks."""

from __future__ import annotations

import torch
from tiny import train_step

import compress
from compress import paths
from compress.data import load_dataset
from compress.models import build_model


def test_hand_written_loop_matches_find_ticket(tmp_path, make_recipe):
    recipe = make_recipe(lottery={"rounds": 2, "controls": []})
    compress.find_ticket(recipe, tmp_path / "cli", progress=False)

    data = load_dataset(recipe.data, recipe.seed, "cpu")
    model = build_model(recipe.model, data.num_classes, data.in_channels, data.image_size, seed=recipe.seed)
    search = compress.LotterySearch(model, recipe)
    for _level in search.levels():
        # fresh state per level; fused=True because that is what the toolkit's own loop builds
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.train.optimizer.lr, fused=True)
        batches = data.train.batches(recipe.train.batch_size, recipe.seed)
        for step in range(1, recipe.train.iterations + 1):
            train_step(model, optimizer, batches)
            search.step(step)
        search.prune_and_rewind()

    cli_masks = torch.load(paths.round_dir(tmp_path / "cli", 2) / paths.MASK, weights_only=False)
    own_masks = search.masks
    assert set(own_masks) == set(cli_masks)
    for name, mask in cli_masks.items():
        assert torch.equal(own_masks[name], mask), name
    assert 0.6 < search.report()["weights_remaining"] < 0.7
