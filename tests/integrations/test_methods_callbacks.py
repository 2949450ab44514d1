"""The methods beyond IMP through the callbacks: lottery.strategy at_init (masks are find_ticket.py's),
lottery.retrain lr_rewind / finetune (find_ticket.py's masks at every level) and lottery.early_bird (levels
end where an own loop over the same data ends them, a resumed fit too)."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
import torch.nn.functional as F

L = pytest.importorskip("lightning.pytorch")

from integration_cases import assert_masks_equal, find_ticket_masks, make_net, tiny  # noqa: E402
from test_lightning import LevelRecorder, LitNet, fit, trainer  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from compress.errors import UserError  # noqa: E402
from compress.integrations.lightning import LotteryTicketCallback  # noqa: E402
from compress.lottery import LotterySearch  # noqa: E402
from compress.training import build_optimizer, build_schedule  # noqa: E402

# converges within the tiny recipe's 30-step levels: every level before the last ends early
EARLY_BIRD = {"every": 5, "distance": 0.5, "patience": 1}


def _snip(recipe):
    return dataclasses.replace(recipe, prune=dataclasses.replace(recipe.prune, method="snip"))


def test_at_init_snip_through_lightning_matches_find_ticket(data, tmp_path, monkeypatch):
    recipe = _snip(tiny(strategy="at_init"))
    expected = find_ticket_masks(recipe, tmp_path / "cli")
    batches = data.train.batches(recipe.train.batch_size, recipe.seed)
    first = [next(batches) for _ in range(recipe.prune.score_batches)]
    original = LotteryTicketCallback.__init__

    def with_batches(self, *args, **kwargs):
        original(self, *args, score_batches=first, **kwargs)

    monkeypatch.setattr(LotteryTicketCallback, "__init__", with_batches)
    ticket, recorder, _, _ = fit(recipe, data, enable_checkpointing=False)
    assert ticket.search.done
    for level in (1, 2):
        assert_masks_equal(recorder.levels[level], expected[level])


@pytest.mark.parametrize("retrain", ["lr_rewind", "finetune"])
def test_retrain_variants_through_lightning_match_find_ticket(retrain, data, tmp_path):
    # the level-2 masks rank the weights level 1 trained: kept (not rewound) and under the replayed or held
    # schedule; they differ between the variants, so a schedule the callback got wrong would show here
    recipe = tiny(retrain=retrain)
    expected = find_ticket_masks(recipe, tmp_path / "cli")
    ticket, recorder, _, run = fit(recipe, data, enable_checkpointing=False)
    assert ticket.search.done and run.global_step == ticket.total_steps
    for level in (1, 2):
        assert_masks_equal(recorder.levels[level], expected[level])


def _own_data(recipe, data, ticket):
    dataset = TensorDataset(data.train.images, data.train.labels)
    size = recipe.train.batch_size
    return DataLoader(dataset, batch_size=size, sampler=ticket.sampler(len(dataset), size))


def _own_loop_early_bird(recipe, data, loader) -> tuple[LotterySearch, dict[int, dict]]:
    """The step-driven own loop over the same global-step stream, the reference for the callback: the search
    and the masks each level trained with."""
    net = make_net(recipe, data)
    search = LotterySearch(net, recipe)
    optimizer = build_optimizer(net.parameters(), recipe.train.optimizer)
    schedule = build_schedule(optimizer, recipe.train.schedule, recipe.train.iterations)
    search.watch(optimizer, schedule)
    levels = {0: {k: v.clone() for k, v in search.masks.items()}}
    for x, y in loader:
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
        schedule.step()
        if search.on_step().done:
            break
        levels.setdefault(search.level, {k: v.clone() for k, v in search.masks.items()})
    return search, levels


def _early_bird_fit(recipe, data, *extra, ckpt_path=None, **kwargs):
    ticket = LotteryTicketCallback(recipe, module="net")
    recorder = LevelRecorder(ticket)
    module = LitNet(make_net(recipe, data), recipe)
    run = trainer(ticket, recorder, *extra, max_steps=ticket.total_steps, **kwargs)
    run.fit(module, _own_data(recipe, data, ticket), ckpt_path=ckpt_path)
    return ticket, recorder, run


def test_early_bird_through_lightning_ends_levels_where_an_own_loop_does(data, tmp_path):
    recipe = tiny(early_bird=EARLY_BIRD)
    ticket, recorder, run = _early_bird_fit(recipe, data, enable_checkpointing=False)
    search = ticket.search
    stops = search.early_bird_steps
    assert search.done and all(stops[level] is not None and stops[level] < 30 for level in (0, 1)), stops
    # the fit stopped when the search was done: fewer optimizer steps than the full-length upper bound
    assert run.global_step == stops[0] + (stops[1] - 5) + 25 < ticket.total_steps

    reference_ticket = LotteryTicketCallback(recipe, module="net")  # only its sampler: position 0 throughout
    own, levels = _own_loop_early_bird(recipe, data, _own_data(recipe, data, reference_ticket))
    assert own.early_bird_steps == stops
    for level in (1, 2):
        assert_masks_equal(recorder.levels[level], levels[level])


def test_early_bird_through_lightning_resumes_after_an_early_end(data, tmp_path):
    recipe = tiny(early_bird=EARLY_BIRD)
    saver = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1)
    ticket, _, run = _early_bird_fit(recipe, data, saver)
    stops = ticket.search.early_bird_steps
    resume_at = stops[0] + 3  # three steps into level 1, after level 0 ended early
    [checkpoint] = list((tmp_path / "ckpt").glob(f"*step={resume_at}.ckpt"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed, recorder, resumed_run = _early_bird_fit(recipe, data, ckpt_path=checkpoint,
                                                         enable_checkpointing=False)
    assert min(recorder.levels) == 1 and resumed.search.early_bird_steps == stops
    assert resumed_run.global_step == run.global_step
    assert_masks_equal(resumed.search.masks, ticket.search.masks)


def test_early_bird_through_hf_ends_levels_where_an_own_loop_does(data, tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from test_transformers import Classifier, arguments
    from transformers import Trainer

    from compress.integrations.transformers import LotteryTicketCallback as HFCallback

    recipe = tiny(early_bird=EARLY_BIRD)
    model = Classifier(make_net(recipe, data))
    ticket = HFCallback(recipe, model.net)
    optimizer = build_optimizer(model.parameters(), recipe.train.optimizer)
    schedule = build_schedule(optimizer, recipe.train.schedule, recipe.train.iterations)
    with pytest.raises(UserError, match="early_bird"):
        ticket.batches(data.train)
    # the Trainer's own sampler: rows in a seeded order the own loop can replay as one stream
    rows = [{"x": x, "labels": y} for x, y in zip(data.train.images, data.train.labels, strict=True)]
    args = arguments(tmp_path / "hf", ticket.total_steps, recipe.train.batch_size, max_grad_norm=0.0)
    hf = Trainer(model=model, args=args, train_dataset=rows, optimizers=(optimizer, schedule), callbacks=[ticket])
    order = [batch for batch in hf.get_train_dataloader()]  # the batches train() will draw, epoch by epoch
    hf.train()
    search = ticket.search
    assert search.done and all(search.early_bird_steps[level] is not None for level in (0, 1))
    assert hf.state.global_step < ticket.total_steps

    # the last level's masks come from levels 0 and 1, which train within the first epoch (the Trainer
    # reshuffles each epoch): the own loop replays that epoch
    stops = search.early_bird_steps
    assert stops[0] + stops[1] - recipe.lottery.rewind_to <= len(order)
    own, levels = _own_loop_early_bird(recipe, data, [(batch["x"], batch["labels"]) for batch in order])
    assert own.early_bird_steps == stops
    assert_masks_equal(search.masks, levels[2])


def test_callbacks_refuse_replayed_batches_with_early_bird():
    recipe = tiny(early_bird=EARLY_BIRD)
    with pytest.raises(UserError, match="ticket.batches"):
        LotteryTicketCallback(recipe, module="net").batches(None)


def test_every_lottery_key_is_honoured_by_both_callbacks():
    from compress.recipe.support import SUPPORT, schema_keys, status

    for key in (k for k in schema_keys() if k.startswith("lottery.") and k not in ("lottery.controls",
                                                                                    "lottery.ticket_tolerance",
                                                                                    "lottery.executor")):
        assert status(key, "lightning") == status(key, "hf") == "honoured", (key, SUPPORT[key])


def test_finetune_schedule_hold_is_what_the_callback_relies_on(data, tmp_path, monkeypatch):
    # without the hold a fine-tuning level's cosine climbs its next period: the masks then differ
    recipe = tiny(retrain="finetune")
    expected = find_ticket_masks(recipe, tmp_path / "cli")
    monkeypatch.setattr(LotterySearch, "hold_final_lr", lambda self, scheduler: None)
    _, recorder, _, _ = fit(recipe, data, enable_checkpointing=False)
    assert not all(torch.equal(recorder.levels[2][k], expected[2][k]) for k in expected[2])


def test_early_bird_through_hf_resumes_after_an_early_end(data, tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from test_transformers import Classifier, arguments
    from transformers import Trainer

    from compress.integrations.transformers import LotteryTicketCallback as HFCallback

    recipe = tiny(early_bird=EARLY_BIRD)
    rows = [{"x": x, "labels": y} for x, y in zip(data.train.images, data.train.labels, strict=True)]

    def train(resume=None):
        model = Classifier(make_net(recipe, data))
        ticket = HFCallback(recipe, model.net)
        args = arguments(tmp_path / "hf", ticket.total_steps, recipe.train.batch_size, learning_rate=1e-3)
        args.save_strategy, args.save_steps = "steps", 1  # arguments() fixes save_strategy="no"
        hf = Trainer(model=model, args=args, train_dataset=rows, callbacks=[ticket])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf.train(resume_from_checkpoint=resume)
        return ticket, hf

    ticket, hf = train()
    stops = ticket.search.early_bird_steps
    assert stops[0] is not None
    resumed, resumed_hf = train(str(tmp_path / "hf" / f"checkpoint-{stops[0] + 3}"))  # in level 1
    assert resumed.search.early_bird_steps == stops
    assert resumed_hf.state.global_step == hf.state.global_step
    assert_masks_equal(resumed.search.masks, ticket.search.masks)
