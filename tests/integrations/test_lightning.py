"""compress.integrations.lightning under a real lightning.pytorch.Trainer."""

from __future__ import annotations

import tempfile
import warnings

import pytest
import torch
import torch.nn.functional as F

L = pytest.importorskip("lightning.pytorch")

from integration_cases import (  # noqa: E402
    assert_masks_equal,
    assert_planned_fractions,
    assert_pruned_zero,
    find_ticket_masks,
    make_net,
)
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from compress.errors import UserError  # noqa: E402
from compress.integrations.lightning import LotteryTicketCallback  # noqa: E402
from compress.models import build_model  # noqa: E402
from compress.training import build_optimizer, build_schedule  # noqa: E402


class LitNet(L.LightningModule):
    """The toolkit's step as a LightningModule: cross-entropy, the recipe's optimizer and schedule."""

    def __init__(self, net: torch.nn.Module, recipe) -> None:
        super().__init__()
        self.net = net
        self.recipe = recipe

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.parameters(), self.recipe.train.optimizer)
        schedule = build_schedule(optimizer, self.recipe.train.schedule, self.recipe.train.iterations)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class LevelRecorder(L.Callback):
    """The masks each level trains with (recorded after the ticket callback has moved on)."""

    def __init__(self, ticket: LotteryTicketCallback) -> None:
        self.ticket = ticket
        self.levels: dict[int, dict] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        search = self.ticket.search
        self.levels.setdefault(search.level, {k: v.clone() for k, v in search.masks.items()})


def trainer(*callbacks, **kwargs) -> L.Trainer:
    # Lightning's default checkpoints go to ./checkpoints: keep them out of the repository
    kwargs.setdefault("default_root_dir", tempfile.mkdtemp(prefix="compress-lightning-"))
    kwargs.setdefault("logger", False)
    return L.Trainer(accelerator="cpu", devices=1, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=list(callbacks), **kwargs)


def fit(recipe, data, *extra, ckpt_path=None, net=None, **kwargs):
    ticket = LotteryTicketCallback(recipe, module="net")
    recorder = LevelRecorder(ticket)
    module = LitNet(make_net(recipe, data) if net is None else net, recipe)
    run = trainer(ticket, recorder, *extra, max_steps=ticket.total_steps, **kwargs)
    run.fit(module, DataLoader(ticket.batches(data.train), batch_size=None), ckpt_path=ckpt_path)
    return ticket, recorder, module, run


def test_runs_to_done_and_finds_find_tickets_masks(recipe, data, tmp_path):
    expected = find_ticket_masks(recipe, tmp_path / "cli")
    ticket, recorder, module, run = fit(recipe, data, enable_checkpointing=False)
    search = ticket.search
    assert search.done and search.level == recipe.lottery.rounds
    assert run.global_step == ticket.total_steps == 30 + 2 * 25
    for level in range(1, recipe.lottery.rounds + 1):
        assert_planned_fractions(recorder.levels[level], level)
        assert_masks_equal(recorder.levels[level], expected[level])  # bit for bit, every level
    assert_masks_equal(search.masks, expected[-1])
    assert_pruned_zero(module.net, search.masks)
    assert 0.6 < search.report()["weights_remaining"] < 0.7
    compute = search.report()["compute"]  # the trainer's steps, counted per level
    assert [(c["iterations_trained"], c["compute_to_ticket"]["iterations"]) for c in compute] == [(30, 30), (25, 55),
                                                                                                  (25, 80)]


