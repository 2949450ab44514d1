"""``auto``: time the ways to run a model at the batch sizes asked and run the fastest.

Two levels, both timed on this machine when the backend is built:

1. per Linear layer: dense vs CSR weight inside the feature-major chain (addmv at batch 1, addmm
   otherwise), giving a ``torch_per_layer`` candidate that mixes them (on the compacted model where
   ``compact_model`` applies);
2. per whole backend: torch_dense, torch_sparse (all CSR), torch_sparse_compact, torch_per_layer,
   ort_dense, ort_compact and -- when more than one thread is pinned -- ``@1t`` variants of the torch
   CSR ones (one torch thread; layers re-timed at one thread), timed interleaved so that load changes
   hit all alike. The fastest median wins -- unless dense (ORT, else torch) is within ``MARGIN``
   (5 %) of it: then dense runs, since a win that small is timing noise.

Dense candidates are in the race, so ``auto`` is never slower than dense beyond timing noise. One
more guard at run time: when the pick stalls (``STRIKES`` calls in a row slower than ``STALL_FACTOR``
x dense's build-time median -- what multi-threaded torch does when other processes take the cores
and an OpenMP join waits for a descheduled thread), pick and dense run a short head-to-head on the
live input; a pick that loses is demoted to dense for good (``choices`` says so), one that wins
stays (the whole machine was slow) and needs twice the stalls before the next check. A candidate
whose outputs differ from torch_dense (beyond 1e-4, relative above 1) is dropped.
``choices[batch_size]`` records what won, every candidate's median and the per-layer picks; a batch
size never timed runs what won at the nearest timed one (log scale).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from functools import partial

import torch

from compress.bench.backends import Backend, TorchBackend
from compress.bench.source import Source, batch_of
from compress.bench.sparse import LinearChain, linear_chains
from compress.bench.timing import measure_interleaved, pinned_threads
from compress.errors import UserError

TOLERANCE = 1e-4
MARGIN = 0.05  # leave the dense baseline only for a gain larger than this (timing noise on a shared CPU)
STALL_FACTOR = 2.0  # a call of the pick slower than this x dense's build-time median is a stall ...
STRIKES = 3  # ... and this many in a row trigger a head-to-head with dense, now
HEAD_TO_HEAD = 5  # calls of each in that head-to-head; the pick is demoted for good when it loses
DENSE_PREFERENCE = ("ort_dense", "torch_dense")


def _rows_per_example(model: torch.nn.Module, chains: list[LinearChain], example: torch.Tensor) -> dict[int, int]:
    """Matrix rows each chain sees per example (1 after Flatten; tokens x 1 for a Linear on (B, T, C))."""
    rows: dict[int, int] = {}

    def hook(module: LinearChain, args: tuple) -> None:
        x = args[0].flatten(1) if module.flatten else args[0]
        rows[id(module)] = max(1, x[:1].numel() // x.shape[-1])

    handles = [chain.register_forward_pre_hook(hook) for chain in chains]
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return rows


def calibrate_layers(model: torch.nn.Module, chains: list[LinearChain], example: torch.Tensor,
                     batch_sizes: list[int], budget_s: float) -> dict[int, dict[str, dict]]:
    """Time dense vs CSR for every Linear at every batch size; set each chain's plans to the faster."""
    per_example = _rows_per_example(model, chains, example)
    picks: dict[int, dict[str, dict]] = {}
    for batch in batch_sizes:
        picks[batch] = {}
        for chain in chains:
            rows = batch * per_example.get(id(chain), 1)
            plan = []
            for i, name in enumerate(chain.names):
                inputs = int(chain.dense[i].shape[1])
                with torch.inference_mode():
                    if rows == 1:
                        h = torch.rand(inputs)
                        fns = {kind: partial(torch.addmv, chain.bias[i], chain.weight(i, kind == "csr"), h)
                               for kind in ("dense", "csr")}
                    else:
                        h = torch.rand(inputs, rows)
                        fns = {kind: partial(torch.addmm, chain.bias_col[i], chain.weight(i, kind == "csr"), h)
                               for kind in ("dense", "csr")}
                    timings = measure_interleaved(fns, rounds=3, budget_s=budget_s / 4)
                use_csr = timings["csr"].median_ms < timings["dense"].median_ms
                plan.append(use_csr)
                picks[batch][name] = {"pick": "csr" if use_csr else "dense",
                                      "dense_ms": timings["dense"].median_ms, "csr_ms": timings["csr"].median_ms}
            chain.set_plan(tuple(plan), rows)
    return picks


@dataclass
class _Slot:
    """What runs at one timed batch size, and the dense baseline it falls back to when it stalls."""

    backend: Backend
    fallback: Backend | None
    limit_s: float  # a call slower than this counts as a stall
    strikes: int = 0
    needed: int = STRIKES  # stalls in a row that trigger a head-to-head with the fallback


def _smallest(source: Source) -> torch.nn.Module:
    """The compacted model where compaction applies (exactly the same outputs, less to multiply)."""
    try:
        return source.compacted()
    except ValueError:
        return source.model


def _pick(timings: dict, margin: float) -> tuple[str, str]:
    """The fastest median, unless a dense baseline is within ``margin`` of it: then the baseline.

    Build-time timings are noisy; a "win" of 1 % over dense can be a 7 % loss a minute later. Leaving
    dense only for a clear gain is what keeps auto from being slower than dense.
    """
    fastest = min(timings, key=lambda name: timings[name].median_ms)
    for baseline in DENSE_PREFERENCE:
        if baseline in timings:
            if fastest != baseline and timings[fastest].median_ms > (1 - margin) * timings[baseline].median_ms:
                return baseline, f"fastest ({fastest}) within {margin:.0%} of {baseline}: kept {baseline}"
            break
    return fastest, "fastest median"


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


