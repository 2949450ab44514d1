"""compress.tolerance.judge: the one rule (relative, then the float64 arbiter) every output check uses."""

from __future__ import annotations

import math

import torch

from compress.tolerance import allowed, judge, max_abs


def _never():
    raise AssertionError("the float64 run is only for a failed relative rule")


def test_the_relative_rule_decides_without_running_the_model_again():
    reference = [torch.tensor([100.0, -3.0])]
    assert judge(allowed(100.0), 100.0, reference, lambda exact: 0.0, _never).passes
    nan = judge(math.nan, 100.0, reference, lambda exact: 0.0, lambda: None)
    assert not nan.passes and nan.error is None


def test_the_arbiter_accepts_as_accurate_as_float32_and_refuses_a_real_error():
    exact = [torch.tensor([1e4, 2.0], dtype=torch.float64)]
    reference = [torch.tensor([1e4 + 0.5, 2.0])]  # torch float32 off by 0.5
    near = [torch.tensor([1e4 - 0.75, 2.0])]  # checked: 1.25 from torch, 0.75 from exact (<= 0.1 + 16 x 0.5)
    verdict = judge(max_abs(near, reference), 1e4, reference, lambda out: max_abs(near, out), lambda: exact)
    assert verdict.passes and verdict.error == 0.75 and verdict.reference_error == 0.5
    wrong = [torch.tensor([1e4 - 50.0, 2.0])]
    verdict = judge(max_abs(wrong, reference), 1e4, reference, lambda out: max_abs(wrong, out), lambda: exact)
    assert not verdict.passes and verdict.error == 50.0
    # no float64 run possible: the relative rule's failure stands
    assert not judge(max_abs(near, reference), 1e4, reference, lambda out: 0.0, lambda: None).passes
