import pytest
import torch
import torch.nn.utils.prune as prune

from compress.models import create_model
from compress.pruning import (
    apply_masks,
    build_plan,
    effective_weights,
    fold_masks,
    get_masks,
    magnitude_masks,
    make_permanent,
    ones_masks,
    plain_state_dict,
    pruned_counts,
    sparsity_report,
)
from compress.recipe.schema import PruneConfig


def _pruned_lenet(rounds: int = 3):
    torch.manual_seed(0)
    model = create_model("lenet300_100")
    targets = build_plan(model, PruneConfig(rates={"linear": 0.5, "output": 0.5}))
    names = [t.name for t in targets]
    masks = ones_masks(model, names)
    for _ in range(rounds):
        masks = magnitude_masks(effective_weights(model, names), masks, {n: 0.5 for n in names},
                                {n: n for n in names})
        apply_masks(model, masks)
    return model, names


def test_masks_use_torch_prune_reparametrisation():
    model, names = _pruned_lenet()
    layer = model[1]
    assert prune.is_pruned(model)
    assert hasattr(layer, "weight_orig") and hasattr(layer, "weight_mask")
    assert "weight" not in dict(layer.named_parameters())


def test_fold_keeps_user_masks_and_zeros():
    model, names = _pruned_lenet()
    folded = fold_masks(model)
    assert not prune.is_pruned(folded)
    assert prune.is_pruned(model)
    for name in names:
        mask = dict(model.named_modules())[name].weight_mask
        weight = dict(folded.named_modules())[name].weight
        orig = dict(model.named_modules())[name].weight_orig
        pruned = mask == 0
        assert bool((orig[pruned] != 0).any()), "vacuous: the pruned entries of weight_orig are already zero"
        assert bool((weight[pruned] == 0).all())  # fold zeroes what the mask hid ...
        assert torch.equal(weight[~pruned], orig[~pruned])  # ... and keeps the survivors as they are
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(folded(x), model(x))



def test_a_shared_fold_reuses_the_cached_weights_and_leaves_the_model_pruned():
    model, names = _pruned_lenet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_masks(model, share=True)
    shared = {name: dict(model.named_modules())[name].weight.data_ptr() for name in names}
    copy = fold_masks(model)  # refreshes the model's cache again: new tensors, the same values
    assert not prune.is_pruned(folded) and prune.is_pruned(model)
    for name in names:
        layer = dict(folded.named_modules())[name]
        # no new storage: the folded weight was the model's cached weight_orig * weight_mask
        assert layer.weight.data_ptr() == shared[name]
        assert torch.equal(layer.weight, dict(copy.named_modules())[name].weight)
        assert isinstance(layer.weight, torch.nn.Parameter) and not layer._forward_pre_hooks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(folded(x), model(x))


