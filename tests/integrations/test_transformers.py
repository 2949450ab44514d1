"""compress.integrations.transformers under a real transformers.Trainer (CPU)."""

from __future__ import annotations

import pytest
import torch.nn as nn
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from integration_cases import (  # noqa: E402
    assert_masks_equal,
    assert_planned_fractions,
    assert_pruned_zero,
    find_ticket_masks,
    make_net,
    tiny,
)
from transformers import Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from compress.errors import UserError  # noqa: E402
from compress.integrations.transformers import LotteryTicketCallback  # noqa: E402
from compress.training import build_optimizer, build_schedule  # noqa: E402


class Classifier(nn.Module):
    """What the Trainer expects of a model: forward(**batch) -> {'loss', 'logits'}."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x, labels=None):
        logits = self.net(x)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


class LevelRecorder(TrainerCallback):
    def __init__(self, ticket: LotteryTicketCallback) -> None:
        self.ticket = ticket
        self.levels: dict[int, dict] = {}

    def on_step_end(self, args, state, control, **kwargs):
        search = self.ticket.search
        self.levels.setdefault(search.level, {k: v.clone() for k, v in search.masks.items()})


def arguments(out, max_steps, batch_size, **kwargs) -> TrainingArguments:
    return TrainingArguments(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=batch_size,
                             report_to=[], use_cpu=True, save_strategy="no", seed=0, dataloader_num_workers=0,
                             disable_tqdm=True, logging_strategy="no", **kwargs)


def train(recipe, data, out, **kwargs):
    model = Classifier(make_net(recipe, data))
    ticket = LotteryTicketCallback(recipe, model.net)  # installs the masks: build the optimizer after it
    recorder = LevelRecorder(ticket)
    optimizer = build_optimizer(model.parameters(), recipe.train.optimizer)
    schedule = build_schedule(optimizer, recipe.train.schedule, recipe.train.iterations)
    # max_grad_norm=0: the toolkit's loop does not clip gradients (the Trainer clips at 1.0 by default)
    args = arguments(out, ticket.total_steps, recipe.train.batch_size, max_grad_norm=0.0, **kwargs)
    trainer = Trainer(model=model, args=args, train_dataset=ticket.batches(data.train),
                      optimizers=(optimizer, schedule), callbacks=[ticket, recorder])
    trainer.train()
    return ticket, recorder, model, trainer


def test_runs_to_done_and_finds_find_tickets_masks(recipe, data, tmp_path):
    expected = find_ticket_masks(recipe, tmp_path / "cli")
    ticket, recorder, model, trainer = train(recipe, data, tmp_path / "hf")
    search = ticket.search
    assert search.done and search.level == recipe.lottery.rounds
    assert trainer.state.global_step == ticket.total_steps == 30 + 2 * 25
    for level in range(1, recipe.lottery.rounds + 1):
        assert_planned_fractions(recorder.levels[level], level)
        assert_masks_equal(recorder.levels[level], expected[level])  # bit for bit, every level
    assert_pruned_zero(model.net, search.masks)
    assert 0.6 < search.report()["weights_remaining"] < 0.7
    compute = search.report()["compute"]  # the trainer's steps, counted per level
    assert [(c["iterations_trained"], c["compute_to_ticket"]["iterations"]) for c in compute] == [(30, 30), (25, 55),
                                                                                                  (25, 80)]


def test_trainer_built_optimizer_and_own_data_order(data, tmp_path):
    """The Trainer's own AdamW, linear schedule, shuffling and clipping: not find_ticket's masks, but the
    plan holds -- each level prunes to the planned fractions, pruned weights stay zero."""
    recipe = tiny(rounds=2, rewind_to=3)
    model = Classifier(make_net(recipe, data))
    ticket = LotteryTicketCallback(recipe, model.net, iterations=10)
    recorder = LevelRecorder(ticket)
    rows = [{"x": x, "labels": y} for x, y in zip(data.train.images[:320], data.train.labels[:320], strict=True)]
    args = arguments(tmp_path / "hf", ticket.total_steps, 16, learning_rate=1e-3)
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[ticket, recorder])
    trainer.train()
    assert ticket.search.done and trainer.state.global_step == ticket.total_steps == 10 + 2 * 7
    for level in (1, 2):
        assert_planned_fractions(recorder.levels[level], level)
    assert_pruned_zero(model.net, ticket.search.masks)


def test_max_steps_too_small_is_refused(recipe, data, tmp_path):
    model = Classifier(make_net(recipe, data))
    ticket = LotteryTicketCallback(recipe, model.net)
    args = arguments(tmp_path / "hf", ticket.total_steps - 1, recipe.train.batch_size)
    trainer = Trainer(model=model, args=args, train_dataset=ticket.batches(data.train), callbacks=[ticket])
    with pytest.raises(UserError, match="max_steps"):
        trainer.train()


def test_a_reduce_on_plateau_schedule_is_refused_where_a_rewind_replays_it(data, tmp_path):
    """The Trainer steps ReduceLROnPlateau on an evaluation metric: a rewind to step 3 cannot replay it."""
    recipe = tiny(rounds=1, rewind_to=3)
    model = Classifier(make_net(recipe, data))
    ticket = LotteryTicketCallback(recipe, model.net, iterations=10)
    rows = [{"x": x, "labels": y} for x, y in zip(data.train.images[:64], data.train.labels[:64], strict=True)]
    args = arguments(tmp_path / "hf", ticket.total_steps, 16, lr_scheduler_type="reduce_lr_on_plateau",
                     eval_strategy="steps", eval_steps=5)
    trainer = Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows, callbacks=[ticket])
    with pytest.raises(UserError, match="ReduceLROnPlateau follows a metric"):
        trainer.train()
    assert ticket.search.level == 0 and ticket.search.step_count == 0  # refused before the first step


def _bert():
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=32, num_labels=3))


def _at_init(method: str):
    from compress.recipe import recipe_from_dict

    return recipe_from_dict({"prune": {"method": method, "rates": {"linear": 0.5, "output": 0.0}},
                             "lottery": {"strategy": "at_init", "rounds": 1}, "train": {"iterations": 10}})


def test_at_init_scores_a_transformers_model_on_its_own_keyword_batches():
    import copy
    import warnings

    import torch

    from compress.pruning.scorers import snip_scores

    model = _bert()
    reference = copy.deepcopy(model)
    batch = {"input_ids": torch.randint(0, 50, (4, 7)), "attention_mask": torch.ones(4, 7, dtype=torch.long),
             "labels": torch.randint(0, 3, (4,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # keys the callback leaves to the Trainer
        ticket = LotteryTicketCallback(_at_init("snip"), model, score_batches=[batch])
    names = ticket.search.names
    torch.manual_seed(1)  # SNIP scores in train mode: BERT's dropout draws the same for both
    masks = ticket.search.next_masks()
    torch.manual_seed(1)
    scores = snip_scores(reference, names, None, [batch])
    for name in names:
        keep = masks[name].bool()
        assert int(keep.sum()) == keep.numel() // 2
        assert scores[name][keep].min() >= scores[name][~keep].max()


def test_synflow_on_token_ids_is_one_line():
    import torch

    batch = {"input_ids": torch.randint(0, 50, (4, 7)), "labels": torch.randint(0, 3, (4,))}
    ticket = LotteryTicketCallback(_at_init("synflow"), _bert(), score_batches=[batch])
    with pytest.raises(UserError, match="synflow.*not float.*input_ids: torch.int64"):
        ticket.search.next_masks()
