"""Crafted artifacts (a valid checksum over lying headers) are refused in one line before they allocate.

Each bomb is unpacked in a child process whose address space is capped (``RLIMIT_AS``) at what it already
uses plus 1 GiB: a reader that trusts the header dies there with a MemoryError traceback instead of taking
the shared machine down.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from onnx import helper, numpy_helper

from compress.errors import ArtifactError
from compress.export.artifact.bounds import MAX_HEADER_DEPTH, MAX_RESTORED_BYTES, json_depth
from compress.export.artifact.files import unpack_bytes
from compress.export.artifact.pack import _PREAMBLE, MAGIC, VERSION, _compress, pack_bytes

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "pack_ticket.py"


def _model():
    weights = np.zeros(4096, dtype=np.float32)
    weights[::97] = np.arange(1, 44, dtype=np.float32)  # sparse: a gap coding wins
    node = helper.make_node("Identity", ["w"], ["out"])
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("out", 1, [4096])],
                              [numpy_helper.from_array(weights, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _parts(blob: bytes) -> tuple[dict, bytes]:
    _magic, _version, _flags, header_len, _payload_len, _digest = _PREAMBLE.unpack_from(blob)
    body = blob[_PREAMBLE.size:]
    header = json.loads(lzma.decompress(body[:header_len], format=lzma.FORMAT_RAW,
                                        filters=[{"id": lzma.FILTER_LZMA2, "preset": 6}]))
    return header, body[header_len:]


def _forge(header: dict | bytes, payload: bytes) -> bytes:
    """An artifact with ``header`` and ``payload`` and a correct checksum (the checksum is no bound)."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    header_bytes = _compress(text)
    digest = hashlib.sha256(header_bytes + payload).digest()
    return _PREAMBLE.pack(MAGIC, VERSION, 0, len(header_bytes), len(payload), digest) + header_bytes + payload


def _bombs() -> dict[str, bytes]:
    blob, _ = pack_bytes(_model())
    header, payload = _parts(blob)
    assert header["tensors"][0]["encoding"].startswith("gap")
    bombs = {}
    # 3e9 elements on a gap-coded tensor: a few hundred bytes that asked for 12 GB
    count = json.loads(json.dumps(header))
    count["tensors"][0]["count"] = 3_000_000_000
    bombs["count"] = _forge(count, payload)
    # the same within the 2 GiB bound, but not what the tensor's shape holds
    shaped = json.loads(json.dumps(header))
    shaped["source"]["size"] = MAX_RESTORED_BYTES
    shaped["tensors"][0]["count"] = 400_000_000
    bombs["shape"] = _forge(shaped, payload)
    # an lzma bomb: the model stream decompresses to 50 MB, the header claims 5 GB
    zeros = _compress(bytes(50 << 20))
    stream = json.loads(json.dumps(header))
    stream["model"] = {"size": 5_000_000_000, "stored": len(zeros)}
    bombs["stream"] = _forge(stream, zeros + payload[header["model"]["stored"]:])
    # ... and claiming an allowed size: decompression stops at it
    within = json.loads(json.dumps(header))
    within["source"]["size"] = MAX_RESTORED_BYTES
    within["model"] = {"size": 1 << 20, "stored": len(zeros)}
    bombs["within"] = _forge(within, zeros + payload[header["model"]["stored"]:])
    bombs["depth"] = _forge(b"[" * 200_000 + b"]" * 200_000, payload)
    return bombs


CHILD = textwrap.dedent("""
    import resource, sys
    from compress.cli import run_cli
    from compress.errors import ArtifactError
    from compress.export.artifact.files import unpack_onnx

    size = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), size + (1 << 30)))
    for path in sys.argv[1:]:
        try:
            unpack_onnx(path)
            print("UNPACKED", path)
        except ArtifactError as error:
            print("REFUSED", str(error).replace("\\n", " "))
""")


def test_crafted_artifacts_are_refused_under_a_memory_cap(tmp_path):
    files = []
    for name, blob in _bombs().items():
        (tmp_path / f"{name}.cta").write_bytes(blob)
        files.append(str(tmp_path / f"{name}.cta"))
    done = subprocess.run([sys.executable, "-c", CHILD, *files], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == len(files) and all(line.startswith("REFUSED") for line in lines), lines
    by_name = dict(zip(("count", "shape", "stream", "within", "depth"), lines, strict=True))
    assert "count" in by_name["count"] and "shape" in by_name["shape"]
    assert "restores to 5,000,000,000" not in by_name["stream"] and "model.size" in by_name["stream"]
    assert "model stream" in by_name["within"] and "nested" in by_name["depth"]


def test_the_tool_refuses_a_bomb_in_one_line(tmp_path):
    (tmp_path / "bomb.cta").write_bytes(_bombs()["count"])
    done = subprocess.run([sys.executable, str(TOOL), "--unpack", str(tmp_path / "bomb.cta"), "--out",
                           str(tmp_path / "x.onnx")], capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("field, value", [("nnz", 5000), ("itemsize", 3), ("encoding", "zip"), ("index", 7),
                                          ("background", -1), ("streams", [])])
def test_each_lying_field_is_one_line(field, value):
    blob, _ = pack_bytes(_model())
    header, payload = _parts(blob)
    header["tensors"][0][field] = value
    with pytest.raises(ArtifactError) as caught:
        unpack_bytes(_forge(header, payload), "lie.cta")
    assert "\n" not in str(caught.value) and str(caught.value).startswith("lie.cta: ")


def test_a_lower_memory_budget_is_honoured():
    blob, _ = pack_bytes(_model())
    assert unpack_bytes(blob).SerializeToString() == _model().SerializeToString()
    with pytest.raises(ArtifactError, match="more than the 1,000 allowed"):
        unpack_bytes(blob, "small.cta", max_bytes=1000)


def test_json_depth_ignores_brackets_in_strings():
    assert json_depth(b'{"a": ["[[[[", {"b": "}}"}]}') == 3
    assert json_depth(b"[" * (MAX_HEADER_DEPTH + 1) + b"]" * (MAX_HEADER_DEPTH + 1)) > MAX_HEADER_DEPTH


def test_state_dict_reads_external_data_beside_the_file_never_from_the_cwd(tmp_path, monkeypatch):
    import onnx
    import torch

    from compress.errors import UserError
    from compress.export.artifact import artifact_state_dict

    here, elsewhere = tmp_path / "model", tmp_path / "cwd"
    here.mkdir()
    elsewhere.mkdir()
    model = _model()
    expected = torch.from_numpy(numpy_helper.to_array(model.graph.initializer[0]).copy())
    onnx.save(model, str(here / "m.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
    (elsewhere / "w.bin").write_bytes(bytes(len((here / "w.bin").read_bytes())))  # zeros: the wrong data
    monkeypatch.chdir(elsewhere)
    assert torch.equal(artifact_state_dict(here / "m.onnx")["w"], expected)
    proto = onnx.load(str(here / "m.onnx"), load_external_data=False)
    with pytest.raises(UserError, match="base_dir"):
        artifact_state_dict(proto)
    assert torch.equal(artifact_state_dict(proto, base_dir=here)["w"], expected)
    (here / "w.bin").unlink()
    (here / "w.bin").symlink_to(elsewhere / "w.bin")
    with pytest.raises(UserError, match="symbolic link"):
        artifact_state_dict(here / "m.onnx")