def test_a_shared_fold_holds_no_tensor_of_its_own_and_converting_it_leaves_the_model_alone():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 10))
    apply_masks(model, {"3": (torch.rand(10, 144) > 0.5).float()})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_masks(model, share=True)
    own = {t.data_ptr() for t in [*model.parameters(), *model.buffers()]} | {model[3].weight.data_ptr()}
    assert all(t.data_ptr() in own for t in [*folded.parameters(), *folded.buffers()])
    folded.double()  # the copy's tensors are replaced, not the model's
    assert all(v.dtype == before[k].dtype and torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model[0].weight.dtype == torch.float32 and folded[0].weight.dtype == torch.float64


def test_make_permanent_leaves_one_plain_weight_with_exact_positive_zeros_and_the_same_outputs():
    model, names = _pruned_lenet()
    x = torch.randn(3, 1, 28, 28)
    expected = model(x)
    hidden = {name: (dict(model.named_modules())[name].weight_mask == 0) for name in names}
    negative = sum(int((dict(model.named_modules())[n].weight_orig[hidden[n]] < 0).sum()) for n in names)
    assert negative > 0, "vacuous: no pruned weight was negative (a -0.0 to avoid)"
    assert make_permanent(model) is model
    assert not prune.is_pruned(model)
    for name in names:
        layer = dict(model.named_modules())[name]
        assert not hasattr(layer, "weight_orig") and not hasattr(layer, "weight_mask") and not layer._forward_pre_hooks
        assert isinstance(layer.weight, torch.nn.Parameter) and layer.weight.requires_grad
        zeros = layer.weight[hidden[name]]
        assert bool((zeros == 0).all()) and not bool(torch.signbit(zeros).any())  # +0.0 everywhere pruned
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    assert set(model.state_dict()) == set(create_model("lenet300_100").state_dict())  # loads into a fresh model


def test_ticket_loads_into_a_fresh_unpruned_model():
    model, _ = _pruned_lenet()
    fresh = create_model("lenet300_100")
    fresh.load_state_dict(plain_state_dict(model))
    apply_masks(fresh, get_masks(model))
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(fresh(x), model(x))


def test_sparsity_report_counts():
    model, names = _pruned_lenet(rounds=2)
    report = sparsity_report(model, names)
    assert report["total"] == 266_200
    assert abs(report["weights_remaining"] - 0.25) < 1e-3
    assert [layer["name"] for layer in report["layers"]] == names


def test_selectors_and_exclusions():
    model = create_model("conv4")
    targets = build_plan(model, PruneConfig(rates={"conv": 0.1, "linear": 0.2, "output": 0.1, "re:1[13]": 0.3},
                                            exclude=("0",)))
    rates = {t.name: t.rate for t in targets}
    assert "0" not in rates
    assert rates["2"] == 0.1 and rates["11"] == 0.3 and rates["13"] == 0.3 and rates["15"] == 0.1
    types = build_plan(model, PruneConfig(rates={"conv": 0.1, "linear": 0.0, "output": 0.0},
                                          exclude=("type:Linear",)))
    assert all(t.kind == "conv" for t in types)


def test_selector_matching_nothing_is_an_error_with_location():
    model = create_model("lenet300_100")
    with pytest.raises(ValueError, match=r"r\.yaml:7: prune.exclude\[0\]: selector 'fc9' matches no"):
        build_plan(model, PruneConfig(exclude=("fc9",)), where=lambda path: "r.yaml:7")


def test_apply_mask_shape_mismatch_is_an_error():
    model = create_model("lenet300_100")
    with pytest.raises(ValueError, match="shape"):
        apply_masks(model, {"1": torch.ones(3, 3)})


def test_effective_weights_are_read_when_asked_and_a_plain_dict_when_returned():
    from compress.pruning import EffectiveWeights

    model, names = _pruned_lenet(rounds=1)
    lazy = EffectiveWeights(model, names)
    kept = effective_weights(model, names)
    assert type(kept) is dict and list(lazy) == names == list(kept)
    layer = dict(model.named_modules())[names[0]]
    with torch.no_grad():
        layer.weight_orig.add_(1.0)  # an optimizer step after the last forward: the weight attribute is stale
    assert torch.equal(lazy[names[0]], layer.weight_orig * layer.weight_mask)  # read now: the new values
    assert not torch.equal(kept[names[0]], lazy[names[0]])  # the dict holds the values of when it was made
    assert bool((lazy[names[0]][layer.weight_mask == 0] == 0).all())


def test_a_pruned_model_holds_each_mask_once():
    """torch's CustomFromMask hook keeps the mask it was made with; it reads the module's buffer instead, so
    the mask is not a second copy of every weight for the model's lifetime (nor in every deepcopy)."""
    model, names = _pruned_lenet(rounds=1)
    for name in names:
        layer = model.get_submodule(name)
        (hook,) = [h for h in layer._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]
        assert hook.mask is layer.weight_mask
    # the reparametrisation still works: torch prune stacks on it, the forward uses the masked weights
    layer = model.get_submodule(names[0])
    before = int((layer.weight_mask == 0).sum())
    prune.l1_unstructured(layer, "weight", amount=0.1)
    assert int((layer.weight_mask == 0).sum()) > before
    assert torch.equal(layer.weight, layer.weight_orig * layer.weight_mask)
    folded = fold_masks(model)
    assert torch.equal(folded.get_submodule(names[1]).weight,
                       model.get_submodule(names[1]).weight_orig * model.get_submodule(names[1]).weight_mask)


def test_reading_an_effective_weight_replaces_the_stale_cached_one():
    """The mask methods read each layer's weight once, computed now; it becomes the module's cached ``weight``
    (what the prune hook computes at the next forward) instead of a second copy beside the stale one."""
    from compress.pruning import EffectiveWeights

    model, names = _pruned_lenet(rounds=1)
    layer = dict(model.named_modules())[names[0]]
    with torch.no_grad():
        layer.weight_orig.add_(1.0)  # the cached weight is now stale
    read = EffectiveWeights(model, names)[names[0]]
    assert read is layer.weight and not read.requires_grad
    assert torch.equal(layer.weight, layer.weight_orig * layer.weight_mask)
    out = model(torch.randn(2, 1, 28, 28)).sum()
    out.backward()  # the hook recomputes it with autograd at the next forward, as before
    assert layer.weight_orig.grad is not None


def test_pruned_counts_read_the_buffers_without_copying_them():
    model, names = _pruned_lenet(rounds=2)
    assert pruned_counts(model) == {name: int((mask == 0).sum()) for name, mask in get_masks(model).items()}
    assert set(pruned_counts(model)) == set(names) and all(count > 0 for count in pruned_counts(model).values())
