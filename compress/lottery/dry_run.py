"""``--dry-run``: the resolved recipe and the pruning plan, without training or reading data."""

from __future__ import annotations

import warnings

from compress.data import dataset_info, find_data
from compress.lottery.planning import one_shot_rates, plan_rows, planned_rounds, structured_plan
from compress.models import build_model
from compress.pruning.groups import ChannelGroup, Member
from compress.pruning.plan import plan_layers
from compress.pruning.structured import StructuredPlan, planned_widths
from compress.pruning.widths import resolve_multiple
from compress.recipe import Recipe, dump_recipe


def plan_table(recipe: Recipe, where=None) -> str:
    """Every prunable parameter: name, role (stem / hidden / output), shape, count, per-round rate,
    weights remaining after each round shown, and for one that is not pruned the reason (kept, output,
    rate 0); warnings of the role inference follow the table."""
    info = dataset_info(recipe.data.name)
    num_classes = recipe.model.num_classes or info.num_classes or 10
    image_size = recipe.data.image_size or info.image_size or 32
    model = build_model(recipe.model, num_classes, info.in_channels or 3, image_size, seed=recipe.seed)
    with warnings.catch_warnings(record=True) as caught:  # shown in the table, where they are read
        warnings.simplefilter("always", UserWarning)
        layers = plan_layers(model, recipe.prune, where)
    rounds = planned_rounds(recipe)
    rates = {layer.name: layer.rate for layer in layers if layer.rate > 0}
    if recipe.lottery.one_shot:
        rates = one_shot_rates(rates, recipe.lottery.rounds)
    rows = plan_rows(model, layers, rates, rounds)
    lines = format_plan(rows, rounds)
    lines += [f"warning: {w.message}" for w in caught if issubclass(w.category, UserWarning)]
    if not rates:
        lines.append("(nothing is pruned: every rate is 0 or every module kept; a run would stop with an error)")
    if recipe.prune.scope == "global":
        lines.append("(global scope: per-layer figures are what a layer-wise cut at the same rate would leave; "
                     "the totals are exact)")
    structure = structured_plan(model, recipe, where)
    if structure is not None:
        group_rates = one_shot_rates(structure.rates, recipe.lottery.rounds) if recipe.lottery.one_shot \
            else structure.rates
        lines += [""] + format_widths(structure, group_rates, rounds)
    elif recipe.prune.granularity == "channel":  # an nn.Sequential: each layer's output channels on their own
        modules = dict(model.named_modules())
        groups = [ChannelGroup(layer.name, "channels", _units(modules[layer.name]),
                               (Member(layer.name, 0, ()),)) for layer in layers]
        plan = StructuredPlan(groups, {layer.name: layer.rate for layer in layers},
                              {layer.name: layer.reason for layer in layers if layer.reason},
                              channel_multiple=resolve_multiple(recipe.prune.channel_multiple))
        lines += [""] + format_widths(plan, rates, rounds, note=False)
    return "\n".join(lines)


def _units(module) -> int:
    return module.out_features if hasattr(module, "out_features") else module.out_channels


def format_widths(structure: StructuredPlan, rates: dict[str, float], rounds: int, note: bool = True) -> list[str]:
    """Channel granularity: units (channels / heads) per group (or layer) after each level."""
    widths = planned_widths(structure.groups, rates, rounds, structure.channel_multiple)
    shown = sorted({0, *range(1, rounds + 1, max(1, rounds // 6)), rounds})
    width = max([24, *(len(g.name) + 2 for g in structure.groups)])
    header = (f"{'channel group':<{width}} {'units':<8} {'weights':>7} {'rate':>6} "
              + " ".join(f"{f'r{r}':>5}" for r in shown) + "  not pruned because")
    lines = ["(channel groups: a unit's output rows and its consumers' input columns go together, so the "
             "per-tensor fractions above are only indicative; the widths below are what is pruned)"] if note else []
    lines += [f"widths per level (prune.channel_multiple = {structure.channel_multiple}; "
             "layer-wise view, global scope ranks groups of one rate together)", header, "-" * len(header)]
    for group in structure.groups:
        rate = rates.get(group.name, 0.0)
        rate_text = f"{rate:>6.3f}" if rate else f"{'-':>6}"
        lines.append(f"{group.name:<{width}} {group.kind:<8} {len(group.modules):>7} {rate_text} "
                     + " ".join(f"{w:>5}" for w in (widths[group.name][r] for r in shown))
                     + (f"  {structure.reasons[group.name]}" if group.name in structure.reasons else ""))
    return lines


def dry_run(recipe: Recipe, where=None) -> str:
    found, location = find_data(recipe.data)
    data_line = f"data: {recipe.data.name} {'found at ' + location if found else 'NOT found: ' + location}"
    return "\n".join(["# resolved recipe", dump_recipe(recipe).rstrip(), "", data_line, "",
                      plan_table(recipe, where)])


def format_plan(rows: list[dict], rounds: int) -> list[str]:
    """``LotterySearch.plan()`` rows as the table ``--dry-run`` and a run's start print."""
    shown = sorted({0, *range(1, rounds + 1, max(1, rounds // 6)), rounds})
    width = max([32, *(len(row["name"]) + 8 for row in rows)])
    header = (f"{'parameter':<{width}} {'role':<6} {'shape':<14} {'count':>10} {'rate':>6} "
              + " ".join(f"{f'r{r}':>7}" for r in shown) + "  not pruned because")
    lines = [header, "-" * len(header)]
    totals = [0.0] * len(shown)
    total_count = sum(row["count"] for row in rows)
    for row in rows:
        remaining = [row["count"] * row["remaining"][r] for r in shown]
        totals = [a + b for a, b in zip(totals, remaining, strict=True)]
        rate_text = f"{row['rate']:>6.3f}" if row["rate"] else f"{'-':>6}"
        lines.append(f"{row['name'] + '.weight':<{width}} {row['role']:<6} {'x'.join(map(str, row['shape'])):<14} "
                     f"{row['count']:>10,} {rate_text} " + " ".join(f"{f * 100:6.2f}%" for f in
                                                                    (row["remaining"][r] for r in shown))
                     + (f"  {row['reason']}" if row["reason"] else ""))
    lines.append("-" * len(header))
    pruned = sum(1 for row in rows if row["rate"])
    label = f"total ({pruned} of {len(rows)} tensors pruned)"
    lines.append(f"{label:<{width}} {'':<6} {'':<14} {total_count:>10,} {'':>6} "
                 + " ".join(f"{n / max(total_count, 1) * 100:6.2f}%" for n in totals))
    return lines
