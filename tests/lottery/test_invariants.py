"""The invariants a lottery ticket rests on, checked on the files a real run leaves."""

from __future__ import annotations

import torch

from compress import paths
from compress.io import load_json
from compress.lottery import LotterySearch, find_ticket, load_ticket
from compress.models import create_model


def _masks(run_dir, round_index, experiment="ticket"):
    return torch.load(paths.experiment_dir(run_dir, round_index, experiment) / paths.MASK, weights_only=True)


def _final(run_dir, round_index, experiment="ticket"):
    return torch.load(paths.experiment_dir(run_dir, round_index, experiment) / paths.FINAL, weights_only=True)


def test_imp_run_invariants(tmp_path, make_recipe):
    recipe = make_recipe()
    summary = find_ticket(recipe, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    rates = {"1": 0.2, "3": 0.2, "5": 0.1}
    previous = None
    for round_index in range(4):
        masks = _masks(run, round_index)
        state = _final(run, round_index)
        for name, mask in masks.items():
            # the mask the model trained with is the mask the round recorded, exactly 0/1
            assert torch.equal(state[f"{name}.weight_mask"], mask)
            assert set(mask.unique().tolist()) <= {0.0, 1.0}
            # weights remaining = product of the per-layer rates, within one weight per layer per round
            expected = mask.numel() * (1 - rates[name]) ** round_index
            assert abs(int(mask.sum()) - expected) <= max(1, round_index)
            if previous is not None:  # masks only shrink
                assert bool((mask <= previous[name]).all())
        previous = masks
    # summary contract
    rounds = summary["rounds"]
    assert [entry["round"] for entry in rounds] == [0, 1, 2, 3]
    assert rounds[0]["weights_remaining"] == 1.0
    for entry in rounds:
        for key in ("weights_remaining", "test_accuracy", "early_stop_iteration", "early_stop_test_accuracy"):
            assert key in entry
    for entry in rounds[1:]:
        assert set(entry["controls"]) == {"reinit", "random_prune"}
        for control in entry["controls"].values():
            assert control["weights_remaining"] == entry["weights_remaining"]
    assert load_json(run / paths.SUMMARY)["rounds"] == rounds
    # the reinit control keeps the mask and changes the weights; random_prune changes the mask, same counts
    for name, mask in _masks(run, 2).items():
        assert torch.equal(_masks(run, 2, "reinit")[name], mask)
        random_mask = _masks(run, 2, "random_prune")[name]
        assert int(random_mask.sum()) == int(mask.sum()) and not torch.equal(random_mask, mask)
    assert not torch.equal(_final(run, 2, "reinit")["1.weight_orig"], _final(run, 2)["1.weight_orig"])
    # report and ticket exist; the ticket loads into a fresh model with its masks
    assert (run / paths.REPORT).exists() and (run / "accuracy.png").stat().st_size > 1000
    model = load_ticket(run / paths.TICKET)
    assert hasattr(model[1], "weight_mask")
    ticket = torch.load(run / paths.TICKET, weights_only=True)
    assert ticket["info"]["round"] == summary["ticket"]["round"]
    # the stored weights are folded: pruned entries exactly zero, though training moved weight_orig there
    chosen = _final(run, ticket["info"]["round"])
    for name, mask in ticket["masks"].items():
        pruned = mask == 0
        if bool(pruned.any()):
            assert bool((chosen[f"{name}.weight_orig"][pruned] != 0).any()), "vacuous check"
            assert bool((ticket["trained_state"][f"{name}.weight"][pruned] == 0).all())
            assert bool((ticket["rewind_state"][f"{name}.weight"][pruned] == 0).all())
    fresh = create_model("lenet300_100", num_classes=10)
    fresh.load_state_dict(ticket["trained_state"])  # a fresh, unpruned model takes the ticket as it is
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(fresh.eval()(x), model(x))


def test_same_seed_same_masks(tmp_path, make_recipe):
    recipe = make_recipe(lottery={"rounds": 2, "controls": []})
    find_ticket(recipe, tmp_path / "a", progress=False)
    find_ticket(recipe, tmp_path / "b", progress=False)
    for name, mask in _masks(tmp_path / "a", 2).items():
        assert torch.equal(mask, _masks(tmp_path / "b", 2)[name])
    metrics_a = (paths.round_dir(tmp_path / "a", 2) / paths.METRICS).read_text()
    assert metrics_a == (paths.round_dir(tmp_path / "b", 2) / paths.METRICS).read_text()


def test_rewind_restores_survivors_bit_for_bit(make_recipe):
    recipe = make_recipe(lottery={"rounds": 2, "rewind_to": 3}, train={"iterations": 10})
    torch.manual_seed(0)
    model = create_model("lenet300_100")
    search = LotterySearch(model, recipe)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    snapshot = None
    for level in search.levels():
        for step in range(1, 6):
            optimizer.zero_grad()
            model(torch.randn(8, 1, 28, 28)).square().mean().backward()
            optimizer.step()
            search.step(step)
            if level == 0 and step == 3:
                snapshot = {k: v.clone() for k, v in model.state_dict().items()}
        pruned = search.prune_and_rewind()
        assert pruned == (level < 2)
        if pruned:
            for name in search.names:
                layer = dict(model.named_modules())[name]
                alive = layer.weight_mask.bool()
                assert torch.equal(layer.weight_orig[alive], snapshot[f"{name}.weight_orig"][alive])
                assert torch.equal(layer.bias, snapshot[f"{name}.bias"])


def test_one_shot_prunes_to_the_target_in_one_step(tmp_path, make_recipe):
    recipe = make_recipe(lottery={"rounds": 3, "one_shot": True, "controls": []})
    summary = find_ticket(recipe, tmp_path / "run", progress=False)
    assert len(summary["rounds"]) == 2
    masks = _masks(tmp_path / "run", 1)
    assert abs(int(masks["1"].sum()) - masks["1"].numel() * 0.8**3) <= 1


def test_conv4_on_the_cifar10_jpeg_copy_end_to_end(tmp_path, cifar10_tar):
    """The Conv-4 recipe itself, at a tiny budget, on real data (the issue's smoke command)."""
    from tests_paths import RECIPES

    from compress.recipe import load_recipe

    recipe = load_recipe(RECIPES / "lth_conv4.yaml", overrides=[
        f"data.root={cifar10_tar}", "train.iterations=40", "train.eval_every=20", "lottery.rounds=1",
        "lottery.controls=[reinit]", "data.validation_size=500", "data.test_subset=1000",
        "train.eval_batch_size=500"])
    summary = find_ticket(recipe, tmp_path / "conv4", progress=False)
    assert [entry["round"] for entry in summary["rounds"]] == [0, 1]
    assert summary["rounds"][0]["test_accuracy"] > 0.15  # chance is 0.10; 40 steps of Adam already learn
    # conv 10%, fc 20%, output 10%: the 2.1M-weight first FC layer dominates
    assert 0.80 < summary["rounds"][1]["weights_remaining"] < 0.82


def test_the_run_time_invariant_check_catches_a_drifted_mask_buffer(make_recipe):
    """An EMA or a stray ``load_state_dict`` averaging the 0/1 buffers must not pass as a ticket."""
    import pytest

    from compress.lottery.experiment import check_ticket_invariants

    model = create_model("lenet300_100")
    search = LotterySearch(model, make_recipe())
    masks = search.next_masks()
    search.prune(masks)
    check_ticket_invariants(model, masks)  # intact: passes
    with torch.no_grad():
        model[1].weight_mask.mul_(0.5).add_(0.5)  # what an EMA of masks with ones would do
    with pytest.raises(RuntimeError, match="mask buffer of '1' changed"):
        check_ticket_invariants(model, masks)
    import torch.nn.utils.prune as prune

    search.prune(masks)
    prune.remove(model[3], "weight")
    with pytest.raises(RuntimeError, match="'3' lost its torch prune"):
        check_ticket_invariants(model, masks)
