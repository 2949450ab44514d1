"""``auto``: time the ways to run a model at the batch sizes asked, once, and run the fastest.

Two levels, both timed on this machine at warm-up (when the backend is built, or -- with
``warm=False`` -- at ``warm_up()`` or the first call):

1. per Linear layer: dense vs CSR weight inside the feature-major chain (addmv at batch 1, addmm
   otherwise), giving a ``torch_per_layer`` candidate that mixes them (on the compacted model where
   ``compact_model`` applies);
2. per whole backend: torch_dense, torch_sparse (all CSR), torch_sparse_compact, torch_per_layer,
   ort_dense, ort_compact and -- when more than one thread is pinned -- ``@1t`` variants of the torch
   CSR ones (one torch thread; layers re-timed at one thread), timed interleaved so that load changes
   hit all alike. The fastest median wins -- unless dense (ORT, else torch) is within ``MARGIN``
   (5 %) of it: then dense runs, since a win that small is timing noise.

Dense candidates are in the race, so ``auto`` is never slower than dense beyond timing noise. A
candidate whose outputs differ from torch_dense (beyond 1e-4, relative above 1) is dropped.

Precision: a reduced-precision candidate (``reduced_precision``: OpenVINO bf16) changes outputs by design,
so it is judged on accuracy instead: its top-1 accuracy on ``accuracy_data`` (labelled inputs, e.g. the
run's first test examples) must stay within ``accuracy_tolerance`` (a fraction, default
``ACCURACY_TOLERANCE`` = 0.005, half a point) of torch_dense's fp32 accuracy on the same inputs. Without
labelled data it is dropped, with that reason: a precision is never picked unchecked.

The decision is made once, under a lock (concurrent first calls wait for one warm-up), and then
stays fixed: a call only dispatches to the pick for its batch size -- no timing, no extra
inferences, no change of choice, so calls from several threads are safe. ``choices[batch_size]``
records what won, every candidate's median and the per-layer picks; a batch size never timed runs
what won at the nearest timed one (log scale).
"""

from __future__ import annotations

import math
import threading
from functools import partial

import torch

from compress.bench.backends import BuildPlan, register_backend
from compress.bench.runners import Backend, TorchBackend
from compress.bench.source import Source, batch_of
from compress.bench.sparse import LinearChain, linear_chains
from compress.bench.timing import measure_interleaved, pinned_threads
from compress.errors import UserError

TOLERANCE = 1e-4
ACCURACY_TOLERANCE = 0.005  # accuracy (a fraction) a reduced precision may lose against fp32
MARGIN = 0.05  # leave the dense baseline only for a gain larger than this (timing noise on a shared CPU)
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


