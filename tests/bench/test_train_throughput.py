"""benchmarks/train_throughput.py: a real training of a shipped recipe, timed between two of its own steps."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("train_throughput", REPO / "benchmarks" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_rows_merge_per_device_and_variant(tmp_path, monkeypatch):
    script = _script()
    monkeypatch.setattr(script, "RESULTS", tmp_path / "throughput.json")
    recipe = REPO / "recipes" / "lth_conv2.yaml"
    # no CIFAR-10 copy at this path: the synthetic set at the recipe's size, said in the row
    row = script.measure(recipe, 20, "cpu", "plain", tmp_path / "absent.tar.gz")
    assert row["data"].startswith("synthetic 32 px") and row["warmup"] == 10 and row["steps_per_s"] > 0
    script.write([row])
    script.write([{**row, "steps_per_s": 2 * row["steps_per_s"]}])  # the same device and variant: replaced
    script.write([{**row, "device_name": "Another GPU"}])
    rows = script.load_json(tmp_path / "throughput.json")["rows"]
    assert [r["device_name"] for r in rows] == sorted([row["device_name"], "Another GPU"])
    assert "Another GPU" in (tmp_path / "throughput.md").read_text()
