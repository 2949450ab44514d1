"""A tiny recipe shared by the lottery tests (imported by name: pytest puts this folder on sys.path)."""

import torch.nn.functional as F


def train_step(model, optimizer, batches) -> None:
    """One optimizer step of a hand-written loop on the next ``(x, y)`` of ``batches``."""
    x, y = next(batches)
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def tiny_recipe(**sections) -> dict:
    """LeNet-300-100 on the synthetic set: seconds per round."""
    base = {
        "name": "tiny",
        "seed": 0,
        "model": {"name": "lenet300_100"},
        "data": {"name": "synthetic", "validation_size": 100},
        "train": {"iterations": 60, "batch_size": 32, "eval_every": 20, "checkpoint_every": 20,
                  "eval_batch_size": 500, "optimizer": {"name": "adam", "lr": 1.2e-3}},
        "prune": {"rates": {"linear": 0.2, "output": 0.1}},
        "lottery": {"rounds": 3, "controls": ["reinit", "random_prune"]},
        "export": {"onnx": False},
    }
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values} if isinstance(values, dict) else values
    return base