def test_search_progress_goes_to_the_trainers_logger(recipe, data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = L.loggers.TensorBoardLogger(tmp_path / "tb", name="lottery", version=0)
    ticket, *_ = fit(recipe, data, enable_checkpointing=False, logger=logger)
    logger.finalize("success")
    events = EventAccumulator(str(tmp_path / "tb" / "lottery" / "version_0"))
    events.Reload()
    remaining = events.Scalars("lottery/weights_remaining")
    # one point at the end of every level, at the optimizer step it happened (levels of 30, 25, 25 steps)
    assert [e.step for e in remaining] == [30, 55, ticket.total_steps]
    assert remaining[0].value > remaining[1].value == pytest.approx(remaining[2].value)  # pruned after 1 and 2 only
    assert remaining[-1].value == pytest.approx(ticket.search.report()["weights_remaining"], rel=1e-6)
    assert [e.value for e in events.Scalars("lottery/level")] == [1, 2, 2]


def test_resume_mid_level_continues_to_the_same_masks(recipe, data, tmp_path):
    saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=45, save_top_k=-1)
    ticket, _, module, _ = fit(recipe, data, saver)
    [checkpoint] = list((tmp_path / "ckpt").glob("*step=45*.ckpt"))
    saved = torch.load(checkpoint, weights_only=True)  # the search's state is plain tensors and numbers
    [state] = [value["search"] for key, value in saved["callbacks"].items() if "LotteryTicketCallback" in key]
    assert (state["level"], state["step_count"]) == (1, 5 + 15)  # mid level 1: 45 = 30 + 15 steps
    # a new process would start from a freshly built model: a different init proves the state is restored
    fresh = build_model(recipe.model, data.num_classes, data.in_channels, data.image_size, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed, recorder, resumed_module, run = fit(recipe, data, ckpt_path=checkpoint, net=fresh,
                                                     enable_checkpointing=False)
    assert min(recorder.levels) == 1  # it went on in level 1: level 0 was not trained again
    assert resumed.search.done and run.global_step == ticket.total_steps
    assert_masks_equal(resumed.search.masks, ticket.search.masks)
    for name, value in module.net.state_dict().items():
        assert torch.equal(resumed_module.net.state_dict()[name], value), name


def test_rewind_to_zero_and_one_shot(data, tmp_path):
    from integration_cases import tiny

    recipe = tiny(rewind_to=0, one_shot=True)
    expected = find_ticket_masks(recipe, tmp_path / "cli")
    ticket, _, module, run = fit(recipe, data, enable_checkpointing=False)
    assert ticket.total_steps == 60 and run.global_step == 60 and ticket.search.done
    assert_masks_equal(ticket.search.masks, expected[1])
    assert_pruned_zero(module.net, ticket.search.masks)


def test_any_dataloader_and_too_few_steps_warns(data):
    """A user's own shuffled DataLoader: not find_ticket's masks, but the plan holds at every level."""
    from integration_cases import tiny

    recipe = tiny(rounds=2, rewind_to=2)
    ticket = LotteryTicketCallback(recipe, module="net", iterations=8)
    rows = TensorDataset(data.train.images[:256], data.train.labels[:256])
    loader = DataLoader(rows, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="max_steps"):
        trainer(ticket, max_steps=ticket.total_steps - 1).fit(LitNet(make_net(recipe, data), recipe), loader)
    assert not ticket.search.done and ticket.search.level == 2
    with pytest.raises(UserError, match="one model"):  # a callback belongs to the model it pruned
        trainer(ticket, max_steps=100).fit(LitNet(make_net(recipe, data), recipe), loader)

    ticket = LotteryTicketCallback(recipe, module="net", iterations=8)
    recorder = LevelRecorder(ticket)
    run = trainer(ticket, recorder, max_steps=100, enable_checkpointing=False)  # the callback stops it
    module = LitNet(make_net(recipe, data), recipe)
    run.fit(module, loader)
    assert ticket.search.done and run.global_step == ticket.total_steps == 8 + 2 * 6
    for level in (1, 2):
        assert_planned_fractions(recorder.levels[level], level)
    assert_pruned_zero(module.net, ticket.search.masks)


class EveryOtherStep(LitNet):
    def configure_optimizers(self):
        config = super().configure_optimizers()
        config["lr_scheduler"]["frequency"] = 2  # stepped every second optimizer step: a rewind cannot replay it
        return config


def test_a_scheduler_not_stepped_every_optimizer_step_is_refused(recipe, data):
    ticket = LotteryTicketCallback(recipe, module="net")
    with pytest.raises(UserError, match="'frequency': 1"):
        trainer(ticket, max_steps=ticket.total_steps).fit(EveryOtherStep(make_net(recipe, data), recipe),
                                                          DataLoader(ticket.batches(data.train), batch_size=None))
