"""Before anything is trained: does the channel plan compact exactly on this model?

Torch-Pruning couples channels through operations it does not understand as if they were elementwise
(a matmul of attention scores, a reshape into heads by a fixed ``C // num_heads``), so a group can look
safe and still break the model once its channels are physically removed (CaiT's class attention,
found by ``benchmarks/structured_zoo.py``). Before training starts the probe zeroes one unit of every pruned
group in a plain copy and compacts it (``compress.pruning.compact.graph``, checked against that copy). When a
module's forward fails, every group touching a module of that type is left whole (its reason says why)
and the probe runs again; a failure it cannot attribute to a module type is refused with one line
naming the model and the hint ``prune.keep``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import torch
import torch.nn as nn

from compress.errors import UserError, first_line
from compress.pruning.apply import fold_masks
from compress.pruning.groups import ChannelGroup
from compress.pruning.unit_masks import zero_units
from compress.runtime import release_cycles

ROUNDS = 4  # module types left whole before giving up
# layers shared by whole model families (a conv + norm + act block): the construct that broke is the
# module around them (CSPNet's cross stage, not its ConvNormAct)
LIBRARY_LAYERS = ("torch.", "timm.layers.")


def _failing_type(error: BaseException) -> str | None:
    """Type name of the innermost module (not a library layer, ``LIBRARY_LAYERS``) whose forward raised."""
    found = None
    trace = error.__traceback__
    while trace is not None:
        owner = trace.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and trace.tb_frame.f_code.co_name == "forward" \
                and not type(owner).__module__.startswith(LIBRARY_LAYERS):
            found = type(owner).__name__
        trace = trace.tb_next
    return found


def _one_unit_zeroed(model: nn.Module, groups: Sequence[ChannelGroup]) -> nn.Module:
    """A plain copy of ``model`` with the last unit of every group zeroed in its weights: what compaction
    sees of a masked model (it reads the zeros), without a mask and a masked weight per layer -- the probe
    then holds two copies of the model at its peak (this one and compaction's), not five."""
    zeroed = fold_masks(model).cpu().eval()
    modules = dict(zeroed.named_modules())
    kept = {}
    for group in groups:
        if group.units > 1:
            keep = torch.ones(group.units, dtype=torch.bool)
            keep[-1] = False
            kept[group.name] = keep
    with torch.no_grad():
        zero_units(groups, {name: module.weight for name, module in modules.items()
                            if isinstance(getattr(module, "weight", None), torch.Tensor)}, kept)
    return zeroed


def _compaction_failure(model: nn.Module, pruned: Sequence[ChannelGroup], inputs) -> tuple[str | None, str, str] | None:
    """None when removing one unit of every ``pruned`` group compacts exactly; else the innermost module
    type whose forward failed, the error's type and its first line (strings: the failure's frames, which
    hold the probe's copies, are gone when this returns)."""
    from compress.pruning.compact.graph import compact_graph

    try:
        compact_graph(_one_unit_zeroed(model, pruned), inputs)
        return None
    except UserError:
        raise
    except Exception as error:  # a forward of the compacted copy, or the exactness check, failed
        return _failing_type(error), type(error).__name__, first_line(error, 160)
    finally:
        release_cycles()  # the probe's copies, held by the compaction's dependency graph


def probe_plan(model: nn.Module, groups: Sequence[ChannelGroup], rates: dict[str, float],
               reasons: dict[str, str], example_inputs) -> None:
    """Run the probe (module docstring); groups left whole get rate 0 and a reason (in place)."""
    inputs = example_inputs.cpu() if torch.is_tensor(example_inputs) else [x.cpu() for x in example_inputs]
    for _ in range(ROUNDS):
        pruned = [g for g in groups if rates.get(g.name, 0.0) > 0]
        if not pruned:
            return
        failure = _compaction_failure(model, pruned, inputs)
        if failure is None:
            return
        found, error_type, first = failure
        if found is None or found == type(model).__name__:
            raise UserError(f"prune.granularity: channel: {type(model).__name__} does not compact exactly "
                            f"once its channel groups shrink ({error_type}: {first}); keep the "
                            "offending modules whole with prune.keep (e.g. prune.keep: ['type:<Module>'])")
        inside = {name for name, module in model.named_modules() if type(module).__name__ == found}
        left = 0
        for group in pruned:
            if any(member.module == name or member.module.startswith(name + ".")
                   for member in group.members for name in inside):
                rates[group.name] = 0.0
                reasons[group.name] = (f"touches {found}, which breaks when its channels are removed "
                                       f"({first}); kept whole")
                left += 1
        if not left:
            raise UserError(f"prune.granularity: channel: {type(model).__name__}: removing channels breaks "
                            f"{found} ({error_type}: {first}); keep it whole with prune.keep: "
                            f"['type:{found}']")
        print(f"channel plan: {left} groups touching {found} left whole ({first})", file=sys.stderr)
    raise UserError(f"prune.granularity: channel: {type(model).__name__} still does not compact exactly after "
                    f"leaving {ROUNDS} module types whole; keep them with prune.keep")
