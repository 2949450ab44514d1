"""Lottery tickets: IMP with rewinding (any training loop), controls, resumable runs, reports."""

from compress.lottery.dry_run import dry_run, plan_table
from compress.lottery.planning import one_shot_rates
from compress.lottery.rundir import default_run_dir
from compress.lottery.runner import LotteryRun, find_ticket
from compress.lottery.search import LotterySearch
from compress.lottery.summary import choose_ticket, read_summary
from compress.ticket import (
    load_ticket,
    load_ticket_into,
    read_ticket,
    save_ticket_from_model,
    ticket_model,
)

__all__ = [
    "LotteryRun", "LotterySearch", "choose_ticket", "default_run_dir", "dry_run", "find_ticket", "load_ticket",
    "load_ticket_into", "one_shot_rates", "plan_table", "read_summary", "read_ticket", "save_ticket_from_model",
    "ticket_model",
]
