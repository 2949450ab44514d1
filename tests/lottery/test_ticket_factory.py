"""Tickets of models built by the user's own factory: save_ticket_from_model -> load_ticket_into."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from compress.errors import UserError
from compress.models import create_model
from compress.pruning import (
    apply_masks,
    effective_weights,
    folded_state_dict,
    get_masks,
    is_pruned,
    magnitude_masks,
    ones_masks,
    plain_state_dict,
    prunable_modules,
)
from compress.ticket import (
    USER_FACTORY,
    load_ticket,
    load_ticket_into,
    read_ticket,
    save_ticket_from_model,
    ticket_model,
)

torch.set_num_threads(1)


class MyNet(nn.Module):
    """Not registered anywhere: conv + BN + a two-layer head."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))))


def prune(model: nn.Module, rate: float = 0.7) -> nn.Module:
    names = [name for name, _ in prunable_modules(model)]
    masks = magnitude_masks(effective_weights(model, names), ones_masks(model, names),
                            {n: rate for n in names}, {n: n for n in names})
    return apply_masks(model, masks)


def trained_ticket(tmp_path, rewind: bool = True):
    torch.manual_seed(0)
    model = MyNet()
    start = plain_state_dict(model)  # rewind point, plain naming (as LotterySearch.rewind_state)
    prune(model)
    with torch.no_grad():  # "training": move weights (pruned entries stay masked) and BN statistics
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
        model.train()(torch.randn(16, 3, 8, 8))
    model.eval()
    path = tmp_path / "ticket.pt"
    save_ticket_from_model(path, model, rewind_state=start if rewind else None, info={"note": "mine"})
    return model, start, path


def test_user_model_roundtrip(tmp_path):
    model, start, path = trained_ticket(tmp_path)
    masks = get_masks(model)
    ticket = read_ticket(path)
    assert ticket["model"] == {"name": None, "factory": USER_FACTORY}
    assert ticket["info"]["note"] == "mine" and ticket["info"]["model_class"].endswith("MyNet")
    assert set(ticket["masks"]) == {"conv", "head.1", "head.3"}

    torch.manual_seed(123)
    fresh = MyNet()
    assert load_ticket_into(fresh, path) is fresh
    fresh.eval()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    for name, module in fresh.named_modules():
        if name in masks:
            assert is_pruned(module) and torch.equal(module.weight_mask, masks[name])
            assert bool((module.weight[masks[name] == 0] == 0).all())
            assert int((module.weight == 0).sum()) >= int((masks[name] == 0).sum())
    # BN statistics come along
    torch.testing.assert_close(fresh.norm.running_mean, model.norm.running_mean, atol=0, rtol=0)
    # the folded state loads into a plain instance without torch prune, too
    plain = MyNet().eval()
    plain.load_state_dict(ticket["trained_state"])
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))
    for name, mask in masks.items():
        assert bool((ticket["trained_state"][f"{name}.weight"][mask == 0] == 0).all())
        assert not bool(torch.signbit(ticket["trained_state"][f"{name}.weight"][mask == 0]).any())  # no -0.0


def test_rewind_weights(tmp_path):
    model, start, path = trained_ticket(tmp_path)
    masks = get_masks(model)
    rewound = load_ticket_into(MyNet(), path, trained=False)
    state = folded_state_dict(rewound)
    for name, mask in masks.items():
        torch.testing.assert_close(state[f"{name}.weight"], start[f"{name}.weight"] * mask, atol=0, rtol=0)
    torch.testing.assert_close(state["norm.running_var"], start["norm.running_var"], atol=0, rtol=0)

    (tmp_path / "b").mkdir()
    _, _, no_rewind = trained_ticket(tmp_path / "b", rewind=False)
    with pytest.raises(UserError, match="no rewind weights"):
        load_ticket_into(MyNet(), no_rewind, trained=False)


def test_training_after_load_keeps_zeros(tmp_path):
    model, _, path = trained_ticket(tmp_path)
    masks = get_masks(model)
    fresh = load_ticket_into(MyNet(), path).train()
    optimizer = torch.optim.SGD(fresh.parameters(), lr=0.1)
    for _ in range(2):
        loss = fresh(torch.randn(8, 3, 8, 8)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    kept = get_masks(fresh)  # the masks survived training: the zeros are the prune reparametrisation's
    state = folded_state_dict(fresh)
    for name, mask in masks.items():
        assert torch.equal(kept[name], mask)
        assert bool((state[f"{name}.weight"][mask == 0] == 0).all()) and bool(state[f"{name}.weight"][mask == 1].ne(0).any())


def test_wrapped_model_save_and_load(tmp_path):
    model, _, path = trained_ticket(tmp_path)
    compiled_path = tmp_path / "compiled.pt"
    save_ticket_from_model(compiled_path, torch.compile(model))
    ticket = read_ticket(compiled_path)
    assert set(ticket["masks"]) == set(get_masks(model))
    assert ticket["rewind_state"] is None
    assert all(not key.startswith(("_orig_mod.", "module.")) for key in ticket["trained_state"])

    fresh = MyNet()
    load_ticket_into(torch.compile(fresh), compiled_path)  # installed into the plain module; never run
    fresh.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_mismatches_are_one_line_errors(tmp_path):
    _, _, path = trained_ticket(tmp_path)
    with pytest.raises(UserError, match=r"'conv.weight' has shape \(8, 3, 3, 3\), in the model \(MyNet\)") as info:
        load_ticket_into(MyNet(width=4), path)
    assert "\n" not in str(info.value)

    class Renamed(MyNet):
        def __init__(self) -> None:
            super().__init__()
            self.extra = nn.Linear(2, 2)

    with pytest.raises(UserError, match="the model \\(Renamed\\) has parameter 'extra.weight'"):
        load_ticket_into(Renamed(), path)
    with pytest.raises(UserError, match="not in|does not have"):
        load_ticket_into(nn.Sequential(nn.Linear(2, 2)), path)
    # the user model keeps its own weights when the check fails
    fresh = MyNet(width=4)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(UserError):
        load_ticket_into(fresh, path)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
    assert not any(is_pruned(m) for m in fresh.modules())


def test_registered_loaders_refuse_user_tickets(tmp_path):
    _, _, path = trained_ticket(tmp_path)
    with pytest.raises(UserError, match="load_ticket_into"):
        load_ticket(path)
    with pytest.raises(UserError, match="load_ticket_into"):
        ticket_model(read_ticket(path))


def test_registered_model_ticket_still_loads(tmp_path):
    torch.manual_seed(0)
    model = prune(create_model("lenet300_100", num_classes=10)).eval()
    path = tmp_path / "ticket.pt"
    save_ticket_from_model(path, model, model_config={"name": "lenet300_100"},
                           shape={"num_classes": 10, "in_channels": 1, "image_size": 28})
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(load_ticket(path)(x), expected)
        assert torch.equal(load_ticket_into(create_model("lenet300_100", num_classes=10), path).eval()(x), expected)
