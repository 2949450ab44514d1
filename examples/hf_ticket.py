"""Find a lottery ticket inside one Hugging Face ``Trainer.train()``: the recipe's pruning plan and
rewinding, the Trainer's loop. Runs as is (~10 s on a CPU core, Fashion-MNIST):

    python examples/hf_ticket.py

With the toolkit's optimizer, schedule and batch order (and no gradient clipping) the masks are bit
for bit those ``find_ticket.py`` finds for the same recipe (tests/integrations/test_transformers.py).
"""

import os
import tempfile

import torch.nn as nn
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments

import compress
from compress.integrations.transformers import LotteryTicketCallback
from compress.models import build_model
from compress.training import build_optimizer, build_schedule, evaluate

ITERATIONS = int(os.environ.get("TICKET_ITERATIONS", "300"))  # per level; the test suite runs fewer
recipe = compress.load_recipe("recipes/lth_lenet300_fashion.yaml", overrides={
    "lottery.rounds": 3, "lottery.controls": [], "lottery.rewind_to": ITERATIONS // 6, "train.iterations": ITERATIONS})
data = compress.load_dataset(recipe.data, seed=recipe.seed)


class Classifier(nn.Module):
    """The Trainer's contract: forward(**batch) returns {'loss', 'logits'}."""

    def __init__(self) -> None:
        super().__init__()
        self.net = build_model(recipe.model, data.num_classes, data.in_channels, data.image_size, seed=recipe.seed)

    def forward(self, x, labels=None):
        logits = self.net(x)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


model = Classifier()
ticket = LotteryTicketCallback(recipe, model.net)  # installs the prune masks: build the optimizer after it
optimizer = build_optimizer(model.parameters(), recipe.train.optimizer)
schedule = build_schedule(optimizer, recipe.train.schedule, recipe.train.iterations)
with tempfile.TemporaryDirectory() as out:
    args = TrainingArguments(output_dir=out, max_steps=ticket.total_steps,
                             per_device_train_batch_size=recipe.train.batch_size, max_grad_norm=0.0,
                             use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no", seed=recipe.seed,
                             dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=ticket.batches(data.train),  # the toolkit's order
                      optimizers=(optimizer, schedule), callbacks=[ticket])
    trainer.train()

search = ticket.search
accuracy = evaluate(model.net, data.test)[1]
print(f"level {search.level}: {search.report()['weights_remaining'] * 100:.1f}% weights, "
      f"test accuracy {accuracy:.4f} after {trainer.state.global_step} steps")
