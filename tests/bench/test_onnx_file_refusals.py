"""``bench_sparse.py --onnx`` on files someone sent: external data that leaves the model's folder, links,
missing data, huge declared inputs, int64 or several inputs -- one line each, nothing allocated first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "bench_sparse.py"


def _linear(folder: Path, *, location: str | None = None, shape=(None, 4), dtype=TensorProto.FLOAT,
            inputs: int = 1) -> Path:
    """x @ W (+ a second input added, with ``inputs=2``); W stored externally at ``location`` when given."""
    weight = numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "W")
    if location is not None:
        weight.ClearField("raw_data")
        weight.ClearField("float_data")
        weight.data_location = TensorProto.EXTERNAL
        weight.external_data.add(key="location", value=location)
    dims = ["N" if d is None else d for d in shape]
    graph_inputs = [helper.make_tensor_value_info("x", dtype, dims)]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"])]
    if inputs == 2:
        graph_inputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3]))
        nodes.append(helper.make_node("Add", ["y", "z"], ["out"]))
    output = helper.make_tensor_value_info("out" if inputs == 2 else "y", TensorProto.FLOAT, ["N", 3])
    model = helper.make_model(helper.make_graph(nodes, "g", graph_inputs, [output], [weight]),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    cases = {}
    for name, location in (("absolute", "/etc/hostname"), ("dotdot", "../secret.bin"), ("missing", "w.bin"),
                           ("link", "w.bin")):
        folder = tmp_path / name
        folder.mkdir()
        cases[name] = (_linear(folder, location=location), {"absolute": "relative", "dotdot": "'..'",
                                                            "missing": "no such file", "link": "link"}[name])
    (tmp_path / "secret.bin").write_bytes(np.ones((4, 3), dtype=np.float32).tobytes())
    (tmp_path / "link" / "w.bin").symlink_to(tmp_path / "secret.bin")
    for name in ("huge", "int64", "two"):
        (tmp_path / name).mkdir()
    cases["huge"] = (_linear(tmp_path / "huge", shape=(None, 3, 20000, 20000)), "input budget")
    cases["int64"] = (_linear(tmp_path / "int64", dtype=TensorProto.INT64), "INT64")
    cases["two"] = (_linear(tmp_path / "two", inputs=2), "2 graph inputs")
    return cases


# every case through the tool in one child (one torch import), whose address space is capped at what it
# uses after its imports plus 1 GiB: a huge input allocated instead of refused fails there, not on the machine
CHILD = textwrap.dedent("""
    import json, resource, runpy, sys
    import compress.bench, compress.cli, onnxruntime, torch
    size = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), size + (1 << 30)))
    tool, files = sys.argv[1], json.loads(sys.argv[2])
    for path in files:
        sys.argv = [tool, "--onnx", path, "--batch-sizes", "1", "--budget", "0.01"]
        try:
            runpy.run_path(tool, run_name="__main__")
        except SystemExit as stop:
            print("EXIT", stop.code, flush=True)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_each_hostile_onnx_file_is_one_line(tmp_path):
    cases = _cases(tmp_path)
    done = subprocess.run([sys.executable, "-c", CHILD, str(TOOL), json.dumps([str(path) for path, _ in cases.values()])],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.stdout.split().count("EXIT") == len(cases) and "EXIT 0" not in done.stdout, done.stdout
    assert len(errors) == len(cases), done.stderr
    for (path, fragment), line in zip(cases.values(), errors, strict=True):
        assert str(path) in line and fragment in line, line


def test_a_file_beside_its_data_still_runs(tmp_path):
    from compress.bench.source import onnx_source

    path = _linear(tmp_path, location="w.bin")
    (tmp_path / "w.bin").write_bytes(np.ones((4, 3), dtype=np.float32).tobytes())
    source = onnx_source(path)
    assert tuple(source.example_input.shape) == (1, 4)
    onnx.checker.check_model(str(path))
