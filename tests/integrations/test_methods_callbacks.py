"""lottery.strategy at_init through the Lightning callback (its masks are find_ticket.py's), and the
callbacks' one-line refusals of the keys they do not wire (early-bird, retrain variants)."""

from __future__ import annotations

import dataclasses

import pytest

L = pytest.importorskip("lightning.pytorch")

from integration_cases import assert_masks_equal, find_ticket_masks, tiny  # noqa: E402
from test_lightning import fit  # noqa: E402

from compress.errors import UserError  # noqa: E402
from compress.integrations.lightning import LotteryTicketCallback  # noqa: E402


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


@pytest.mark.parametrize("lottery", [{"early_bird": {"every": 5}}, {"retrain": "finetune"}])
def test_callbacks_refuse_what_they_do_not_wire(lottery):
    from compress.integrations.transformers import LotteryTicketCallback as HFCallback

    recipe = tiny(**lottery)
    with pytest.raises(UserError, match="lottery"):
        LotteryTicketCallback(recipe, module="net")
    with pytest.raises(UserError, match="lottery"):
        HFCallback(recipe, model=None)
