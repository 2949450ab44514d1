"""A search that cannot fit is refused before anything is allocated, with one line instead of an OOM kill."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from tiny import tiny_recipe

from compress import runtime
from compress.errors import UserError
from compress.lottery import LotterySearch
from compress.lottery.search import memory_need
from compress.recipe import recipe_from_dict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 300), torch.nn.ReLU(),
                               torch.nn.Linear(300, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10))


def test_the_need_counts_masks_masked_weights_gradients_and_the_rewind_point():
    model = _model()
    weights = sum(m.weight.numel() for m in model if isinstance(m, torch.nn.Linear)) * 4
    everything = sum(p.numel() for p in model.parameters()) * 4
    assert memory_need(model, ["1", "3", "5"]) == 2 * weights + everything + everything
    LotterySearch(model, recipe_from_dict(tiny_recipe()))
    # masked already: no new mask or masked weight; a gradient present: none to allocate
    model[1].weight_orig.grad = torch.zeros_like(model[1].weight_orig)
    assert memory_need(model, ["1", "3", "5"]) == everything - model[1].weight_orig.numel() * 4 + everything
    tied = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 10))
    tied[1].weight = tied[0].weight  # a tied weight is one tensor: counted once
    assert memory_need(tied, []) == 2 * (100 + 10 + 10) * 4  # gradients and rewind point of 120 floats


def test_a_search_that_does_not_fit_is_refused_before_the_model_is_touched(monkeypatch):
    model = _model()
    monkeypatch.setattr(runtime, "available_memory", lambda device: 1 << 20)
    with pytest.raises(UserError, match=r"LotterySearch \(Sequential.*needs at least 0\.00 GiB more memory on cpu, "
                                        r"0\.00 GiB is available.*COMPRESS_SKIP_MEMORY_CHECK=1"):
        LotterySearch(model, recipe_from_dict(tiny_recipe()))
    assert not hasattr(model[1], "weight_orig")
    monkeypatch.setenv(runtime.SKIP_MEMORY_CHECK, "1")
    LotterySearch(model, recipe_from_dict(tiny_recipe()))
    assert hasattr(model[1], "weight_orig")


_UNDER_A_LIMIT = """
import json, resource, sys
import torch
from compress.errors import UserError
from compress.lottery import LotterySearch
from compress.recipe import recipe_from_dict

model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 4000), torch.nn.Linear(4000, 4000),
                            torch.nn.Linear(4000, 10))  # 77 MB of weights: the search needs ~300 MB more
recipe = recipe_from_dict(json.loads(sys.argv[1]))
with open("/proc/self/status") as handle:
    size = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + int(sys.argv[2]) * 2**20, resource.RLIM_INFINITY))
try:
    search = LotterySearch(model, recipe)
except UserError as error:
    print(error)
    sys.exit(3)
print("ok")
"""


@pytest.mark.parametrize("room_mb, code", [(100, 3), (3000, 0)])
def test_an_address_space_limit_is_honoured_for_real(room_mb, code):
    recipe = tiny_recipe(prune={"rates": {"linear": 0.2, "output": 0.1}})
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    env.pop(runtime.SKIP_MEMORY_CHECK, None)
    done = subprocess.run([sys.executable, "-c", _UNDER_A_LIMIT, json.dumps(recipe), str(room_mb)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == code, done.stderr[-2000:]
    if code:
        assert "needs at least 0.2" in done.stdout and "Traceback" not in done.stdout + done.stderr
