"""``--dry-run``: the resolved recipe and the pruning plan, without training or reading data."""

from __future__ import annotations

from compress.data import dataset_info, find_data
from compress.lottery.search import one_shot_rates
from compress.models import build_model
from compress.pruning import build_plan
from compress.recipe import Recipe, dump_recipe


def plan_table(recipe: Recipe, where=None) -> str:
    """Prunable parameters: name, shape, count, per-round rate, weights remaining after each round."""
    info = dataset_info(recipe.data.name)
    num_classes = recipe.model.num_classes or info.num_classes or 10
    image_size = recipe.data.image_size or info.image_size or 32
    model = build_model(recipe.model, num_classes, info.in_channels or 3, image_size, seed=recipe.seed)
    targets = build_plan(model, recipe.prune, where)
    modules = dict(model.named_modules())
    rounds = 1 if recipe.lottery.one_shot and recipe.lottery.rounds else recipe.lottery.rounds
    rates = {t.name: t.rate for t in targets}
    if recipe.lottery.one_shot:
        rates = one_shot_rates(rates, recipe.lottery.rounds)
    shown = sorted({0, *range(1, rounds + 1, max(1, rounds // 6)), rounds})
    header = f"{'parameter':<28} {'shape':<18} {'count':>10} {'rate':>6} " + " ".join(f"{f'r{r}':>7}" for r in shown)
    lines = [header, "-" * len(header)]
    totals = [0.0] * len(shown)
    total_count = 0
    for target in targets:
        weight = modules[target.name].weight
        count = weight.numel()
        total_count += count
        remaining = [count * (1 - rates[target.name]) ** r for r in shown]
        totals = [a + b for a, b in zip(totals, remaining, strict=True)]
        lines.append(f"{target.name + '.weight':<28} {'x'.join(map(str, weight.shape)):<18} {count:>10,} "
                     f"{rates[target.name]:>6.3f} " + " ".join(f"{n / count * 100:6.2f}%" for n in remaining))
    lines.append("-" * len(header))
    lines.append(f"{'total (' + str(len(targets)) + ' tensors)':<28} {'':<18} {total_count:>10,} {'':>6} "
                 + " ".join(f"{n / total_count * 100:6.2f}%" for n in totals))
    if recipe.prune.scope == "global":
        lines.append("(global scope: per-layer figures are what a layer-wise cut at the same rate would leave; "
                     "the totals are exact)")
    return "\n".join(lines)


def dry_run(recipe: Recipe, where=None) -> str:
    found, location = find_data(recipe.data)
    data_line = f"data: {recipe.data.name} {'found at ' + location if found else 'NOT found: ' + location}"
    return "\n".join(["# resolved recipe", dump_recipe(recipe).rstrip(), "", data_line, "",
                      plan_table(recipe, where)])
