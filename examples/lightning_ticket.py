"""A lottery ticket inside one Lightning ``Trainer.fit``, as a user writes it: a CNN of one's own, a
DataLoader of one's own, a OneCycle schedule, checkpoints; the recipe gives only the pruning plan
(~20 s on 2 CPU cores):

    python examples/lightning_ticket.py                    # writes lightning_ticket_out/
    python examples/lightning_ticket.py --resume CKPT      # continue from one of its checkpoints

``ticket.sampler(...)`` makes a mid-epoch resume exact (the batches after it are those of an
uninterrupted fit). From the last checkpoint to an inference model and ONNX: ``ticket_state_dict``.
``tests/integrations/test_user_examples.py`` runs this script.
"""

import argparse
import os
from pathlib import Path

import lightning.pytorch as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

import compress
from compress.integrations.lightning import LotteryTicketCallback, ticket_state_dict

ITERATIONS = int(os.environ.get("TICKET_ITERATIONS", "40"))  # steps per level
REWIND_TO = ITERATIONS // 5
parser = argparse.ArgumentParser()
parser.add_argument("--out", default="lightning_ticket_out")
parser.add_argument("--resume", default=None, help="a checkpoint of --out to continue from")
parser.add_argument("--plain-loader", action="store_true", help="shuffle=True instead of ticket.sampler")
parser.add_argument("--save-steps", type=int, default=ITERATIONS + ITERATIONS // 2)  # mid-level 1
options = parser.parse_args()
out = Path(options.out)
out.mkdir(exist_ok=True)

recipe = compress.recipe.recipe_from_dict({
    "seed": 0,
    "train": {"iterations": ITERATIONS},
    "prune": {"rates": {"conv": 0.2, "linear": 0.3, "output": 0.1}},
    "lottery": {"rounds": 2, "rewind_to": REWIND_TO},
}, sections=compress.recipe.PARTIAL_SECTIONS)


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        # one level's schedule: the callback rewinds it at every level's end, as a fresh training's
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=ITERATIONS)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class KeepWeightsAtK(L.Callback):
    """The user's own, independent copy of the weights at step k, to check the rewind against."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        state = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}
        if trainer.global_step == REWIND_TO:
            torch.save(state, out / "weights_at_k.pt")
        if trainer.global_step == ITERATIONS:  # level 0 ended: the search has pruned and rewound by now
            torch.save(state, out / "after_rewind.pt")


generator = torch.Generator().manual_seed(1)
images = torch.randn(600, 1, 12, 12, generator=generator)
labels = (images[:, 0, :6].mean((1, 2)) > 0).long() * 2 + (images[:, 0, :, :6].mean((1, 2)) > 0).long()
dataset = TensorDataset(images, labels)

ticket = LotteryTicketCallback(recipe, module="net")
loader = DataLoader(dataset, batch_size=32, sampler=ticket.sampler(len(dataset), 32))  # exact mid-epoch resume
if options.plain_loader:  # resumes too, but the batches after a mid-epoch resume differ (the callback says so)
    loader = DataLoader(dataset, batch_size=32, shuffle=True)
checkpoints = ModelCheckpoint(dirpath=out / "ckpt", filename="{step}", save_top_k=-1,
                              every_n_train_steps=options.save_steps)
trainer = L.Trainer(max_steps=ticket.total_steps, callbacks=[ticket, KeepWeightsAtK(), checkpoints],
                    accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
module = Classifier()
trainer.fit(module, loader, ckpt_path=options.resume)
trainer.save_checkpoint(out / "final.ckpt")  # the fit stops mid-epoch at max_steps: save the end explicitly

search = ticket.search
torch.save({"folded": search.folded_state_dict(), "masks": search.masks}, out / "final.pt")
# from the final checkpoint to an inference model of your own and to ONNX
net = make_net().eval()
net.load_state_dict(ticket_state_dict(out / "final.ckpt", module="net"))
report = compress.export_onnx(net, out / "ticket.onnx", verify_inputs=images[:16])
with torch.no_grad():
    accuracy = (net(images).argmax(1) == labels).float().mean().item()
print(f"level {search.level}: {search.report()['weights_remaining'] * 100:.1f}% weights, train accuracy "
      f"{accuracy:.3f} after {trainer.global_step} steps; {report.path} max |ORT - torch| {report.max_abs_diff:.1e}")
