"""A lottery ticket from your own training loop: your CNN, your DataLoader, your OneCycle schedule and
gradient clipping; the recipe gives only the pruning plan. With the recipe's controls trained by the
same loop, a checkpoint you can resume in a fresh process, and an ONNX file (~15 s on 2 CPU cores):

    python examples/own_loop.py                          # writes own_loop_out/
    python examples/own_loop.py --stop-after 50          # checkpoint at global step 50, then exit
    python examples/own_loop.py --resume own_loop_out/checkpoint.pt

``tests/integrations/test_user_examples.py`` runs this script.
"""

import argparse
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler, TensorDataset

import compress

ITERATIONS = int(os.environ.get("TICKET_ITERATIONS", "40"))  # steps per level
REWIND_TO = ITERATIONS // 5
BATCH = 32
parser = argparse.ArgumentParser()
parser.add_argument("--out", default="own_loop_out")
parser.add_argument("--stop-after", type=int, default=None, help="save a checkpoint after N steps and exit")
parser.add_argument("--resume", default=None)
options = parser.parse_args()
out = Path(options.out)
out.mkdir(exist_ok=True)

recipe = compress.recipe.recipe_from_dict({
    "seed": 0,
    "train": {"iterations": ITERATIONS},
    "prune": {"rates": {"conv": 0.2, "linear": 0.3, "output": 0.1}},
    "lottery": {"rounds": 2, "rewind_to": REWIND_TO, "controls": ["reinit", "random_prune"]},
}, sections=compress.recipe.PARTIAL_SECTIONS)


def make_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


class FromStep(Sampler):
    """Batch i of a level is the same batch at every level (the data order rewinds with the weights),
    and a resumed loop starts at any step: one seeded permutation per pass over the data."""

    def __init__(self, size: int, first_step: int) -> None:
        self.size, self.first_step = size, first_step

    def __len__(self) -> int:
        return (ITERATIONS - self.first_step) * BATCH

    def __iter__(self):
        position = self.first_step * BATCH
        for n in range(len(self)):
            epoch, offset = divmod(position + n, self.size)
            yield int(torch.randperm(self.size, generator=torch.Generator().manual_seed(epoch))[offset])


generator = torch.Generator().manual_seed(1)
images = torch.randn(600, 1, 12, 12, generator=generator)
labels = (images[:, 0, :6].mean((1, 2)) > 0).long() * 2 + (images[:, 0, :, :6].mean((1, 2)) > 0).long()
dataset = TensorDataset(images, labels)


def optimizer_and_schedule(model: nn.Module):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=ITERATIONS)


def train(model, optimizer, scheduler, first_step: int, on_step=None) -> None:
    """Steps first_step + 1 .. ITERATIONS of a level; ``on_step(i)`` after each optimizer step."""
    model.train()
    loader = DataLoader(dataset, batch_size=BATCH, sampler=FromStep(len(dataset), first_step))
    for i, (x, y) in enumerate(loader, start=first_step + 1):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if on_step is not None:
            on_step(i)


def accuracy(model) -> float:
    model.eval()
    with torch.no_grad():
        return (model(images).argmax(1) == labels).float().mean().item()


model = make_net()
search = compress.LotterySearch(model, recipe)        # installs the prune masks (before the optimizer)
optimizer, scheduler = optimizer_and_schedule(model)
search.watch(optimizer, scheduler)                     # reset / rewind them at every level's end
done_steps = 0                                         # global optimizer steps, for --stop-after
if options.resume:                                     # a fresh process: model, search, then their states
    checkpoint = torch.load(options.resume, weights_only=True)
    search.load_state_dict(checkpoint["search"], optimizer, scheduler)  # watched again, as saved
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    done_steps = checkpoint["done_steps"]


def step(i: int) -> None:
    global done_steps
    search.step(i)                                     # snapshots the rewind point at i == rewind_to
    done_steps += 1
    if search.level == 0 and i == REWIND_TO:           # an independent copy, to check the rewind against
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / "weights_at_k.pt")
    if done_steps == options.stop_after:
        torch.save({"search": search.state_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "done_steps": done_steps}, out / "checkpoint.pt")
        raise SystemExit(0)


for level in search.levels():
    train(model, optimizer, scheduler, search.step_count, on_step=step)   # from start_step, or the resumed step
    search.record("ticket", accuracy=accuracy(model))
    if level > 0:                                      # the recipe's controls, trained by the same loop
        for name, control in search.control_models(make_net).items():
            control_optimizer, control_schedule = optimizer_and_schedule(control)
            with warnings.catch_warnings():            # stepping a schedule without training: intended
                warnings.simplefilter("ignore")
                for _ in range(search.start_step):     # the schedule at the rewind point, as the ticket's
                    control_schedule.step()
            train(control, control_optimizer, control_schedule, search.start_step)
            search.record(name, accuracy=accuracy(control))
    search.prune_and_rewind()
    if level == 0:
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, out / "after_rewind.pt")

report = search.report()
torch.save({"folded": search.folded_state_dict(), "masks": search.masks, "levels": report["levels"]}, out / "final.pt")
onnx = compress.export_onnx(model, out / "ticket.onnx", verify_inputs=images[:16])
for row in report["levels"]:
    print(f"level {row['level']}: " + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in row.items() if k != "level"))
print(f"{report['weights_remaining'] * 100:.1f}% weights; {onnx.path} max |ORT - torch| {onnx.max_abs_diff:.1e}")
