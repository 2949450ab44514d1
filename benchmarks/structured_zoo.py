"""The structured-ticket zoo sweep: one timm model per family, each in its own process (on demand).

    nice -n 10 python benchmarks/structured_zoo.py              # resumable: models already recorded are skipped
    python benchmarks/structured_zoo.py --rerun failed,refused  # run those again (after a fix)
    python benchmarks/structured_zoo.py --report                # only rewrite the markdown from the JSON

Families: ``timm.list_models()`` grouped by the module that defines each model; the family's model is
the one with the fewest parameters (counted on the meta device, no memory) among the ``CANDIDATES``
names that look smallest, at the smallest input it
runs at (``zoo_case.smallest_input``). Each model runs ``benchmarks/zoo_case.py`` once per granularity,
each in a child process with a wall-clock timeout and a resident-memory cap (polled; the child is killed
past it), so one model cannot hurt the shared machine; its peak RSS is the child's ``ru_maxrss`` (``os.wait4``).
Writes ``benchmarks/results/structured_zoo.json`` after every model and ``structured_zoo.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from compress.io import load_json, save_json, save_text  # noqa: E402

RESULTS = HERE / "results"
JSON = RESULTS / "structured_zoo.json"
MARKDOWN = RESULTS / "structured_zoo.md"
FAMILIES = RESULTS / "structured_zoo_models.json"
TIMEOUT_S = 420
RSS_CAP_MB = 4500  # killed past this; the bar is 4096 MB, recorded per model
# glibc raises its mmap threshold each time a large block is freed, up to 32 MB, after which freed weights
# stay in the heap and count as resident: a fixed threshold returns them, so the peak RSS is live memory
# (beit_base at 32 px, weight granularity, after its training steps: 4.25 GB with the default, 3.8 GB with this)
ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": "131072"}
MAX_PARAMS = 1e9  # larger models are not run at all (``skipped``, said in the table)
# the budget a child runs under (COMPRESS_MEMORY_LIMIT_MB: compress refuses a search or an export that
# cannot fit, up front, and keeps a search's rewind point in a file when that is what does not fit)
MEMORY_LIMIT_MB = 4096
_SELECT = """
import json, re, sys, torch, timm
from timm.models import _registry
SIZES = ("atto", "femto", "pico", "zepto", "nano", "xxxs", "xxs", "xs", "tiny", "mini", "micro", "small", "s0", "t")
def key(name):
    words = re.split(r"[_.]", name)
    size = min((i for i, s in enumerate(SIZES) for w in words if w.startswith(s)), default=len(SIZES))
    numbers = [int(n) for n in re.findall(r"\\d+", name)]
    return (size, numbers[:1] or [10**6], len(name))
by_family = {}
for name in timm.list_models():
    by_family.setdefault(_registry._model_to_module[name], []).append(name)
best = {}
for family, names in sorted(by_family.items()):
    for name in sorted(names, key=key)[:CANDIDATES]:
        try:
            with torch.device("meta"):
                params = sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())
        except Exception:
            continue
        if family not in best or (params, name) < best[family]:
            best[family] = (params, name)