class AutoBackend(Backend):
    """Runs, per batch size, whichever candidate was fastest when it was built (see module docstring)."""

    def __init__(self, source: Source, candidates: dict[str, Backend], batch_sizes: list[int] | tuple[int, ...],
                 *, budget_s: float = 0.3, rounds: int = 5, margin: float = MARGIN) -> None:
        super().__init__("auto")
        sizes = sorted({int(b) for b in batch_sizes})
        if not sizes or sizes[0] < 1:
            raise UserError(f"auto needs batch sizes >= 1, got {list(batch_sizes)}")
        example = source.require_example("auto")
        candidates = dict(candidates)
        # Fewer torch threads than pinned is a choice too: small sparse ops gain nothing from a second
        # thread but pay its fork/join, and a busy machine makes that join wait for a descheduled thread.
        variants: list[int | None] = [None] + ([1] if torch.get_num_threads() > 1 else [])
        layer_picks: dict[str, dict[int, dict[str, dict]]] = {}
        for threads in variants:
            suffix = "" if threads is None else f"@{threads}t"
            try:
                with pinned_threads(threads or torch.get_num_threads()):
                    converted, chains = linear_chains(_smallest(source))
                    layer_picks[f"torch_per_layer{suffix}"] = calibrate_layers(converted, chains, example, sizes,
                                                                               budget_s)
            except ValueError:  # no Linear layer: nothing to mix
                break
            candidates[f"torch_per_layer{suffix}"] = TorchBackend(f"torch_per_layer{suffix}", converted,
                                                                  threads=threads)
            for name in ("torch_sparse", "torch_sparse_compact"):
                sparse = candidates.get(name)
                if threads is not None and isinstance(sparse, TorchBackend):
                    candidates[f"{name}{suffix}"] = TorchBackend(f"{name}{suffix}", sparse.module, threads=threads)
        self.candidates = candidates
        self.choices: dict[int, dict] = {}
        self._slots: dict[int, _Slot] = {}
        reference = candidates.get("torch_dense")
        for batch in sizes:
            x = batch_of(example, batch)
            usable, dropped = self._agreeing(candidates, reference, x)
            timings = measure_interleaved({name: partial(backend, x) for name, backend in usable.items()},
                                          rounds=rounds, budget_s=budget_s)
            best, rule = _pick(timings, margin)
            baseline = next((name for name in DENSE_PREFERENCE if name in timings), best)
            self._slots[batch] = _Slot(usable[best], None if baseline == best else usable[baseline],
                                       STALL_FACTOR * timings[baseline].median_ms / 1e3)
            self.choices[batch] = {"backend": best, "rule": rule,
                                   "median_ms": {n: t.median_ms for n, t in timings.items()},
                                   "layers": {variant: picks[batch] for variant, picks in layer_picks.items()},
                                   "dropped": dropped}
        self.info = {"choices": self.choices}

    @staticmethod
    def _agreeing(candidates: dict[str, Backend], reference: Backend | None,
                  x: torch.Tensor) -> tuple[dict[str, Backend], dict[str, str]]:
        if reference is None:
            return dict(candidates), {}
        expected = reference(x)
        scale = max(1.0, float(expected.abs().max()))
        usable, dropped = {}, {}
        for name, backend in candidates.items():
            diff = _max_abs_diff(backend(x), expected)
            if diff <= TOLERANCE * scale:
                usable[name] = backend
            else:
                dropped[name] = f"max |output - torch_dense| = {diff:.3g}"
        return usable, dropped

    def _slot(self, batch_size: int) -> _Slot:
        slot = self._slots.get(batch_size)
        if slot is None:
            slot = self._slots[min(self._slots, key=lambda b: abs(math.log(b) - math.log(max(batch_size, 1))))]
        return slot

    def backend_for(self, batch_size: int) -> Backend:
        """The candidate run at this batch size (the nearest timed one's pick for others)."""
        return self._slot(batch_size).backend

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        slot = self._slots.get(batch)
        if slot is None:  # never timed at this size: no baseline time to compare with, so no guard
            return self._slot(batch).backend(x)
        if slot.fallback is None:
            return slot.backend(x)
        start = time.perf_counter()
        out = slot.backend(x)
        if time.perf_counter() - start <= slot.limit_s:
            slot.strikes = 0
            return out
        slot.strikes += 1
        if slot.strikes >= slot.needed:
            slot.strikes = 0
            if self._still_faster(slot, x):
                slot.needed *= 2  # the whole machine was slow, not the pick: ask for longer stalls next time
            else:
                self.choices[batch]["demoted"] = (
                    f"{slot.backend.name} took > {STALL_FACTOR:g}x dense's build-time median on {slot.needed} calls "
                    f"in a row and lost a head-to-head with {slot.fallback.name}: now runs {slot.fallback.name}")
                self.choices[batch]["backend"] = slot.fallback.name
                slot.backend, slot.fallback = slot.fallback, None
        return out

    @staticmethod
    def _still_faster(slot: _Slot, x: torch.Tensor) -> bool:
        """A few interleaved calls of the pick and the dense fallback, now: is the pick still faster?"""
        pick, dense = [], []
        for _ in range(HEAD_TO_HEAD):
            for backend, into in ((slot.backend, pick), (slot.fallback, dense)):
                start = time.perf_counter()
                backend(x)
                into.append(time.perf_counter() - start)
        return statistics.median(pick) < statistics.median(dense)

    def summary(self) -> dict[int, str]:
        """{batch size: the backend picked}."""
        return {batch: choice["backend"] for batch, choice in self.choices.items()}
