"""Every backend computes what torch dense computes; CSR keeps exactly the nonzeros; auto picks and matches."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn as nn

from compress.bench import (
    BACKENDS,
    REDUCED_PRECISION,
    AutoBackend,
    Backend,
    LinearChain,
    Source,
    linear_chains,
    magnitude_ticket,
    make_backend,
    make_backends,
    pinned_threads,
    to_csr,
    weights_remaining,
)
from compress.models import create_model

SHAPES = {"lenet300_100": (1, 28, 28), "conv4": (3, 16, 16)}  # conv4 on 16x16: same layers, 4x less work
TOLERANCE = 1e-4


def ticket(name: str, remaining: float = 0.1) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = magnitude_ticket(create_model(name, image_size=SHAPES[name][-1]), remaining)
    return model, torch.randn(1, *SHAPES[name], generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module", params=sorted(SHAPES))
def built(request):
    # one torch thread: these tests check outputs, and a second OpenMP thread on a busy shared machine
    # can turn a 20 us call into a 30 ms one (see test_auto_also_times_one_thread for more threads)
    with pinned_threads(1):
        model, example = ticket(request.param)
        backends, unavailable = make_backends(list(BACKENDS), model, example, batch_sizes=(1, 4), budget_s=0.01)
        yield request.param, model, backends, unavailable


def test_to_csr_keeps_exactly_the_nonzeros():
    torch.manual_seed(0)
    weight = torch.randn(30, 50)
    weight[torch.rand(30, 50) < 0.9] = 0
    weight[3] = 0  # an empty row
    csr = to_csr(weight)
    assert csr.layout == torch.sparse_csr
    assert csr.crow_indices().dtype == torch.int32 and csr.col_indices().dtype == torch.int32
    assert csr.values().numel() == int(torch.count_nonzero(weight))
    assert torch.equal(csr.to_dense(), weight)
    rows, cols = weight.nonzero(as_tuple=True)
    assert torch.equal(csr.values(), weight[rows, cols])  # row-major order, same values, nothing extra


def test_to_csr_rejects_non_matrices():
    with pytest.raises(ValueError, match="2-D"):
        to_csr(torch.zeros(2, 3, 4))


def test_ticket_sparsity_is_as_asked():
    model, _ = ticket("lenet300_100", 0.1)
    assert weights_remaining(model) == pytest.approx(0.1, abs=0.002)


def test_every_backend_matches_torch_dense(built):
    name, model, backends, unavailable = built
    # both paper models support every fp32 backend; static int8 of a conv net needs calibration inputs
    assert set(unavailable) <= set(REDUCED_PRECISION), unavailable
    assert set(BACKENDS) - set(REDUCED_PRECISION) <= set(backends)
    backends = {n: b for n, b in backends.items() if n not in REDUCED_PRECISION}  # test_auto_precision.py
    for batch in (1, 3, 4):
        x = torch.randn(batch, *SHAPES[name], generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(x)  # the masked model itself, not one of the backends
        for backend_name, backend in backends.items():
            out = backend(x)
            assert out.shape == expected.shape, backend_name
            diff = float((out - expected).abs().max())
            assert diff <= TOLERANCE, f"{name} {backend_name} batch {batch}: max diff {diff:.3g}"


def test_auto_picks_a_timed_candidate(built):
    _, _, backends, _ = built
    auto = backends["auto"]
    assert isinstance(auto, AutoBackend)
    assert set(auto.choices) == {1, 4}
    for batch, choice in auto.choices.items():
        assert choice["backend"] in auto.candidates
        fastest = min(choice["median_ms"], key=choice["median_ms"].get)
        assert choice["backend"] in (fastest, "ort_dense")
        if choice["backend"] != fastest:  # dense kept because the winner was within the margin
            assert choice["median_ms"][fastest] > 0.95 * choice["median_ms"]["ort_dense"]
        assert {"torch_dense", "ort_dense", "torch_sparse", "torch_per_layer"} <= set(choice["median_ms"])
        picks = choice["layers"]["torch_per_layer"]
        assert set(picks) == {"1", "3", "5"} or set(picks) == {"11", "13", "15"}
        assert all(c["pick"] in ("csr", "dense") for c in picks.values())
        assert auto.backend_for(batch).name == choice["backend"]
    assert auto.backend_for(1000).name == auto.choices[4]["backend"]  # nearest timed batch size


class _Fake(Backend):
    """``2 x`` after ``delay`` seconds; counts its calls (auto's candidates, with latencies we set)."""

    def __init__(self, name: str, delay: float) -> None:
        super().__init__(name)
        self.delay = delay
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return x * 2


def _fake_auto(monkeypatch, warm: bool = True) -> tuple[AutoBackend, dict[str, _Fake], list[int]]:
    """auto over a fast sparse and a slow dense fake (no Linear: no per-layer candidates); ``timed``
    counts the timing runs (``measure_interleaved`` calls), the only way auto times anything."""
    import compress.bench.auto as auto_module

    timed: list[int] = []
    real = auto_module.measure_interleaved

    def spy(*args, **kwargs):
        timed.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(auto_module, "measure_interleaved", spy)
    fakes = {"torch_dense": _Fake("torch_dense", 0.002), "torch_sparse": _Fake("torch_sparse", 0.0)}
    source = Source("fake", model=nn.Sequential(nn.Conv2d(1, 1, 1)), example_input=torch.randn(1, 1, 2, 2))
    auto = AutoBackend(source, dict(fakes), batch_sizes=(2,), budget_s=0.01, rounds=2,
                       **({} if warm else {"warm": False}))  # warm=True is the default
    return auto, fakes, timed


def test_auto_choice_is_fixed_after_warm_up_and_calls_only_dispatch(monkeypatch):
    auto, fakes, timed = _fake_auto(monkeypatch)
    assert auto.backend_for(2).name == "torch_sparse" and timed == [1]
    timed.clear()
    dense_calls, sparse_calls = fakes["torch_dense"].calls, fakes["torch_sparse"].calls
    fakes["torch_sparse"].delay = 0.01  # the pick turns slow (a busy machine): auto must not react in a call
    x = torch.randn(2, 1, 2, 2)
    outputs = [auto(x) for _ in range(8)]
    assert not timed  # no timing run after warm-up
    assert fakes["torch_dense"].calls == dense_calls  # no extra inference of another candidate
    assert fakes["torch_sparse"].calls == sparse_calls + 8  # exactly the calls asked for
    assert auto.backend_for(2).name == "torch_sparse" and auto.choices[2]["backend"] == "torch_sparse"
    assert all(torch.equal(out, x * 2) for out in outputs)


def test_auto_is_safe_to_call_from_several_threads(monkeypatch):
    auto, fakes, timed = _fake_auto(monkeypatch)
    timed.clear()
    before = {name: fake.calls for name, fake in fakes.items()}
    fakes["torch_sparse"].delay = 0.005  # slower than at warm-up, as under the load of concurrent calls
    x = torch.randn(2, 1, 2, 2)
    with ThreadPoolExecutor(max_workers=8) as pool:
        outputs = list(pool.map(lambda _: (auto(x), auto.backend_for(2).name), range(64)))
    assert all(torch.equal(out, x * 2) and name == "torch_sparse" for out, name in outputs)
    assert not timed and fakes["torch_dense"].calls == before["torch_dense"]
    assert fakes["torch_sparse"].calls == before["torch_sparse"] + 64
    assert auto.summary() == {2: "torch_sparse"}


def test_concurrent_first_calls_warm_up_once(monkeypatch):
    decisions: list[int] = []
    real = AutoBackend._decide

    def counting(self):
        decisions.append(1)
        time.sleep(0.05)  # keep the other threads waiting at the lock
        return real(self)

    monkeypatch.setattr(AutoBackend, "_decide", counting)
    auto, fakes, timed = _fake_auto(monkeypatch, warm=False)
    assert not auto.warm and not timed and not auto.choices
    x = torch.randn(2, 1, 2, 2)
    barrier = threading.Barrier(6)

    def first_call(_):
        barrier.wait()
        return auto(x)

    with ThreadPoolExecutor(max_workers=6) as pool:
        outputs = list(pool.map(first_call, range(6)))
    assert decisions == [1] and timed == [1] and auto.warm
    assert all(torch.equal(out, x * 2) for out in outputs) and auto.summary() == {2: "torch_sparse"}


def test_real_auto_gives_the_same_outputs_from_several_threads(built, monkeypatch):
    import compress.bench.auto as auto_module

    name, model, backends, _ = built
    auto = backends["auto"]
    chosen = auto.summary()
    monkeypatch.setattr(auto_module, "measure_interleaved", lambda *a, **k: pytest.fail("timed after warm-up"))
    xs = {batch: torch.randn(batch, *SHAPES[name], generator=torch.Generator().manual_seed(batch)) for batch in (1, 4)}
    with torch.no_grad():
        expected = {batch: model(x) for batch, x in xs.items()}
    with pinned_threads(1), ThreadPoolExecutor(max_workers=4) as pool:
        outputs = list(pool.map(lambda batch: (batch, auto(xs[batch])), [1, 4] * 12))
    for batch, out in outputs:
        assert float((out - expected[batch]).abs().max()) <= TOLERANCE
    assert auto.summary() == chosen


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
def test_auto_also_times_one_thread():
    model, example = ticket("lenet300_100")
    with pinned_threads(2):
        auto = make_backend("auto", model, example, batch_sizes=(2,), budget_s=0.005)
        assert {"torch_sparse@1t", "torch_sparse_compact@1t", "torch_per_layer@1t"} <= set(auto.choices[2]["median_ms"])
        assert set(auto.choices[2]["layers"]) == {"torch_per_layer", "torch_per_layer@1t"}
        x = torch.randn(2, 1, 28, 28)
        with torch.no_grad():
            expected = model(x)
        for name in ("torch_sparse@1t", "torch_sparse_compact@1t", "torch_per_layer@1t"):
            assert float((auto.candidates[name](x) - expected).abs().max()) <= TOLERANCE
            assert torch.get_num_threads() == 2  # restored after the one-thread call


def test_chain_replaces_every_linear_and_fuses_sequential_runs():
    model, example = ticket("lenet300_100")
    converted, chains = linear_chains(model)
    assert len(chains) == 1 and chains[0].flatten and chains[0].names == ["1", "3", "5"]
    assert not any(isinstance(m, nn.Linear) for m in converted.modules())
    conv, _ = ticket("conv4")
    converted, chains = linear_chains(conv)
    assert len(chains) == 1 and len(chains[0].names) == 3
    assert any(isinstance(m, nn.Conv2d) for m in converted.modules())  # convolutions stay dense


def test_chain_plans_mix_dense_and_csr_and_handle_token_inputs():
    torch.manual_seed(0)
    layers = [("a", nn.Linear(12, 8)), ("act", nn.GELU()), ("b", nn.Linear(8, 5, bias=False))]
    chain = LinearChain(layers)
    reference = nn.Sequential(*(m for _, m in layers)).eval()
    x = torch.randn(2, 7, 12)  # a Linear on (batch, tokens, features)
    for plan in ((True, True), (False, True), (False, False)):
        chain.set_plan(plan)
        with torch.no_grad():
            assert torch.allclose(chain(x), reference(x), atol=1e-5)
            assert torch.allclose(chain(x[:1, :1]), reference(x[:1, :1]), atol=1e-5)
    chain.set_plan((True, False), batch_size=64)
    assert chain.plan_for(50) == (True, False)
    with pytest.raises(ValueError, match="plan has 3 entries"):
        chain.set_plan((True, True, True))


def test_timm_model_linear_outside_sequential():
    model = magnitude_ticket(create_model("timm/resnet18", num_classes=10, in_channels=3), 0.2)
    converted, chains = linear_chains(model)
    assert [c.names for c in chains] == [["fc"]]
    x = torch.randn(2, 3, 32, 32)
    with pinned_threads(1), torch.no_grad():
        assert torch.allclose(converted(x), model(x), atol=TOLERANCE)


def test_user_errors_are_one_line_value_errors(tmp_path):
    model, example = ticket("lenet300_100")
    with pytest.raises(ValueError, match="unknown backend 'torch_csr'"):
        make_backend("torch_csr", model, example)
    with pytest.raises(ValueError, match="needs example_input"):
        make_backend("ort_dense", model)
    with pytest.raises(ValueError, match="no ticket.pt"):
        make_backend("torch_dense", tmp_path)
    with pytest.raises(ValueError, match="no nn.Linear"):
        make_backend("torch_sparse", nn.Sequential(nn.Conv2d(1, 2, 3)), torch.randn(1, 1, 5, 5))
