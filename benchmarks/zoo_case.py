"""One model and granularity of the structured zoo sweep, in its own process:
``python benchmarks/zoo_case.py MODEL OUT.json input`` (the smallest input it runs at), then
``python benchmarks/zoo_case.py MODEL OUT.json channel|weight SIDE BUILT``.

What a user would do with a timm model and an own training loop: ``LotterySearch(model, recipe,
example_inputs=x)`` with 2 levels of a few SGD steps on random data, then what ships: for ``channel``
``compact_model(model, x)`` and ``export_onnx`` of the compacted model, for ``weight`` ``make_permanent``
(torch's ``prune.remove``: what one ships) and ``export_onnx`` of the plain model with its zeros (a weight
ticket has no whole channel to remove: compaction is not its path), each checked with onnxruntime against
torch. The parent gives the child a memory budget (``COMPRESS_MEMORY_LIMIT_MB``): a search or an export that
cannot fit in it is refused up front, and a search short of room keeps its rewind point in a file. A ``UserError`` is a refusal (its one line is the reason),
anything else a failure. The result (one JSON object) is written to OUT even when a step fails; the
parent records peak memory.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn as nn

STEPS = 2  # SGD steps per level: enough to move every weight, cheap at the smallest input
SIDES = (32, 48, 64, 96, 128, 160, 192, 224, 256)  # tried in order: the first the model accepts is used


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    while isinstance(out, (tuple, list)):  # distillation heads, aux logits: the first output is the logits
        out = out[0]
    return out


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: torch.Tensor, labels: torch.Tensor) -> float:
    """One SGD step. Its own function so the loss goes out of scope: a ``loss`` kept after the loop holds its
    graph, whose gradient accumulators hold every trained parameter (gemma4_vit_167m: 0.67 GB past
    ``make_permanent``, which replaces them)."""
    loss = nn.functional.cross_entropy(_forward(model, batch), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss)


def make(name: str, side: int | None) -> nn.Module:
    """The model, random init (seed 0), 10 classes; built for ``side`` when it takes ``img_size``."""
    import timm

    torch.manual_seed(0)
    if side is not None:
        try:
            return timm.create_model(name, pretrained=False, num_classes=10, img_size=side)
        except TypeError:  # no img_size argument: the model adapts to the input itself
            pass
    return timm.create_model(name, pretrained=False, num_classes=10)


def smallest_input(name: str) -> tuple[int, bool]:
    """The smallest side in ``SIDES`` (up to the model's own) the model runs at, and whether it was
    built for it (``img_size``)."""
    import timm

    native = timm.create_model(name, pretrained=False, num_classes=10).pretrained_cfg.get("input_size", (3, 224, 224))
    for side in [s for s in SIDES if s <= max(native[1:])] + [max(native[1:])]:
        for built in (False, True):
            try:
                model = make(name, side if built else None).eval()
                with torch.no_grad():
                    _forward(model, torch.randn(2, 3, side, side))
                return side, built
            except Exception:  # this side does not fit the model: try the next
                continue
    raise RuntimeError(f"{name}: runs at none of the sides {SIDES}")


def recipe(granularity: str):
    from compress.recipe import recipe_from_dict

    prune = {"granularity": granularity, "rates": {"conv": 0.3, "linear": 0.3}}
    if granularity == "channel":
        prune["channel_multiple"] = 8
    return recipe_from_dict({"name": "zoo", "model": {"name": "conv2"}, "data": {"name": "cifar10"},
                             "prune": prune, "lottery": {"rounds": 2, "rewind_to": 1},
                             "train": {"iterations": STEPS}, "seed": 0})


def run_granularity(name: str, side: int, built: bool, granularity: str) -> dict:
    from compress.errors import UserError
    from compress.export import export_onnx
    from compress.lottery import LotterySearch
    from compress.pruning import make_permanent
    from compress.pruning.compact.graph import compact_graph
    from compress.pruning.macs import count_macs, count_params
    from compress.recipe.checks import OPSET_RANGE

    row: dict = {"status": "pass", "reason": "", "stage": ""}
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, side, side, generator=generator)
    batch = torch.randn(4, 3, side, side, generator=generator)
    labels = torch.randint(0, 10, (4,), generator=generator)
    stage = "build"
    try:
        model = make(name, side if built else None)
        row["params_before"], row["macs_before"] = count_params(model), count_macs(model.eval(), x)
        stage = "plan"
        began = time.perf_counter()
        search = LotterySearch(model, recipe(granularity), example_inputs=x)
        row["plan_s"] = round(time.perf_counter() - began, 2)
        stage = "train"
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        for _level in search.levels():
            search.reset_optimizer(optimizer)
            for i in range(1, STEPS + 1):
                _train_step(model, optimizer, batch, labels)
                search.step(i)
            search.prune_and_rewind()
        optimizer.zero_grad(set_to_none=True)
        del search, optimizer  # the rewind point and the gradients: not needed for the rest
        model.eval()
        exported = model
        if granularity == "channel":
            stage = "compact"
            began = time.perf_counter()
            compaction = compact_graph(model, x)
            row["compact_s"] = round(time.perf_counter() - began, 2)
            exported = compaction.module
            row["compact_diff"] = compaction.max_abs_diff
            del compaction, model
        else:
            make_permanent(model)  # one copy of the weights where the masked model holds three
        # weight: the nonzero weights (a dense forward still multiplies by the zeros: MACs stay)
        row["params_after"] = count_params(exported, nonzero=granularity == "weight")
        row["macs_after"] = count_macs(exported, x)
        stage = "export"
        with tempfile.TemporaryDirectory() as folder:
            report = None
            try:
                report = export_onnx(exported, Path(folder) / "ticket.onnx", example_input=x)
            except UserError as error:
                # what a user does when told an operator exists from a later opset (torch), or that the
                # dynamo exporter writes this model at a later one (compress): ask for that one -- after
                # this block, so the failed attempt's frames are gone before the next export
                later = re.search(r"added in (?:opset )?version (\d+)|set export\.opset: (\d+)", str(error))
                if later is None or int(later.group(1) or later.group(2)) > OPSET_RANGE[1]:
                    raise
                row["opset"] = int(later.group(1) or later.group(2))
            if report is None:
                report = export_onnx(exported, Path(folder) / "ticket.onnx", example_input=x, opset=row["opset"])
        row["ort_diff"] = report.max_abs_diff
    except UserError as error:
        row.update(status="refused", stage=stage, reason=str(error).strip().splitlines()[0][:300])
    except Exception as error:  # noqa: BLE001 -- recorded: a failure of compress, with its traceback
        row.update(status="failed", stage=stage, reason=f"{type(error).__name__}: {str(error).strip()[:300]}",
                   traceback=traceback.format_exc()[-3000:])
    return row


def main(name: str, out: Path, what: str, side: str = "", built: str = "") -> None:
    """``what``: ``input`` finds the smallest input (its own process, so the models built to find it do not
    count towards a granularity's memory); ``channel`` / ``weight`` run at ``side`` (``built``: 1 when
    the model is built for it)."""
    torch.set_num_threads(1)
    result: dict = {"model": name}
    try:
        if what == "input":
            found, made_for = smallest_input(name)
            result.update(input_side=found, img_size_arg=made_for)
        else:
            result[what] = run_granularity(name, int(side), built == "1", what)
    except Exception as error:  # noqa: BLE001 -- no input the model runs on: the model, not compress
        result.update(input_error=f"{type(error).__name__}: {str(error).strip()[:300]}")
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), *sys.argv[3:])
