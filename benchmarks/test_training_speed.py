"""Training speed against hand-written PyTorch doing the same work, measured in the same process.

1. Loop throughput: compress.train vs a plain loop over the same in-memory Fashion-MNIST tensors
   (LeNet-300-100, batch 60, Adam 1.2e-3, one evaluation at the end in both).
2. Masking overhead: one training step of a pruned model (torch.nn.utils.prune hooks) vs unpruned.
3. A full IMP run (3,000 iterations per round, 5 rounds, reinit control) via compress.find_ticket
   vs a hand-written IMP with torch.nn.utils.prune doing the same trainings, evaluations and pruning.

Results go to benchmarks/results/training_speed.json (ratios; the machine in machine.json).
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as prune

from compress.data import load_dataset
from compress.io import load_json, save_json
from compress.lottery import find_ticket
from compress.models import create_model
from compress.pruning import apply_masks
from compress.recipe import recipe_from_dict
from compress.recipe.schema import OptimizerConfig
from compress.runtime import set_threads
from compress.training import build_optimizer, evaluate, train

RESULTS = Path(__file__).parent / "results" / "training_speed.json"
ITERATIONS = 2000
IMP = {"iterations": 3000, "rounds": 5}


def _recipe(**train_overrides) -> object:
    return recipe_from_dict({
        "name": "bench_training",
        "data": {"name": "fashion_mnist"},
        "train": {"iterations": ITERATIONS, "batch_size": 60, "eval_every": ITERATIONS, "checkpoint_every": 10**9,
                  "optimizer": {"name": "adam", "lr": 1.2e-3}, **train_overrides},
        "prune": {"rates": {"linear": 0.2, "output": 0.1}},
        "lottery": {"rounds": IMP["rounds"], "controls": ["reinit"]},
        "export": {"onnx": False},
    })


@pytest.fixture(scope="module")
def data():
    set_threads()
    return load_dataset(_recipe().data, 0, "cpu")


def _record(key: str, value: dict) -> None:
    results = load_json(RESULTS) if RESULTS.exists() else {}
    results[key] = {**value, "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()}
    save_json(results, RESULTS)


def _best_of(function, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return min(times)


def hand_written_train(model, images, labels, test, iterations: int, seed: int) -> float:
    """What a user would write: shuffle each epoch, index a batch, step Adam; evaluate at the end."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1.2e-3)
    generator = torch.Generator().manual_seed(seed)
    per_epoch = len(labels) // 60
    order = torch.randperm(len(labels), generator=generator)
    for step in range(iterations):
        if step and step % per_epoch == 0:
            order = torch.randperm(len(labels), generator=generator)
        index = order[(step % per_epoch) * 60:(step % per_epoch + 1) * 60]
        loss = F.cross_entropy(model(images[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (model(test.images).argmax(1) == test.labels).float().mean().item()


def test_training_loop_throughput(benchmark, data):
    recipe = _recipe()
    images, labels = data.train.images, data.train.labels

    def toolkit():
        train(create_model("lenet300_100"), data, recipe.train, seed=0, progress=False)

    def plain():
        hand_written_train(create_model("lenet300_100"), images, labels, data.test, ITERATIONS, 0)

    plain()  # warm-up (thread pools, allocator)
    baseline = _best_of(plain)
    ours = benchmark.pedantic(toolkit, rounds=3, iterations=1, warmup_rounds=1)
    ours = benchmark.stats.stats.min
    ratio = baseline / ours
    _record("training_loop", {
        "what": f"LeNet-300-100, Fashion-MNIST in memory, batch 60, Adam, {ITERATIONS} iterations, best of 3",
        "toolkit_it_per_s": ITERATIONS / ours, "hand_written_it_per_s": ITERATIONS / baseline,
        "speed_ratio_toolkit_over_hand_written": ratio,
    })
    print(f"\ntoolkit {ITERATIONS / ours:.0f} it/s, hand-written {ITERATIONS / baseline:.0f} it/s, ratio {ratio:.3f}")


def test_masking_overhead_per_step(benchmark, data):
    x, y = data.train.images[:60], data.train.labels[:60]
    dense = create_model("lenet300_100")
    masked = copy.deepcopy(dense)
    apply_masks(masked, {name: (torch.rand_like(m.weight) > 0.9).float() for name, m in masked.named_modules()
                         if isinstance(m, torch.nn.Linear)})

    def steps(model, optimizer, count=500):
        def run():
            for _ in range(count):
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return run

    # the toolkit's optimizer (fused Adam) on both sides: this isolates the cost of the prune hooks
    dense_run = steps(dense, build_optimizer(dense.parameters(), OptimizerConfig()))
    masked_run = steps(masked, build_optimizer(masked.parameters(), OptimizerConfig()))
    dense_run()
    baseline = _best_of(dense_run, 5)
    benchmark.pedantic(masked_run, rounds=5, iterations=1, warmup_rounds=1)
    overhead = benchmark.stats.stats.min / baseline - 1
    _record("masking_overhead", {"what": "500 fused-Adam steps, LeNet-300-100, batch 60, masks on all Linear layers "
                                 "(torch.nn.utils.prune) vs the same model unpruned, best of 5",
                                 "overhead_fraction": overhead})
    print(f"\nmasking overhead per step: {overhead * 100:.1f}%")


def hand_written_imp(data, rounds: int, iterations: int) -> None:
    """IMP by hand with torch.nn.utils.prune: train, prune 20%/10%, rewind to init, reinit control."""
    torch.manual_seed(0)
    model = create_model("lenet300_100")
    init = copy.deepcopy(model.state_dict())
    layers = [model[1], model[3], model[5]]
    images, labels = data.train.images, data.train.labels

    def train_and_eval(net):
        hand_written_train(net, images, labels, data.test, iterations, 0)
        for point in range(0, iterations, 100):  # same evaluation cadence as the toolkit (val + test)
            del point
            evaluate(net, data.val, 1000)
            evaluate(net, data.test, 1000)

    train_and_eval(model)
    for round_index in range(1, rounds + 1):
        for layer, amount in zip(layers, (0.2, 0.2, 0.1), strict=True):
            prune.l1_unstructured(layer, "weight", amount=amount)
        with torch.no_grad():
            for name, layer in zip(("1", "3", "5"), layers, strict=True):
                layer.weight_orig.copy_(init[f"{name}.weight"])
                layer.bias.copy_(init[f"{name}.bias"])
        train_and_eval(model)
        torch.manual_seed(round_index + 1)
        control = create_model("lenet300_100")
        for layer, original in zip([control[1], control[3], control[5]], layers, strict=True):
            prune.custom_from_mask(layer, "weight", original.weight_mask)
        train_and_eval(control)


def test_full_imp_run_against_hand_written(benchmark, data, tmp_path):
    recipe = _recipe(iterations=IMP["iterations"], eval_every=100)
    runs = iter(range(100))

    def toolkit():
        find_ticket(recipe, tmp_path / f"run{next(runs)}", progress=False)

    began = time.perf_counter()
    hand_written_imp(data, IMP["rounds"], IMP["iterations"])
    baseline = time.perf_counter() - began
    benchmark.pedantic(toolkit, rounds=1, iterations=1)
    ours = benchmark.stats.stats.min
    _record("full_imp", {
        "what": f"LeNet-300-100 on Fashion-MNIST, {IMP['iterations']} iterations/round, {IMP['rounds']} rounds, "
                "reinit control, eval every 100; toolkit includes data loading, checkpoints, reports and ticket",
        "toolkit_s": ours, "hand_written_s": baseline, "wall_time_ratio_toolkit_over_hand_written": ours / baseline,
    })
    print(f"\nfull IMP: toolkit {ours:.1f}s, hand-written {baseline:.1f}s, ratio {ours / baseline:.3f}")
