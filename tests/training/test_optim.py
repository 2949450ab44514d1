"""Fused optimizer kernels where this torch has them, the same optimizer without them where it does not."""

from __future__ import annotations

import pytest
import torch

from compress.recipe.schema import OptimizerConfig
from compress.training import build_optimizer


def _params() -> list[torch.nn.Parameter]:
    return list(torch.nn.Linear(4, 3).parameters())


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_fused_where_available(name):
    if tuple(int(part) for part in torch.__version__.split(".")[:2]) < (2, 4):
        pytest.skip("CPU fused Adam/SGD arrived in torch 2.4")
    optimizer = build_optimizer(_params(), OptimizerConfig(name=name, lr=0.1, momentum=0.9))
    assert optimizer.defaults["fused"] is True


@pytest.mark.parametrize(("name", "cls", "error"), [
    ("adam", "Adam", RuntimeError("`fused=True` requires all the params to be floating point Tensors of "
                                  "supported devices: ['cuda', 'xpu', 'privateuseone']")),  # torch 2.1-2.3 on CPU
    ("sgd", "SGD", TypeError("SGD.__init__() got an unexpected keyword argument 'fused'")),  # torch < 2.3
])
def test_older_torch_without_cpu_fused_kernels_gets_the_plain_optimizer(monkeypatch, name, cls, error):
    original = getattr(torch.optim, cls)

    def like_old_torch(params, **kwargs):
        if "fused" in kwargs:
            raise error
        return original(params, **kwargs)

    monkeypatch.setattr(torch.optim, cls, like_old_torch)
    params = _params()
    optimizer = build_optimizer(params, OptimizerConfig(name=name, lr=0.1, momentum=0.9))
    assert isinstance(optimizer, original) and not optimizer.defaults.get("fused")
    params[0].grad = torch.ones_like(params[0])
    before = params[0].detach().clone()
    optimizer.step()
    assert not torch.equal(params[0], before)


def test_a_real_mistake_still_raises():
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum"):
        build_optimizer(_params(), OptimizerConfig(name="sgd", lr=0.1, momentum=0.0, nesterov=True))
