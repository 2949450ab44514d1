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
from compress.lottery.search import OFFLOAD_MARGIN, memory_need
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
        assert "needs at least 0." in done.stdout and "Traceback" not in done.stdout + done.stderr


def _search_run(offload: bool | None) -> tuple[dict, dict, bool]:
    """Two levels of a few SGD steps with rewinding to step 1: the masks, the weights, whether it offloaded."""
    torch.manual_seed(0)
    model = _model()
    recipe = recipe_from_dict(tiny_recipe(lottery={"rounds": 2, "rewind_to": 1}, train={"iterations": 3}))
    search = LotterySearch(model, recipe, offload_rewind=offload)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 1, 28, 28, generator=generator), torch.randint(0, 10, (8,), generator=generator)
    for _level in search.levels():
        search.reset_optimizer(optimizer)
        for i in range(1, 4):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            search.step(i)
        with open("/proc/self/maps") as handle:  # the offloaded point: a mapped, already deleted file (remapped
            mapped = any("compress-" in line and "(deleted)" in line for line in handle)  # after each rewind)
        assert mapped == search.offload_rewind
        search.prune_and_rewind()
    return search.masks, {k: v.clone() for k, v in model.state_dict().items()}, search.offload_rewind


def test_an_offloaded_rewind_point_gives_the_same_ticket_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR is read again
    masks, weights, offloaded = _search_run(offload=True)
    assert offloaded and not list(tmp_path.glob("compress-*"))  # nothing left behind
    same_masks, same_weights, in_memory = _search_run(offload=False)
    assert not in_memory
    assert all(torch.equal(masks[k], same_masks[k]) for k in masks)
    assert all(torch.equal(weights[k], same_weights[k]) for k in weights)


def test_the_rewind_point_is_offloaded_only_when_memory_is_short(monkeypatch):
    model = _model()
    need = memory_need(model, ["1", "3", "5"])
    rewind = sum(p.numel() for p in model.parameters()) * 4
    margin = int(need * OFFLOAD_MARGIN)  # training adds activations and the optimizer's state
    monkeypatch.setattr(runtime, "available_memory", lambda device: margin)
    assert not LotterySearch(_model(), recipe_from_dict(tiny_recipe())).offload_rewind
    monkeypatch.setattr(runtime, "available_memory", lambda device: margin - 1)
    assert LotterySearch(_model(), recipe_from_dict(tiny_recipe())).offload_rewind
    monkeypatch.setattr(runtime, "available_memory", lambda device: need - rewind)
    assert LotterySearch(_model(), recipe_from_dict(tiny_recipe())).offload_rewind
    monkeypatch.setattr(runtime, "available_memory", lambda device: need - rewind - 1)
    with pytest.raises(UserError, match="needs at least"):
        LotterySearch(_model(), recipe_from_dict(tiny_recipe()))


_UNDER_A_BUDGET = """
import json, os, sys
import torch
from compress.errors import UserError
from compress.lottery import LotterySearch
from compress.recipe import recipe_from_dict

model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 6000), torch.nn.Linear(6000, 6000),
                            torch.nn.Linear(6000, 10))  # 163 MB of weights: the search needs ~650 MB more
recipe = recipe_from_dict(json.loads(sys.argv[1]))
try:
    LotterySearch(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)), recipe)  # imports what it needs
    if sys.argv[2] != "-":  # the budget: what this process holds now + the room given
        with open("/proc/self/status") as handle:
            resident = next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:")) / 1024
        os.environ["COMPRESS_MEMORY_LIMIT_MB"] = str(int(resident + int(sys.argv[2])))
    search = LotterySearch(model, recipe)
except UserError as error:
    print(error)
    sys.exit(3)
print("offloaded" if search.offload_rewind else "in memory")
"""


@pytest.mark.parametrize("room_mb, code, said", [("100", 3, "under COMPRESS_MEMORY_LIMIT_MB="),
                                                 ("540", 0, "offloaded"), ("1200", 0, "in memory"),
                                                 ("-", 3, "COMPRESS_MEMORY_LIMIT_MB='lots': expected a positive")])
def test_a_memory_limit_in_the_environment_is_a_budget_for_real(room_mb, code, said):
    """COMPRESS_MEMORY_LIMIT_MB = the resident memory before the search + ``room_mb``: the search (~650 MB: 2 x
    163 for masks and masked weights, 163 of gradients, 163 of rewind point; ~820 with the offload margin) is
    refused, offloads its rewind point (what does not fit) or keeps it in memory; a malformed limit is one
    line."""
    recipe = tiny_recipe(prune={"rates": {"linear": 0.2, "output": 0.1}})
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    env.pop(runtime.SKIP_MEMORY_CHECK, None)
    env.pop(runtime.MEMORY_LIMIT, None)
    if room_mb == "-":
        env[runtime.MEMORY_LIMIT] = "lots"
    done = subprocess.run([sys.executable, "-c", _UNDER_A_BUDGET, json.dumps(recipe), room_mb], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == code, done.stderr[-2000:]
    assert said in done.stdout and "Traceback" not in done.stdout + done.stderr


class _Residual(torch.nn.Module):
    """A graph (not an nn.Sequential): channel granularity traces and probes it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(16, 16, 3, padding=1)
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        return self.head((y + self.conv2(y)).mean((2, 3)))


def test_a_channel_plan_that_cannot_fit_is_refused_before_the_model_is_traced(monkeypatch):
    """The plan's compaction probe holds two plain copies of the model at once: that bound needs no plan."""
    from compress.lottery.planning import plan_memory_need

    recipe = recipe_from_dict(tiny_recipe(prune={"granularity": "channel", "rates": {"conv": 0.5}}))
    model = _Residual()
    copies = plan_memory_need(model, recipe)
    assert copies == 2 * sum(p.numel() for p in model.parameters()) * 4
    assert plan_memory_need(_model(), recipe) == 0  # an nn.Sequential keeps per-layer channels: no graph plan
    traced = []
    import compress.lottery.planning as planning
    monkeypatch.setattr(planning, "channel_plan", lambda *a, **k: traced.append(1))
    monkeypatch.setattr(runtime, "available_memory", lambda device: copies - 1)
    with pytest.raises(UserError, match=r"LotterySearch \(_Residual: channel plan.*needs at least"):
        LotterySearch(model, recipe, example_inputs=torch.randn(2, 3, 8, 8))
    assert not traced and not hasattr(model.conv1, "weight_orig")
