"""Helper run by test_torchrun.py, under torchrun or as one process: ``train()`` a pruned BatchNorm model.

    python ddp_train.py RECIPE.json OUT.pt [float64|float32]

Every rank builds the same model, prunes the same random 30% of every conv/linear weight (the
reparametrisation installed before ``train`` wraps the model in DDP), trains it, and checks that
the modules and the parameter objects are the ones it started with (the BatchNorm swap is undone and
never touches the pruned ``weight_orig``). Rank 0 writes the state dict and the history to OUT.pt.
"""

from __future__ import annotations

import json
import sys

import torch

from compress import distributed
from compress.data import load_dataset
from compress.io import save_torch
from compress.models import create_model
from compress.pruning import apply_masks, prunable_modules
from compress.recipe import recipe_from_dict
from compress.training import train


def main() -> None:
    recipe = recipe_from_dict(json.loads(open(sys.argv[1]).read()))
    dtype = getattr(torch, sys.argv[3] if len(sys.argv) > 3 else "float64")
    distributed.init_from_env()
    data = load_dataset(recipe.data, recipe.seed, "cpu")
    for split in (data.train, data.val, data.test):
        split.images = split.images.to(dtype)
    torch.manual_seed(recipe.seed)
    model = create_model(recipe.model.name, num_classes=data.num_classes, in_channels=data.in_channels).to(dtype)
    generator = torch.Generator().manual_seed(5)
    apply_masks(model, {name: (torch.rand(module.weight.shape, generator=generator) > 0.3).to(dtype)
                        for name, module in prunable_modules(model)})
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    assert any(name.endswith("weight_orig") for name in params)
    result = train(model, data, recipe.train, recipe.seed, progress=False)
    after = dict(model.named_modules())
    assert after.keys() == modules.keys() and all(after[k] is modules[k] for k in after), "modules not restored"
    after = dict(model.named_parameters())
    assert after.keys() == params.keys() and all(after[k] is params[k] for k in after), "parameters replaced"
    if distributed.is_main():
        save_torch({"state": model.state_dict(), "history": result.history}, sys.argv[2])


if __name__ == "__main__":
    main()