def top1_accuracy(backend: Backend, inputs: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> float:
    """The fraction of ``labels`` the backend's argmax gets right, in batches of ``batch``."""
    correct = 0
    for i in range(0, len(labels), batch):
        logits = backend(inputs[i:i + batch].float())
        correct += int((logits.argmax(1).cpu() == labels[i:i + batch].cpu()).sum())
    return correct / len(labels)


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


class AutoBackend(Backend):
    """Runs, per batch size, whichever candidate was fastest at warm-up (see module docstring).

    ``warm=False`` defers the timing to ``warm_up()`` (or the first call); either way it runs once.
    """

    def __init__(self, source: Source, candidates: dict[str, Backend], batch_sizes: list[int] | tuple[int, ...],
                 *, budget_s: float = 0.3, rounds: int = 5, margin: float = MARGIN, warm: bool = True,
                 accuracy_data: tuple[torch.Tensor, torch.Tensor] | None = None,
                 accuracy_tolerance: float | None = None) -> None:
        super().__init__("auto")
        tolerance = ACCURACY_TOLERANCE if accuracy_tolerance is None else float(accuracy_tolerance)
        if not 0 <= tolerance < 1:
            raise UserError(f"accuracy_tolerance must be in [0, 1), got {accuracy_tolerance}")
        if accuracy_data is not None and (len(accuracy_data) != 2 or len(accuracy_data[0]) != len(accuracy_data[1])
                                          or len(accuracy_data[1]) == 0):
            raise UserError("accuracy_data must be (inputs, labels) of the same, non-zero length")
        self._accuracy = (accuracy_data, tolerance)
        sizes = sorted({int(b) for b in batch_sizes})
        if not sizes or sizes[0] < 1:
            raise UserError(f"auto needs batch sizes >= 1, got {list(batch_sizes)}")
        self._source = source
        self._example = source.require_example("auto")
        self._sizes = sizes
        self._settings = {"budget_s": budget_s, "rounds": rounds, "margin": margin}
        self.candidates: dict[str, Backend] = dict(candidates)
        self.choices: dict[int, dict] = {}
        self.accuracy: dict = {}  # what the precision rule measured: fp32 and each reduced candidate
        self.info = {"choices": self.choices, "accuracy": self.accuracy}
        self._picks: dict[int, Backend] = {}  # filled once, by warm_up; only read afterwards
        self._lock = threading.Lock()
        self._warm = False
        if warm:
            self.warm_up()

    @property
    def warm(self) -> bool:
        """Whether the choice is made (and fixed)."""
        return self._warm

    def warm_up(self) -> AutoBackend:
        """Time the candidates at the batch sizes given and fix the pick for each; later calls do nothing."""
        if not self._warm:
            with self._lock:
                if not self._warm:  # another thread may have warmed up while this one waited
                    candidates, picks, choices = self._decide()
                    self.candidates, self._picks = candidates, picks
                    self.choices.update(choices)
                    self._warm = True  # last: readers that see it see everything above
        return self

    def _decide(self) -> tuple[dict[str, Backend], dict[int, Backend], dict[int, dict]]:
        source, example, sizes = self._source, self._example, self._sizes
        budget_s, rounds, margin = (self._settings[key] for key in ("budget_s", "rounds", "margin"))
        candidates = dict(self.candidates)
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
        picks: dict[int, Backend] = {}
        choices: dict[int, dict] = {}
        reference = candidates.get("torch_dense")
        rejected = self._precision_rule(candidates, reference)
        candidates = {name: backend for name, backend in candidates.items() if name not in rejected}
        for batch in sizes:
            x = batch_of(example, batch)
            usable, dropped = self._agreeing(candidates, reference, x)
            dropped = {**rejected, **dropped}
            timings = measure_interleaved({name: partial(backend, x) for name, backend in usable.items()},
                                          rounds=rounds, budget_s=budget_s)
            best, rule = _pick(timings, margin)
            picks[batch] = usable[best]
            choices[batch] = {"backend": best, "rule": rule,
                              "median_ms": {n: t.median_ms for n, t in timings.items()},
                              "layers": {variant: picks_[batch] for variant, picks_ in layer_picks.items()},
                              "dropped": dropped}
        return candidates, picks, choices

    def _precision_rule(self, candidates: dict[str, Backend], reference: Backend | None) -> dict[str, str]:
        """{reduced-precision candidate: why it is out}; fills ``self.accuracy`` with what was measured."""
        reduced = [name for name, backend in candidates.items() if getattr(backend, "reduced_precision", False)]
        if not reduced:
            return {}
        data, tolerance = self._accuracy
        if data is None or reference is None:
            why = ("reduced precision: no labelled accuracy_data to check its accuracy against fp32" if data is None
                   else "reduced precision: no torch_dense fp32 reference to check its accuracy against")
            return dict.fromkeys(reduced, why)
        fp32 = top1_accuracy(reference, *data)
        self.accuracy.update({"fp32": fp32, "tolerance": tolerance, "examples": len(data[1])})
        rejected = {}
        for name in reduced:
            accuracy = self.accuracy[name] = top1_accuracy(candidates[name], *data)
            if accuracy < fp32 - tolerance:
                rejected[name] = (f"accuracy {accuracy:.4f} is more than {tolerance:g} below fp32 {fp32:.4f} "
                                  f"on {len(data[1])} labelled examples")
        return rejected

    @staticmethod
    def _agreeing(candidates: dict[str, Backend], reference: Backend | None,
                  x: torch.Tensor) -> tuple[dict[str, Backend], dict[str, str]]:
        if reference is None:
            return dict(candidates), {}
        expected = reference(x)
        scale = max(1.0, float(expected.abs().max()))
        usable, dropped = {}, {}
        for name, backend in candidates.items():
            if getattr(backend, "reduced_precision", False):  # passed the accuracy rule
                usable[name] = backend
                continue
            diff = _max_abs_diff(backend(x), expected)
            if diff <= TOLERANCE * scale:
                usable[name] = backend
            else:
                dropped[name] = f"max |output - torch_dense| = {diff:.3g}"
        return usable, dropped

    def backend_for(self, batch_size: int) -> Backend:
        """The candidate run at this batch size (the nearest timed one's pick for others)."""
        self.warm_up()
        pick = self._picks.get(batch_size)
        if pick is None:
            nearest = min(self._picks, key=lambda b: abs(math.log(b) - math.log(max(batch_size, 1))))
            pick = self._picks[nearest]
        return pick

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.backend_for(x.shape[0])(x)

    def summary(self) -> dict[int, str]:
        """{batch size: the backend picked}."""
        self.warm_up()
        return {batch: choice["backend"] for batch, choice in self.choices.items()}


@register_backend("auto", composite=True)
def _build_auto(plan: BuildPlan) -> Backend:
    return AutoBackend(plan.source, dict(plan.built), plan.batch_sizes, budget_s=plan.budget_s,
                       accuracy_data=plan.accuracy_data, accuracy_tolerance=plan.accuracy_tolerance)
