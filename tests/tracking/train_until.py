"""Train the tiny recipe with trackers, sending itself ``signal`` after iteration ``kill_at`` (0 = never).

    python train_until.py <folder> <kill_at> <logger,logger,...> [KILL|INT]
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lottery"))
from tiny import tiny_recipe  # noqa: E402

from compress.data import load_dataset  # noqa: E402
from compress.models import build_model  # noqa: E402
from compress.recipe import recipe_from_dict  # noqa: E402
from compress.tracking import open_tracker, recipe_params  # noqa: E402
from compress.training import train  # noqa: E402


def main() -> None:
    folder, kill_at, names = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
    how = getattr(signal, f"SIG{sys.argv[4] if len(sys.argv) > 4 else 'KILL'}")
    if how == signal.SIGINT:
        # a process started from a background job inherits SIGINT ignored, and Python then leaves it so:
        # the Ctrl-C this test stands for must raise KeyboardInterrupt wherever the suite is run from
        signal.signal(signal.SIGINT, signal.default_int_handler)
    recipe = recipe_from_dict(tiny_recipe(train={"iterations": 60, "eval_every": 10, "checkpoint_every": 25,
                                                 "schedule": {"name": "cosine", "warmup": 5}}))
    data = load_dataset(recipe.data, recipe.seed, torch.device("cpu"))
    model = build_model(recipe.model, data.num_classes, data.in_channels, data.image_size, seed=0)

    def on_step(iteration: int) -> None:
        if iteration == kill_at:
            os.kill(os.getpid(), how)

    folder.mkdir(parents=True, exist_ok=True)
    tracker = open_tracker(names, folder, run_dir=folder, name="train", params=recipe_params(recipe))
    with tracker:
        train(model, data, recipe.train, recipe.seed, metrics_path=folder / "metrics.jsonl",
              checkpoint_path=folder / "checkpoint.pt", on_step=on_step, progress=False, tracker=tracker)


if __name__ == "__main__":
    main()
