"""Find a lottery ticket inside one Lightning ``Trainer.fit``: the recipe's pruning plan and rewinding,
your LightningModule. Runs as is (~10 s on a CPU core, Fashion-MNIST):

    python examples/lightning_ticket.py

The model, optimizer, schedule and batch order are the toolkit's, so the masks are bit for bit those
``find_ticket.py`` finds for the same recipe (tests/integrations/test_lightning.py checks it).
"""

import os

import lightning.pytorch as L
import torch.nn.functional as F
from torch.utils.data import DataLoader

import compress
from compress.integrations.lightning import LotteryTicketCallback
from compress.models import build_model
from compress.training import build_optimizer, build_schedule, evaluate

ITERATIONS = int(os.environ.get("TICKET_ITERATIONS", "300"))  # per level; the test suite runs fewer
recipe = compress.load_recipe("recipes/lth_lenet300_fashion.yaml", overrides={
    "lottery.rounds": 3, "lottery.controls": [], "lottery.rewind_to": ITERATIONS // 6, "train.iterations": ITERATIONS})
data = compress.load_dataset(recipe.data, seed=recipe.seed)


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = build_model(recipe.model, data.num_classes, data.in_channels, data.image_size, seed=recipe.seed)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.parameters(), recipe.train.optimizer)
        schedule = build_schedule(optimizer, recipe.train.schedule, recipe.train.iterations)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


ticket = LotteryTicketCallback(recipe, module="net")  # prunes Classifier.net per the recipe
trainer = L.Trainer(max_steps=ticket.total_steps, callbacks=[ticket], accelerator="cpu", logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
module = Classifier()
trainer.fit(module, DataLoader(ticket.batches(data.train), batch_size=None))  # the toolkit's batch order

search = ticket.search
accuracy = evaluate(module.net, data.test)[1]
print(f"level {search.level}: {search.report()['weights_remaining'] * 100:.1f}% weights, "
      f"test accuracy {accuracy:.4f} after {trainer.global_step} steps")
