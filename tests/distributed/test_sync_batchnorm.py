"""In one process: the BatchNorm swap keeps parameter identity and prune masks, is undone, and computes
BatchNorm exactly; an uneven batch split is refused before any step."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from compress import distributed
from compress.data import load_dataset
from compress.errors import UserError
from compress.models import create_model
from compress.pruning import apply_masks, prunable_modules
from compress.recipe import recipe_from_dict
from compress.training import train


@pytest.fixture
def one_process_group(monkeypatch):
    """A real gloo group of one process, with ``active()`` forced on: the torchrun code paths, in pytest."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    monkeypatch.setattr(distributed, "active", lambda: True)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _pruned_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=1)
    generator = torch.Generator().manual_seed(1)
    apply_masks(model, {name: (torch.rand(module.weight.shape, generator=generator) > 0.3).float()
                        for name, module in prunable_modules(model)})
    return model


def test_swap_keeps_parameters_masks_and_state_dict_keys_and_is_undone(monkeypatch):
    monkeypatch.setattr(distributed, "active", lambda: True)
    model = _pruned_resnet()
    modules, params = dict(model.named_modules()), dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    keys = list(model.state_dict())
    with distributed.sync_batchnorm(model) as names:
        assert len(names) == 21 and "blocks.3.shortcut.1" in names
        swapped = dict(model.named_modules())
        assert all(isinstance(swapped[name], distributed.AllReduceBatchNorm) for name in names)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        during = dict(model.named_parameters())
        assert during.keys() == params.keys() and all(during[k] is params[k] for k in during)
        during = dict(model.named_buffers())  # masks and running statistics: the same tensors
        assert during.keys() == buffers.keys() and all(during[k] is buffers[k] for k in during)
        assert list(model.state_dict()) == keys
        assert swapped["conv"] is modules["conv"] and hasattr(swapped["conv"], "weight_orig")
    after = dict(model.named_modules())
    assert after.keys() == modules.keys() and all(after[k] is modules[k] for k in after)


def test_no_swap_in_one_process():
    model = _pruned_resnet()
    with distributed.sync_batchnorm(model) as names:
        assert names == [] and isinstance(model.bn, nn.BatchNorm2d)


def test_a_batchnorm_subclass_it_cannot_convert_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "active", lambda: True)

    class Custom(nn.BatchNorm2d):
        pass

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), Custom(4))
    plain = model[1]
    with pytest.raises(UserError, match=r"train\.sync_batchnorm: cannot synchronise '2' \(Custom\).*false"):
        with distributed.sync_batchnorm(model):
            pass
    assert model[1] is plain and isinstance(model[2], Custom)  # the swap done before the error is undone


@pytest.mark.parametrize("shape", [(12, 5, 3, 4), (9, 3), (6, 4, 2, 2, 2)])
def test_all_reduce_batchnorm_computes_batchnorm(one_process_group, shape):
    """Forward, input/weight/bias gradients and running statistics of ``nn.BatchNorm`` (float64)."""
    generator = torch.Generator().manual_seed(0)
    reference = {2: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[len(shape)](shape[1]).double()
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5, generator=generator)
        reference.bias.uniform_(-1, 1, generator=generator)
    synced = distributed.AllReduceBatchNorm.replacing(copy.deepcopy(reference))
    for _ in range(2):  # twice: the running statistics move
        x = (torch.randn(shape, generator=generator, dtype=torch.float64) * 3 + 1)
        weights = torch.randn(shape, generator=generator, dtype=torch.float64)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        out1, out2 = reference(x1), synced(x2)
        (out1 * weights).sum().backward()
        (out2 * weights).sum().backward()
        torch.testing.assert_close(out2, out1, rtol=0, atol=1e-12)
        torch.testing.assert_close(x2.grad, x1.grad, rtol=0, atol=1e-12)
    for name in ("weight", "bias"):
        torch.testing.assert_close(getattr(synced, name).grad, getattr(reference, name).grad, rtol=0, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(synced, name), getattr(reference, name), rtol=0, atol=1e-12)
    synced.eval(), reference.eval()
    torch.testing.assert_close(synced(x), reference(x), rtol=0, atol=1e-12)


def test_one_training_step_through_ddp_and_the_swap_is_batchnorm_training(one_process_group):
    model = _pruned_resnet().double()
    reference = copy.deepcopy(model)
    x = torch.randn(16, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.arange(16) % 10
    F.cross_entropy(reference(x), y).backward()
    with distributed.sync_batchnorm(model):
        F.cross_entropy(nn.parallel.DistributedDataParallel(model)(x), y).backward()
    for (name, param), other in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(param.grad, other.grad, rtol=0, atol=1e-12, msg=name)


def test_shard_and_check_refuse_an_uneven_split(monkeypatch):
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    distributed.check_batch_size(64)
    with pytest.raises(UserError, match=r"train\.batch_size=30 does not split evenly over 4 processes.*e\.g\. 32"):
        distributed.check_batch_size(30)
    x, y = distributed.shard(torch.arange(8), torch.arange(8))
    assert x.tolist() == [1, 5]
    with pytest.raises(UserError, match="does not split evenly"):
        distributed.shard(torch.arange(6), torch.arange(6))


def test_train_refuses_an_uneven_split_before_the_first_step(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    recipe = recipe_from_dict({"data": {"name": "synthetic", "validation_size": 100},
                               "train": {"iterations": 10, "batch_size": 32}})
    data = load_dataset(recipe.data, recipe.seed, "cpu")
    steps = []
    with pytest.raises(UserError, match=r"train\.batch_size=32 does not split evenly over 3 processes"):
        train(create_model("lenet300_100"), data, recipe.train, seed=0, on_step=steps.append, progress=False)
    assert steps == []
