"""The size table of an export: rows consistent with the files, ratios with the dense size, the run cache,
and the run report's section."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from compress.bench.source import magnitude_ticket
from compress.export import export_onnx
from compress.export.artifact.files import unpack_onnx
from compress.export.artifact.sizes import (
    SIZES_JSON,
    cached_run_sizes,
    quantize_int8,
    run_sizes,
    size_rows,
    size_section,
    size_table_markdown,
)
from compress.models import build_model
from compress.recipe import ModelConfig

torch.set_num_threads(1)
WHAT = ["dense fp32 ONNX", "fp32 ticket, raw", "fp32 ticket, gzip", "int8 ticket, raw", "int8 ticket, gzip",
        "artifact, fp32 values", "artifact, int8 values"]


def _ticket(path: Path, remaining: float | None = 0.05, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(name="lenet300_100"), 10, 1, 28)
    if remaining is not None:
        magnitude_ticket(model, remaining)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    export_onnx(model.eval(), path, x[:2], verify_inputs=x)
    return path


@pytest.fixture(scope="module")
def ticket(tmp_path_factory) -> Path:
    return _ticket(tmp_path_factory.mktemp("sizes") / "ticket.onnx")


def test_rows_match_the_files_and_the_ratios_the_dense_size(ticket, tmp_path):
    rows = size_rows(ticket, tmp_path)
    assert [row["what"] for row in rows] == WHAT
    by = {row["what"]: row for row in rows}
    dense = by["dense fp32 ONNX"]["bytes"]
    assert dense == ticket.stat().st_size  # the same graph with every weight stored
    for row in rows:
        assert row["ratio"] == pytest.approx(dense / row["bytes"])
        if row["file"] is not None:
            assert Path(row["file"]).stat().st_size == row["bytes"]
    assert by["fp32 ticket, gzip"]["bytes"] == len(gzip.compress(ticket.read_bytes(), 6))
    int8 = Path(by["int8 ticket, raw"]["file"])
    assert by["int8 ticket, gzip"]["bytes"] == len(gzip.compress(int8.read_bytes(), 6))
    # int8 weights are a quarter of fp32; each artifact beats gzip of the file it packs, int8 smallest
    assert by["int8 ticket, raw"]["ratio"] > 3.5
    assert by["artifact, fp32 values"]["bytes"] < by["fp32 ticket, gzip"]["bytes"]
    assert by["artifact, int8 values"]["bytes"] < by["int8 ticket, gzip"]["bytes"]
    assert min(rows, key=lambda row: row["bytes"])["what"] == "artifact, int8 values"
    for what, source in (("artifact, fp32 values", ticket), ("artifact, int8 values", int8)):
        assert unpack_onnx(by[what]["file"]).SerializeToString() == onnx.load(str(source)).SerializeToString()
    table = size_table_markdown(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + len(WHAT)
    for line, row in zip(lines[2:], rows, strict=True):
        assert line.startswith(f"| {row['what']} | {row['bytes']:,} |") and f"{row['ratio']:.1f}×" in line


def test_a_dense_file_and_a_given_int8_file_are_used(ticket, tmp_path):
    dense = _ticket(tmp_path / "dense.onnx", remaining=None)
    int8 = quantize_int8(ticket, tmp_path / "given.int8.onnx")
    rows = size_rows(ticket, tmp_path / "work", dense_onnx=dense, int8_onnx=int8)
    by = {row["what"]: row for row in rows}
    assert by["dense fp32 ONNX"]["bytes"] == dense.stat().st_size
    assert by["int8 ticket, raw"]["file"] == str(int8)
    assert not list((tmp_path / "work").glob("*.int8-dynamic.onnx"))
    meta = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    assert meta.get("compress.quantization") == "int8-dynamic"
    weights = [init for init in onnx.load(str(int8)).graph.initializer if init.name.endswith("_quantized")]
    assert weights and all(init.data_type == onnx.TensorProto.INT8 for init in weights)


def test_run_sizes_caches_per_export_and_feeds_the_report(ticket, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert run_sizes(run) is None and cached_run_sizes(run) is None
    (run / "ticket.onnx").write_bytes(ticket.read_bytes())
    rows = run_sizes(run)
    assert [row["what"] for row in rows] == WHAT
    assert {"ticket.cta", "ticket.int8-dynamic.onnx", "ticket.int8-dynamic.cta", SIZES_JSON} <= {
        p.name for p in run.iterdir()}
    stamp = (run / SIZES_JSON).stat().st_mtime_ns
    assert run_sizes(run) == rows and (run / SIZES_JSON).stat().st_mtime_ns == stamp  # cached
    assert cached_run_sizes(run) == rows
    section = "\n".join(size_section(rows))
    assert "## Shipping the ticket: compressed size" in section and size_table_markdown(rows) in section
    # one rule, the sha256 of what was measured: file times alone change nothing
    later = (run / "ticket.onnx").stat().st_mtime + 5
    os.utime(run / "ticket.onnx", (later, later))
    assert cached_run_sizes(run) == rows
    # a new export (another ticket) is measured again
    _ticket(run / "ticket.onnx", remaining=0.2, seed=1)
    assert cached_run_sizes(run) is None
    again = run_sizes(run)
    assert again[1]["bytes"] == (run / "ticket.onnx").stat().st_size and again != rows
    assert cached_run_sizes(run) == again
    # the export's own int8 file, when there is one, is what the table measures
    (run / "ticket.int8.onnx").write_bytes((run / "ticket.int8-dynamic.onnx").read_bytes())
    assert cached_run_sizes(run) is None
    with_int8 = run_sizes(run)
    assert with_int8[3]["file"] == "ticket.int8.onnx" and (run / "ticket.int8.cta").is_file()
    assert np.isclose(with_int8[3]["bytes"], again[3]["bytes"])
