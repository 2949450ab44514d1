"""Training throughput of a shipped recipe, in steps per second, on the CPU or a GPU (on demand).

    python benchmarks/train_throughput.py                          # recipes/lth_conv4.yaml on the default device
    python benchmarks/train_throughput.py --device cuda --iterations 300 --variants plain,bf16,compile,channels_last

``compress.training.train`` runs the recipe's own training (model, optimizer, batch size) for ``--iterations``
steps per variant, with a single evaluation at the end; an ``on_step`` callback stamps the clock after the
warm-up steps and after the last one (synchronising CUDA only at those two points, so the loop keeps its
asynchronous launches), and steps per second is the steady state between them -- ``torch.compile``'s
compilation falls in the warm-up. Data: the recipe's dataset (CIFAR-10: the shared JPEG copy, ``--cifar10``),
loaded onto the device; where it is absent, the synthetic set at the recipe's image size (one channel: the
first convolution is 1/3 as wide; the rest of the network is the recipe's), named as such in the result.
Each device's rows go to ``benchmarks/results/train_throughput.json`` and ``.md`` beside the others'.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from compress.io import load_json, save_json, save_text  # noqa: E402

RESULTS = HERE / "results" / "train_throughput.json"
# beside the checkout (this machine, CI), or inside it (what a lent GPU machine gets of ``shared/``)
CIFAR10 = next((p for p in (ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz",
                            ROOT / "shared" / "data" / "cifar10-jpg.tar.gz") if p.exists()),
               ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz")
VARIANTS = {"plain": (), "bf16": ("train.bf16=true",), "compile": ("train.compile=true",),
            "channels_last": ("train.channels_last=true",)}


def _recipe(path: Path, iterations: int, device: str, variant: str, cifar10: Path):
    from compress.recipe import load_recipe

    overrides = [f"train.iterations={iterations}", f"train.eval_every={iterations}",
                 f"train.checkpoint_every={iterations}", f"train.device={device}", *VARIANTS[variant]]
    recipe = load_recipe(path, overrides=overrides)
    if recipe.data.name == "cifar10":
        if cifar10.exists():
            return load_recipe(path, overrides=[*overrides, f"data.root={cifar10}"]), f"cifar10 ({cifar10.name})"
        side = recipe.data.image_size or 32
        return (load_recipe(path, overrides=[*overrides, "data.name=synthetic", f"data.image_size={side}",
                                             "data.validation_size=100"]),
                f"synthetic {side} px, 1 channel (no CIFAR-10 copy here)")
    return recipe, recipe.data.name


def measure(path: Path, iterations: int, device: str, variant: str, cifar10: Path) -> dict:
    """Steps per second of one variant, after ``max(10, iterations // 10)`` warm-up steps."""
    from compress.data import dataset_info, load_dataset
    from compress.models import build_model
    from compress.runtime import resolve_device
    from compress.training import train

    recipe, data_name = _recipe(path, iterations, device, variant, cifar10)
    where = resolve_device(recipe.train.device)
    data = load_dataset(recipe.data, recipe.seed, where)
    info = dataset_info(recipe.data.name)
    model = build_model(recipe.model, info.num_classes, info.in_channels or 3,
                        recipe.data.image_size or info.image_size, seed=recipe.seed).to(where)
    warmup = max(10, iterations // 10)
    stamps: dict[int, float] = {}

    def on_step(step: int) -> None:
        if step in (warmup, iterations):
            if where.type == "cuda":
                torch.cuda.synchronize(where)
            stamps[step] = time.perf_counter()

    began = time.perf_counter()
    train(model, data, recipe.train, recipe.seed, on_step=on_step, progress=False)
    steps_per_s = (iterations - warmup) / (stamps[iterations] - stamps[warmup])
    return {"recipe": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path), "variant": variant,
            "device": str(where), "device_name": _device_name(where), "data": data_name,
            "batch_size": recipe.train.batch_size, "iterations": iterations, "warmup": warmup,
            "steps_per_s": round(steps_per_s, 3), "wall_s": round(time.perf_counter() - began, 1),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from compress.bench.report import cpu_model, vector_extensions

    return f"{cpu_model()} ({', '.join(e for e in vector_extensions() if e in ('avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16', 'amx_bf16'))})"


def write(rows: list[dict]) -> None:
    """Merge ``rows`` into the results (a row per recipe, variant and device name) and rewrite the table."""
    kept = load_json(RESULTS)["rows"] if RESULTS.exists() else []
    key = lambda row: (row["recipe"], row["variant"], row["device_name"])  # noqa: E731
    merged = {key(row): row for row in kept} | {key(row): row for row in rows}
    ordered = sorted(merged.values(), key=key)
    save_json({"rows": ordered}, RESULTS)
    lines = ["# Training throughput (steps per second)", "",
             "`python benchmarks/train_throughput.py` (see its docstring): the recipe's training, steady state after "
             "the warm-up steps, one evaluation at the end (not timed).", "",
             "| recipe | device | variant | data | batch | steps/s | x plain | threads | load average | torch |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    plain = {(r["recipe"], r["device_name"]): r["steps_per_s"] for r in ordered if r["variant"] == "plain"}
    for r in ordered:
        base = plain.get((r["recipe"], r["device_name"]))
        ratio = f"{r['steps_per_s'] / base:.2f}" if base else ""
        lines.append(f"| {r['recipe']} | {r['device_name']} | {r['variant']} | {r['data']} | {r['batch_size']} | "
                     f"{r['steps_per_s']:.2f} | {ratio} | {r['threads']} | {r.get('load_average', '')} | {r['torch']} |")
    save_text("\n".join(lines) + "\n", RESULTS.with_suffix(".md"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "lth_conv4.yaml"))
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--variants", default="plain", help=f"comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--cifar10", default=str(CIFAR10), help="the CIFAR-10 JPEG tarball")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or args.iterations < 20:
        parser.error(f"variants from {', '.join(VARIANTS)} (got {unknown}) and --iterations >= 20")
    rows = []
    for variant in variants:
        row = measure(Path(args.recipe).resolve(), args.iterations, args.device, variant, Path(args.cifar10))
        print(f"{row['device_name']} {variant}: {row['steps_per_s']:.2f} steps/s ({row['data']})", flush=True)
        rows.append(row)
    write(rows)


if __name__ == "__main__":
    main()