json.dump({f: {"model": n, "params": p} for f, (p, n) in sorted(best.items())}, sys.stdout)
"""
CANDIDATES = 4  # per family, the names that look smallest (size word, first number); the fewest parameters wins


def families() -> dict[str, dict]:
    """family -> its smallest model (cached in ``structured_zoo_models.json``: listing takes minutes)."""
    if not FAMILIES.exists():
        out = subprocess.run([sys.executable, "-c", _SELECT.replace("CANDIDATES", str(CANDIDATES))], capture_output=True, text=True, check=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=3600)
        save_json(json.loads(out.stdout), FAMILIES)
    return load_json(FAMILIES)


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


LIMITS = {"rss_cap_mb": RSS_CAP_MB, "timeout_s": TIMEOUT_S, "max_params": MAX_PARAMS,  # --rss-cap-mb etc.
          "memory_limit_mb": MEMORY_LIMIT_MB}


def run_case(model: str, granularity: str, *extra: str) -> dict:
    """Run ``zoo_case.py`` for one model and granularity (or ``input``) under the timeout and the memory
    cap; its row, with the child's peak RSS, wall time and the cap it ran under."""
    cap, timeout = LIMITS["rss_cap_mb"], LIMITS["timeout_s"]
    out = RESULTS / f".zoo_{model}_{granularity}.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COMPRESS_THREADS": "1", "PYTHONPATH": str(ROOT), **ALLOCATOR,
           "COMPRESS_MEMORY_LIMIT_MB": str(LIMITS["memory_limit_mb"])}
    began = time.time()
    log = RESULTS / f".zoo_{model}_{granularity}.stderr"
    with log.open("wb") as stderr_file:
        child = subprocess.Popen([sys.executable, str(HERE / "zoo_case.py"), model, str(out), granularity, *extra],
                                 env=env, stdout=subprocess.DEVNULL, stderr=stderr_file, start_new_session=True)
        killed = ""
        while True:
            # reaped by wait4 itself, so the rusage is the child's own (ru_maxrss: peak resident set, KiB)
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.2)
            if _rss_mb(child.pid) > cap:
                killed = f"killed: resident memory over the {cap} MB cap"
            elif time.time() - began > timeout:
                killed = f"killed: over the {timeout} s timeout"
            if killed:
                os.killpg(child.pid, signal.SIGKILL)
                _, status, usage = os.wait4(child.pid, 0)
                break
    stderr = log.read_text(errors="replace")
    log.unlink(missing_ok=True)
    result = json.loads(out.read_text()) if out.exists() else {}
    out.unlink(missing_ok=True)
    failed = {"status": "failed", "stage": "process",
              "reason": killed or result.get("input_error") or f"child exited {status}: {stderr.strip()[-300:]}"}
    row = result if granularity == "input" and "input_side" in result else result.get(granularity) or failed
    row.update(peak_rss_mb=round(usage.ru_maxrss / 1024, 1), wall_s=round(time.time() - began, 1), rss_cap_mb=cap,
               memory_limit_mb=LIMITS["memory_limit_mb"])
    return row


