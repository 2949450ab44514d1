#!/usr/bin/env python
"""Find a lottery ticket: python tools/find_ticket.py --recipe recipes/lth_conv4.yaml [--set k=v ...]"""

from __future__ import annotations

import argparse
import json
import os

from compress.cli import run_cli


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", help="YAML recipe (see recipes/)")
    parser.add_argument("--out", help="run directory (default: runs/<name>-<hash of the resolved recipe>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a recipe value, typed by the schema (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved recipe and pruning plan")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--json", action="store_true", help="print the run's summary as JSON instead of a short text")
    parser.add_argument("--help-recipe", action="store_true", help="list every recipe key with its help text")
    parser.add_argument("--executor", choices=("auto", "inline", "local", "ray"),
                        help="where each round's controls train while the ticket chain goes on (default: the "
                             "recipe's lottery.executor; auto: local:2 on a CPU with 2+ cores, controls and 1000+ "
                             "iterations, else inline); with the same torch threads per training (COMPRESS_THREADS) "
                             "results are identical bit for bit")
    parser.add_argument("--workers", type=int, metavar="N", help="trainings at a time (local: this process, which "
                        "trains the ticket chain, plus N-1 worker processes) or Ray tasks at a time")
    parser.add_argument("--address", help="with --executor ray: an existing Ray cluster (default: RAY_ADDRESS, "
                        "else a local Ray of --workers CPUs)")
    parser.add_argument("--connect-timeout", type=float, metavar="SECONDS",
                        help="with --address / RAY_ADDRESS: give up on an address that does not answer within "
                             "this many seconds (default 10; env COMPRESS_RAY_TIMEOUT)")
    args = parser.parse_args()

    from compress.recipe import describe_schema, load_recipe, where

    if args.help_recipe:
        print(describe_schema())
        return 0
    if not args.recipe:
        parser.error("--recipe is required")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers: at least 1, got {args.workers}")
    if args.executor or args.workers:  # a run setting, not in the run hash: the same run dir either way
        name = args.executor or "auto"
        args.overrides.append(f"lottery.executor={name}:{args.workers}" if args.workers and name != "inline"
                              else f"lottery.executor={name}")
    if args.address:
        os.environ["RAY_ADDRESS"] = args.address
    if args.connect_timeout is not None:
        os.environ["COMPRESS_RAY_TIMEOUT"] = str(args.connect_timeout)
    recipe = load_recipe(args.recipe, overrides=args.overrides)
    locate = lambda key_path: where(recipe, key_path)  # noqa: E731
    if args.dry_run:
        from compress.lottery import dry_run

        print(dry_run(recipe, locate))
        return 0
    from compress.pipeline import format_summary, run_recipe

    summary = run_recipe(recipe, args.out, progress=not args.no_progress, where=locate)
    if "ticket" not in summary:  # a torchrun rank other than 0: rank 0 reports
        return 0
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_summary(summary))
    return 0


if __name__ == "__main__":
    run_cli(main)
