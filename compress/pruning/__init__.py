"""Pruning on torch.nn.utils.prune: selectors, plans, pure mask computation, module surgery, reports."""

from compress.pruning.apply import (
    EffectiveWeights,
    apply_masks,
    effective_weights,
    fold_masks,
    folded_state_dict,
    get_masks,
    is_pruned,
    load_plain_state_dict,
    make_permanent,
    ones_masks,
    plain_state_bytes,
    plain_state_dict,
    pruned_counts,
    refresh_weights,
    zero_counts,
)
from compress.pruning.macs import count_macs, count_params, mac_counts
from compress.pruning.masks import (
    Masks,
    check_shrinks,
    count_to_prune,
    magnitude_masks,
    prune_lowest,
    random_masks_like,
    random_step_masks,
)
from compress.pruning.plan import Target, build_plan, expected_remaining
from compress.pruning.report import sparsity_report
from compress.pruning.selectors import PRUNABLE_TYPES, Selector, prunable_modules

__all__ = [
    "Masks", "PRUNABLE_TYPES", "count_macs", "count_params", "mac_counts", "Selector", "Target", "apply_masks", "build_plan", "check_shrinks",
    "EffectiveWeights", "count_to_prune", "effective_weights", "expected_remaining", "fold_masks", "folded_state_dict", "make_permanent", "get_masks", "plain_state_bytes", "pruned_counts", "zero_counts", "is_pruned",
    "load_plain_state_dict", "magnitude_masks", "ones_masks", "plain_state_dict", "prunable_modules",
    "prune_lowest", "random_masks_like", "refresh_weights", "random_step_masks", "sparsity_report",
]
