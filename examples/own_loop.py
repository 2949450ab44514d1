"""A recipe driving your own training loop: the README's example, runnable as is.

    python examples/own_loop.py            # ~1 minute on 2 CPU cores
"""

import os

import torch
import torch.nn.functional as F

import compress
from compress.training import evaluate

STEPS = int(os.environ.get("OWN_LOOP_STEPS", "1000"))  # the test suite runs a shorter loop
OUT = os.environ.get("OWN_LOOP_OUT", "ticket.onnx")

recipe = compress.load_recipe("recipes/lth_lenet300_fashion.yaml", overrides={"lottery.rounds": 3})
model = compress.create_model("lenet300_100")
search = compress.LotterySearch(model, recipe)  # installs torch prune masks, snapshots the rewind point
data = compress.load_dataset(recipe.data, seed=0)
for level in search.levels():  # level 0 is dense, then one per pruning round
    optimizer = torch.optim.Adam(model.parameters(), lr=1.2e-3)  # fresh optimizer state every level
    batches = data.train.batches(60, seed=0)
    for step in range(1, STEPS + 1):
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        search.step(step)  # snapshots the weights when step == rewind_to
    accuracy = evaluate(model, data.test)[1]
    print(f"level {level}: {search.report()['weights_remaining'] * 100:.1f}% weights, test accuracy {accuracy:.4f}")
    search.prune_and_rewind()  # prune the trained weights, rewind the survivors
report = compress.export_onnx(search.model, OUT, verify_inputs=next(data.test.eval_batches(32))[0])
print(f"{OUT} verified: max |ORT - torch| = {report.max_abs_diff:.2e}")
