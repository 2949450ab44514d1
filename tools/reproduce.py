#!/usr/bin/env python
"""Reproduce the lottery-ticket paper on CPU: python tools/reproduce.py [--suite full|long|smoke] [--out DIR] [--jobs N]

Runs (or resumes) every experiment of the suite as ordinary run dirs, then writes the tables, plots,
one JSON per experiment and README.md to --out, all computed from the run dirs' summary.json.
"""

from __future__ import annotations

import argparse
import sys

from compress.cli import run_cli


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="full", help="full (about 45 min on 2 cores), methods (IMP against pruning at init, rewinding variants and early-bird; many hours on 2 cores), long (the 10,000-iteration early-stopping table: about an hour on one core) or smoke (seconds)")
    parser.add_argument("--out", help="results folder (default: benchmarks/results/reproduction for full, "
                                      "runs/reproduction-smoke/results for smoke)")
    parser.add_argument("--runs", help="where the run dirs live (default: runs/reproduction-<suite>)")
    parser.add_argument("--jobs", type=int, default=1, help="(experiment, seed) runs in parallel processes")
    parser.add_argument("--executor", choices=("inline", "local", "ray"),
                        help="where the runs go (default: inline for --jobs 1, else local worker processes)")
    parser.add_argument("--run-executor", metavar="EXECUTOR",
                        help="each run's lottery.executor (default: auto with --jobs 1, i.e. local:2 beside the "
                             "ticket chain on 2+ cores; inline with more jobs)")
    parser.add_argument("--interleave", action="store_true",
                        help="one process, each experiment's seeds round by round (seed 0 round r, seed 1 round r, "
                             "...): a run stopped at a deadline leaves every seed at the same round")
    parser.add_argument("--only", action="append", metavar="EXPERIMENT", help="run only this experiment "
                        "(repeatable); the report still covers every experiment with run dirs")
    parser.add_argument("--seed", dest="seeds", type=int, action="append", metavar="SEED",
                        help="run only this seed of each experiment (repeatable)")
    parser.add_argument("--cifar10", help="CIFAR-10 JPEG tarball for Conv-2 (default: the shared copy)")
    parser.add_argument("--aggregate-only", action="store_true", help="train nothing: rebuild the results "
                        "from the run dirs as they are")
    args = parser.parse_args()

    from compress.reproduce import run_suite, suite
    from compress.reproduce.report import SUMMARIES, default_paths, write_results
    from compress.reproduce.suite import CIFAR10_TARBALL, select

    experiments = suite(args.suite, args.cifar10 or CIFAR10_TARBALL)
    out, runs = default_paths(args.suite, args.out, args.runs)
    if not args.aggregate_only:
        run_suite(select(experiments, args.only), runs, args.jobs, argv=["python", "tools/reproduce.py", *sys.argv[1:]],
                  seeds=args.seeds, executor=args.executor, run_executor=args.run_executor,
                  interleave=args.interleave, kept=out / SUMMARIES)
    if args.suite == "methods":
        from compress.reproduce.methods_report import write_methods_results

        written = write_methods_results(experiments, runs, out)
    else:
        written = write_results(experiments, runs, out, args.suite)
    print(f"results in {written}")
    return 0


if __name__ == "__main__":
    run_cli(main)
