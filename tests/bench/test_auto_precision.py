"""``auto`` picks runtime *and* precision: a reduced precision (OpenVINO bf16, int8 in either runtime) only
when its accuracy on labelled data stays within the stated tolerance of fp32; exact ones by their outputs."""

from __future__ import annotations

import pytest
import torch

from compress.bench import magnitude_ticket, make_backends
from compress.bench.auto import ACCURACY_TOLERANCE, AutoBackend, top1_accuracy
from compress.bench.source import resolve_source
from compress.errors import UserError
from compress.models import create_model

pytest.importorskip("openvino")
NAMES = ["torch_dense", "ort_dense", "openvino", "openvino_bf16", "ort_int8", "openvino_int8"]


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    model = magnitude_ticket(create_model("lenet300_100"), 0.05)
    x = torch.randn(256, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)  # fp32's own predictions: fp32 accuracy is 1 by construction
    built, unavailable = make_backends(NAMES, model, x[:1], threads=1, accuracy_data=(x, y))
    assert not unavailable, unavailable
    return model, x, y, built


def _auto(case, tolerance, sizes=(1, 8)):
    model, x, y, built = case
    return AutoBackend(resolve_source(model, x[:1]), dict(built), list(sizes), budget_s=0.005, rounds=1,
                       accuracy_data=(x, y), accuracy_tolerance=tolerance)


@pytest.mark.parametrize("tolerance", [0.0, 0.05])
def test_reduced_precision_is_admitted_exactly_when_within_the_tolerance_of_fp32(case, tolerance):
    _, x, y, built = case
    auto = _auto(case, tolerance)
    assert auto.accuracy["fp32"] == top1_accuracy(built["torch_dense"], x, y) == 1.0
    reduced = [name for name, backend in built.items() if getattr(backend, "reduced_precision", False)]
    assert set(reduced) == {"openvino_bf16", "ort_int8", "openvino_int8"}
    for batch, choice in auto.choices.items():
        for name in reduced:
            admitted = auto.accuracy[name] >= auto.accuracy["fp32"] - tolerance
            assert (name in choice["median_ms"]) == admitted, (batch, name, auto.accuracy)
            assert (name in choice["dropped"]) == (not admitted)
        assert choice["backend"] in choice["median_ms"]  # the pick is always an admitted candidate
        picked = auto.backend_for(batch)
        if getattr(picked, "reduced_precision", False):
            assert auto.accuracy[choice["backend"]] >= auto.accuracy["fp32"] - tolerance


def test_the_rule_bites_int8_flips_predictions_that_fp32_gets_right(case):
    # int8 changes some of fp32's predictions on these inputs: at tolerance 0 it is out, with room it is in
    strict, loose = _auto(case, 0.0, [1]), _auto(case, 1 - strict_accuracy(case), [1])
    assert strict.accuracy["ort_int8"] < 1.0
    assert "ort_int8" in strict.choices[1]["dropped"] and "ort_int8" not in loose.choices[1]["dropped"]


def strict_accuracy(case) -> float:
    _, x, y, built = case
    return top1_accuracy(built["ort_int8"], x, y)


def test_without_labelled_data_no_reduced_precision_is_picked(case):
    model, x, _, built = case
    auto = AutoBackend(resolve_source(model, x[:1]), dict(built), [1], budget_s=0.005, rounds=1)
    assert ACCURACY_TOLERANCE > 0 and auto.accuracy == {}
    for name in ("openvino_bf16", "ort_int8", "openvino_int8"):
        assert "no labelled accuracy_data" in auto.choices[1]["dropped"][name]
    assert not getattr(auto.backend_for(1), "reduced_precision", False)


def test_openvino_f32_is_exact_and_reports_the_precision_it_ran(case):
    _, x, _, built = case
    expected = built["torch_dense"](x[:8])
    assert torch.allclose(built["openvino"](x[:8]), expected, atol=1e-4)
    assert built["openvino"].info["inference_precision"] == "f32"
    assert built["openvino_bf16"].info["inference_precision"] in ("f32", "bf16")  # bf16 only where the CPU has it


def test_a_bad_tolerance_is_a_user_error(case):
    model, x, y, built = case
    with pytest.raises(UserError, match="accuracy_tolerance"):
        AutoBackend(resolve_source(model, x[:1]), dict(built), [1], accuracy_data=(x, y), accuracy_tolerance=1.5)