def run_one(model: str, family: str) -> dict:
    """The smallest input, then both granularities of ``model``, each in its own process (its own timeout,
    memory cap and peak)."""
    record: dict = {"model": model, "family": family}
    found = run_case(model, "input")
    for granularity in ("channel", "weight"):
        if "input_side" not in found:
            record[granularity] = {key: found[key] for key in ("status", "stage", "reason", "peak_rss_mb", "wall_s")}
            continue
        record.update(input_side=found["input_side"], img_size_arg=found["img_size_arg"])
        record[granularity] = run_case(model, granularity, str(found["input_side"]),
                                       "1" if found["img_size_arg"] else "0")
    record["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                      text=True).stdout.strip()  # the code this record measured
    record["peak_rss_mb"] = max(record[g]["peak_rss_mb"] for g in ("channel", "weight"))
    record["wall_s"] = round(found["wall_s"] + sum(record[g]["wall_s"] for g in ("channel", "weight")), 1)
    record["machine"] = machine()  # each record its own: a resumed sweep may run on other hardware
    return overall(record)


SEVERITY = ("pass", "skipped", "refused", "failed")


def overall(record: dict) -> dict:
    """The record's own ``status`` / ``reason``: the worse granularity's (pass only when both pass), its reason
    prefixed with the granularity."""
    worst = max(("channel", "weight"), key=lambda g: SEVERITY.index(record[g]["status"]))
    record["status"] = record[worst]["status"]
    record["reason"] = f"{worst}: {record[worst]['reason']}" if record[worst]["reason"] else ""
    return record


def _machine_line(m: dict) -> str:
    return f"{m['cpu']}, {m['cores']} cores ({', '.join(m['vector_extensions'])}), {m['memory_gb']} GB"


def machine() -> dict:
    from compress.bench.report import cpu_model, vector_extensions

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "vector_extensions": vector_extensions(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def counts(records: list[dict], granularity: str) -> dict[str, int]:
    result: dict[str, int] = defaultdict(int)
    for record in records:
        result[record[granularity]["status"]] += 1
    return dict(result)


def _ratio(row: dict, key: str) -> str:
    before, after = row.get(f"{key}_before"), row.get(f"{key}_after")
    return f"{after / before:.2f}" if before and after is not None else ""


def _status(row: dict) -> str:
    return row["status"] + (f" (opset {row['opset']})" if "opset" in row else "")


def write_markdown(data: dict) -> None:
    records = sorted(data["records"], key=lambda r: r["family"])
    machines: dict[str, list[str]] = defaultdict(list)
    for record in records:
        machines[_machine_line(record.get("machine") or data["machine"])].append(record["model"])
    lines = ["# Structured tickets on the timm zoo", "",
             "`nice -n 10 python benchmarks/structured_zoo.py` (benchmarks/structured_zoo.py, benchmarks/zoo_case.py): "
             "one model per timm family (the fewest parameters), random init, the smallest input it runs at; each "
             f"granularity in its own process (killed past {TIMEOUT_S} s or {RSS_CAP_MB} MB resident): LotterySearch "
             "(2 levels of 2 SGD steps, rates 0.3, channel_multiple 8 for channels), then what ships: **channel** "
             "compact_model + export_onnx of the compacted model, **weight** make_permanent (torch's prune.remove: "
             "what one ships) + export_onnx of the plain model (no whole channel to remove; records before 2026-12-07 "
             "exported the masked model), each checked with onnxruntime. Records with a `memory_limit_mb` ran "
             "under that budget (`COMPRESS_MEMORY_LIMIT_MB`: a search or export that cannot fit is refused up "
             "front; a search short of room keeps its rewind point in a file).", "",
             "Machines (shared with other jobs; each record names the one it ran on):",
             *[f"- {line}: {len(names)} models" + (f" ({', '.join(sorted(names))})" if len(names) < 10 else "")
               for line, names in machines.items()], ""]
    total = len(records)
    for granularity in ("channel", "weight"):
        c = counts(records, granularity)
        lines.append(f"- **{granularity}**: {c.get('pass', 0)} of {total} families pass "
                     f"({c.get('pass', 0) / max(1, total):.0%}), {c.get('refused', 0)} refused with a one-line "
                     f"reason (at plan time or at export), {c.get('failed', 0)} failed (killed by the cap), "
                     f"{c.get('skipped', 0)} skipped (over {MAX_PARAMS / 1e6:.0f}M parameters)")
    peak = max((r["peak_rss_mb"] for r in records), default=0)
    over = sorted((r for r in records if r["peak_rss_mb"] > 4096), key=lambda r: -r["peak_rss_mb"])
    raised = sorted(r["model"] for r in records
                    if any(r[g].get("rss_cap_mb", RSS_CAP_MB) > RSS_CAP_MB for g in ("channel", "weight")))
    commits = sorted({r["commit"] for r in records if "commit" in r})
    lines += [f"- peak resident memory of any model: {peak:.0f} MB (MiB, ru_maxrss); {len(over)} over 4096 MB"
              + "".join(f"{': ' if i == 0 else ', '}{r['model']} {r['peak_rss_mb']:.0f}" for i, r in enumerate(over)),
              "- run under a raised cap (`--rss-cap-mb`) to see whether they work at all: "
              + (", ".join(raised) or "none"),
              f"- children run with {' '.join(f'{k}={v}' for k, v in ALLOCATOR.items())} (glibc returns freed "
              "blocks, so RSS is live memory); records made at commit(s) " + ", ".join(commits), "",
              "| family | model | side | channel | reason | params after | MACs after | plan s | compact s | "
              "weight | peak RSS MB | wall s |", "|" + "---|" * 12]
    for r in records:
        ch, w = r["channel"], r["weight"]
        reason = (ch["reason"] or (w["reason"] if w["status"] != "pass" else "")).replace("|", "/")[:160]
        lines.append(f"| {r['family']} | {r['model']} | {r.get('input_side', '')} | {_status(ch)} | {reason} | "
                     f"{_ratio(ch, 'params')} | {_ratio(ch, 'macs')} | {ch.get('plan_s', '')} | "
                     f"{ch.get('compact_s', '')} | {_status(w)} | {r['peak_rss_mb']:.0f} | {r['wall_s']} |")
    save_text("\n".join(lines) + "\n", MARKDOWN)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rerun", default="", help="comma-separated statuses (failed, refused) to run again")
    parser.add_argument("--only", default="", help="comma-separated models (or families) to run")
    parser.add_argument("--report", action="store_true", help="only rewrite the markdown")
    parser.add_argument("--jobs", type=int, default=1, help="models run at once (each its own process)")
    parser.add_argument("--rss-cap-mb", type=int, default=RSS_CAP_MB, help="a child is killed past this")
    parser.add_argument("--timeout-s", type=int, default=TIMEOUT_S, help="a child is killed past this")
    parser.add_argument("--max-params", type=float, default=MAX_PARAMS, help="larger models are skipped")
    parser.add_argument("--memory-limit-mb", type=int, default=MEMORY_LIMIT_MB,
                        help="the children's COMPRESS_MEMORY_LIMIT_MB: compress's own budget")
    args = parser.parse_args(argv)
    LIMITS.update(rss_cap_mb=args.rss_cap_mb, timeout_s=args.timeout_s, max_params=args.max_params,
                  memory_limit_mb=args.memory_limit_mb)
    data = load_json(JSON) if JSON.exists() else {"records": []}
    by_model = {r["model"]: r for r in data["records"]}
    rerun = {s for s in args.rerun.split(",") if s}
    only = {s for s in args.only.split(",") if s}
    if not args.report:
        todo = []
        for family, entry in families().items():
            model = entry["model"]
            if only and model not in only and family not in only:
                continue
            old = by_model.get(model)
            if old is not None and not ({old["channel"]["status"], old["weight"]["status"]} & rerun) and not only:
                continue
            todo.append((family, entry))
        todo.sort(key=lambda item: item[1]["model"] in by_model)  # families never run first, then reruns
        lock = threading.Lock()

        def one(item: tuple[str, dict]) -> None:
            family, entry = item
            if entry["params"] > LIMITS["max_params"]:
                why = (f"skipped: {entry['params'] / 1e6:.0f}M parameters; a search holds ~6 copies (weights, "
                       f"masks, gradients, rewind point, folded, exported) > {LIMITS['rss_cap_mb']} MB")
                record = {"model": entry["model"], "family": family, "peak_rss_mb": 0.0, "wall_s": 0.0,
                          "status": "skipped", "reason": why, "channel": {"status": "skipped", "reason": why},
                          "weight": {"status": "skipped", "reason": why}}
            else:
                record = run_one(entry["model"], family)
            with lock:  # one writer of the JSON at a time
                by_model[entry["model"]] = record
                save_json({"machine": data.get("machine") or machine(),
                           "records": sorted(by_model.values(), key=lambda r: r["family"])}, JSON)
                print(f"{family:28s} {entry['model']:36s} channel {record['channel']['status']:8s} weight "
                      f"{record['weight']['status']:8s} {record['peak_rss_mb']:6.0f} MB {record['wall_s']:6.1f} s "
                      f"{record['reason'][:100]}", flush=True)

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(one, todo))
        data = load_json(JSON) if JSON.exists() else {"records": []}
    data["machine"] = data.get("machine") or machine()
    write_markdown(data)


if __name__ == "__main__":
    main()
