"""Reproduce the lottery-ticket paper's phenomena with the tool itself: suites, aggregation, report."""

from compress.reproduce.aggregate import aggregate_experiment
from compress.reproduce.experiment import Experiment
from compress.reproduce.suite import run_suite, suite

__all__ = ["Experiment", "aggregate_experiment", "run_suite", "suite"]
