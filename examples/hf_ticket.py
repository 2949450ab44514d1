"""A lottery ticket of a tiny BERT inside one Hugging Face ``Trainer.train()``, as a user writes it:
a model from a config, a dataset of one's own, the Trainer's own AdamW, linear schedule, shuffling and
checkpoints; the recipe gives only the pruning plan (~20 s on 2 CPU cores):

    python examples/hf_ticket.py                       # writes hf_ticket_out/
    python examples/hf_ticket.py --resume CHECKPOINT   # continue from a checkpoint of the same run

The callback saves the search's state in every Trainer checkpoint, so ``train(resume_from_checkpoint=...)``
continues the search; it resizes the Trainer's schedule to one level, so each level trains with the
schedule of a fresh training. ``tests/integrations/test_examples.py`` runs this script.
"""

import argparse
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import compress
from compress.integrations.transformers import LotteryTicketCallback

ITERATIONS = int(os.environ.get("TICKET_ITERATIONS", "60"))  # steps per level
REWIND_TO = ITERATIONS // 5
parser = argparse.ArgumentParser()
parser.add_argument("--out", default="hf_ticket_out")
parser.add_argument("--resume", default=None, help="a checkpoint folder of --out to continue from")
parser.add_argument("--save-steps", type=int, default=ITERATIONS + ITERATIONS // 2)  # mid-level 1
options = parser.parse_args()
out = Path(options.out)

recipe = compress.recipe.recipe_from_dict({
    "seed": 0,
    "train": {"iterations": ITERATIONS},                 # steps per level: the one train key a partial recipe reads
    "prune": {"rates": {"linear": 0.3, "output": 0.1}, "keep": ["bert.pooler"]},
    "lottery": {"rounds": 2, "rewind_to": REWIND_TO},
}, sections=compress.recipe.PARTIAL_SECTIONS)


class Parity(Dataset):
    """Token sequences; the label is the number of tokens < 10, modulo 3."""

    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 40, (size, 12), generator=generator)
        self.labels = (self.ids < 10).sum(1) % 3

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


class KeepWeightsAtK(TrainerCallback):
    """The user's own, independent copy of the weights at step k, to check the rewind against."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == REWIND_TO:
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / "weights_at_k.pt")
        if state.global_step == ITERATIONS:  # level 0 ended: the search has pruned and rewound by now
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / "after_rewind.pt")


config = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                    max_position_embeddings=16, num_labels=3)
torch.manual_seed(0)
model = BertForSequenceClassification(config)
ticket = LotteryTicketCallback(recipe, model)  # installs the prune masks: the Trainer's optimizer comes after
out.mkdir(exist_ok=True)
args = TrainingArguments(output_dir=str(out), max_steps=ticket.total_steps, per_device_train_batch_size=16,
                         learning_rate=1e-3, lr_scheduler_type="linear", save_strategy="steps",
                         save_steps=options.save_steps, use_cpu=True, report_to=[], logging_strategy="no",
                         seed=0, dataloader_num_workers=0, disable_tqdm=True)
trainer = Trainer(model=model, args=args, train_dataset=Parity(512, seed=1), callbacks=[ticket, KeepWeightsAtK()])
trainer.train(resume_from_checkpoint=options.resume)

search = ticket.search
torch.save({"folded": search.folded_state_dict(), "masks": search.masks}, out / "final.pt")
test = Parity(64, seed=2)
model.eval()
with torch.no_grad():
    accuracy = (model(input_ids=test.ids).logits.argmax(1) == test.labels).float().mean().item()
report = compress.export_onnx(model, out / "ticket.onnx",
                              verify_inputs={"input_ids": test.ids, "attention_mask": torch.ones_like(test.ids)})
print(f"level {search.level}: {search.report()['weights_remaining'] * 100:.1f}% weights, accuracy {accuracy:.3f} "
      f"after {trainer.state.global_step} steps; {report.path} max |ORT - torch| {report.max_abs_diff:.1e}")
