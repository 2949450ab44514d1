"""Packed ticket artifacts: bit-exact round trips (fp32, int8 dynamic and QDQ, dense), every mask coding,
refusals of foreign / truncated / corrupt files, the torch state dict, and a real Fashion-MNIST ticket."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from compress.bench.source import magnitude_ticket
from compress.errors import ArtifactError, UserError
from compress.export import export_onnx
from compress.export.artifact.coding import varint_decode, varint_encode
from compress.export.artifact.files import (
    artifact_state_dict,
    pack_onnx,
    read_header,
    unpack_bytes,
    unpack_onnx,
)
from compress.export.artifact.pack import MAGIC, pack_bytes
from compress.export.onnx.verify import session
from compress.models import build_model
from compress.pruning import fold_masks
from compress.recipe import ModelConfig

torch.set_num_threads(1)
TOOL = Path(__file__).resolve().parents[2] / "tools" / "pack_ticket.py"


def _lenet(remaining: float | None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="lenet300_100"), 10, 1, 28)
    return (magnitude_ticket(model, remaining) if remaining is not None else model).eval()


def _export(model: torch.nn.Module, path: Path, compact: bool = False) -> Path:
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    export_onnx(model, path, x[:2], verify_inputs=x, compact=compact)
    return path


def _quantize_dynamic(source: Path, target: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), per_channel=True, weight_type=QuantType.QInt8)
    return target


def _quantize_qdq(source: Path, target: Path) -> Path:
    from compress.export.quantize.int8 import quantize_onnx

    calibration = np.random.default_rng(0).standard_normal((64, 1, 28, 28)).astype(np.float32)
    quantize_onnx(source, target, mode="int8-static", calibration=calibration)
    return target


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    fp32 = _export(_lenet(0.05), folder / "ticket.onnx", compact=True)
    return {"fp32": fp32, "compact": folder / "ticket.compact.onnx", "int8_dynamic": _quantize_dynamic(fp32, folder / "ticket.int8dyn.onnx"),
            "int8_qdq": _quantize_qdq(fp32, folder / "ticket.qdq.onnx"),
            "dense": _export(_lenet(None), folder / "dense.onnx")}


def _outputs(model: bytes) -> list[np.ndarray]:
    x = np.random.default_rng(2).standard_normal((16, 1, 28, 28)).astype(np.float32)
    return session(model).run(None, {"input": x})


@pytest.mark.parametrize("kind", ["fp32", "int8_dynamic", "int8_qdq", "compact", "dense"])
def test_round_trip_is_bit_exact(models, kind, tmp_path):
    source = models[kind]
    info = pack_onnx(source, tmp_path / "t.cta")
    restored = unpack_onnx(tmp_path / "t.cta", tmp_path / "restored.onnx")
    original = onnx.load(str(source))
    assert [init.SerializeToString() for init in restored.graph.initializer] == \
        [init.SerializeToString() for init in original.graph.initializer]
    assert (tmp_path / "restored.onnx").read_bytes() == source.read_bytes()  # the whole file, metadata too
    assert info["file_is_canonical"] and info["artifact_bytes"] == (tmp_path / "t.cta").stat().st_size
    for got, want in zip(_outputs((tmp_path / "restored.onnx").read_bytes()), _outputs(source.read_bytes()),
                         strict=True):
        assert np.array_equal(got, want)
    if kind != "dense":  # a ticket packs far below gzip of its file; a dense model at least below the file
        import gzip

        assert info["artifact_bytes"] < 0.8 * len(gzip.compress(source.read_bytes(), 6))
    assert info["artifact_bytes"] < source.stat().st_size


def test_int8_values_stay_int8(models, tmp_path):
    pack_onnx(models["int8_dynamic"], tmp_path / "q.cta")
    header = read_header(tmp_path / "q.cta")
    weights = [entry for entry in header["tensors"] if entry["name"].endswith("_quantized")]
    assert weights and all(entry["itemsize"] == 1 and entry["background"] == 0 for entry in weights)
    # every pruned weight (5% kept per layer) is an int8 zero that costs no value byte
    for entry in weights:
        assert entry["nnz"] <= 0.05 * entry["count"] + 1
        assert entry["streams"][-1]["size"] == entry["nnz"]


def _identity_model(tensors: dict[str, np.ndarray]) -> onnx.ModelProto:
    nodes, outputs = [], []
    for name, array in tensors.items():
        nodes.append(helper.make_node("Identity", [name], [f"{name}_out"]))
        outputs.append(helper.make_tensor_value_info(f"{name}_out", helper.np_dtype_to_tensor_dtype(array.dtype),
                                                     list(array.shape)))
    graph = helper.make_graph(nodes, "codings", [], outputs,
                              [numpy_helper.from_array(array, name) for name, array in tensors.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key="note", value="kept as is")
    return model


def _codings_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    dense = rng.standard_normal(2048).astype(np.float32)
    dense[:4] = [-0.0, np.nan, np.inf, 0.0]  # bit patterns survive: -0.0 is kept, not background
    half = rng.standard_normal(8192).astype(np.float16)
    half[rng.random(8192) < 0.6] = 0  # 40% kept, random positions: one bit per element beats gaps
    varint = np.zeros(60000, dtype=np.int8)  # gaps mostly < 128, a few > 255: varint 1 byte, fixed 2
    gaps = np.where(rng.random(800) < 0.97, rng.integers(0, 100, 800), rng.integers(300, 3000, 800))
    spots = np.cumsum(gaps + 1) - 1
    spots = spots[spots < 60000]
    varint[spots] = rng.integers(1, 127, spots.size)
    fixed = np.zeros(60000, dtype=np.int8)  # gaps all in [128, 255]: fixed 1 byte, varint 2
    positions = np.cumsum(rng.integers(128, 256, 400) + 1)
    fixed[positions[positions < 60000]] = rng.integers(1, 127, int((positions < 60000).sum()))
    zero_point = np.full(4096, 128, dtype=np.uint8)  # asymmetric quantization: the background is 128
    zero_point[rng.choice(4096, 100, replace=False)] = rng.integers(0, 255, 100)
    small = np.arange(8, dtype=np.float32)  # below MIN_TENSOR_BYTES: stays in the serialised model
    return {"dense": dense.reshape(32, 64), "bitmap": half, "gap_varint": varint, "gap_fixed": fixed,
            "zero_point": zero_point, "small": small}


def test_every_mask_coding_is_chosen_where_it_is_smallest(tmp_path):
    tensors = _codings_tensors()
    model = _identity_model(tensors)
    blob, header = pack_bytes(model)
    chosen = {entry["name"]: entry for entry in header["tensors"]}
    assert "small" not in chosen
    for name in ("dense", "bitmap", "gap_varint", "gap_fixed"):
        assert chosen[name]["encoding"] == name, chosen[name]["candidates"]
        sizes = chosen[name]["candidates"]
        assert sizes[name] == min(sizes.values())
    assert chosen["zero_point"]["background"] == 128 and chosen["zero_point"]["nnz"] <= 100
    restored = unpack_bytes(blob)
    assert restored.SerializeToString() == model.SerializeToString()
    arrays = {init.name: numpy_helper.to_array(init) for init in restored.graph.initializer}
    assert np.signbit(arrays["dense"].reshape(-1)[0]) and np.isnan(arrays["dense"].reshape(-1)[1])
    outputs = session(restored.SerializeToString()).run(None, {})
    for got, (_name, want) in zip(outputs, tensors.items(), strict=True):
        assert np.array_equal(got, want, equal_nan=True)


def test_varints_round_trip():
    values = np.array([0, 1, 127, 128, 255, 16383, 16384, 2**35 + 7, 2**63, 2**64 - 1], dtype=np.uint64)
    data = varint_encode(values)
    assert len(data) == 1 + 1 + 1 + 2 + 2 + 2 + 3 + 6 + 10 + 10
    assert np.array_equal(varint_decode(data, len(values)), values)
    with pytest.raises(ValueError):
        varint_decode(data[:-1], len(values))


@pytest.fixture()
def packed(models, tmp_path) -> Path:
    path = tmp_path / "ticket.cta"
    pack_onnx(models["fp32"], path)
    return path


def _damaged(path: Path, data: bytes) -> Path:
    out = path.with_name("damaged.cta")
    out.write_bytes(data)
    return out


def test_foreign_truncated_and_corrupt_files_are_refused(packed, models):
    blob = packed.read_bytes()
    header_end = struct.calcsize("<8sHHIQ32s")
    flipped = bytearray(blob)
    flipped[-100] ^= 0x01
    newer = bytearray(blob)
    newer[8:10] = struct.pack("<H", 99)
    cases = {
        "bad magic": models["fp32"].read_bytes(),
        "bad magic ": b"",
        "truncated artifact (shorter": blob[:20],
        "truncated artifact (": blob[:header_end + 40],
        "trailing bytes": blob + b"\0",
        "sha256 checksum mismatch": bytes(flipped),
        "format version 99": bytes(newer),
    }
    for expected, data in cases.items():
        with pytest.raises(ArtifactError) as caught:
            unpack_onnx(_damaged(packed, data))
        message = str(caught.value)
        assert expected.strip() in message and "\n" not in message and message.startswith(str(packed.parent))
    with pytest.raises(ArtifactError, match="no such artifact"):
        unpack_onnx(packed.with_name("missing.cta"))


def test_corruption_behind_a_valid_checksum_is_still_caught(models):
    """A file whose checksum was recomputed over damaged streams (a buggy writer) fails the restored-model hash."""
    import hashlib

    blob, _ = pack_bytes(onnx.load(str(models["fp32"])))
    header_len, payload_len = struct.unpack_from("<IQ", blob, 12)
    start = struct.calcsize("<8sHHIQ32s")
    body = bytearray(blob[start:])
    body[header_len + 40] ^= 0xFF  # inside the model stream
    forged = blob[:12] + struct.pack("<IQ", header_len, payload_len) + hashlib.sha256(body).digest() + bytes(body)
    with pytest.raises(ArtifactError, match="corrupt"):
        unpack_bytes(forged, "forged.cta")


def test_pack_refuses_what_is_not_an_onnx_file(packed, tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(UserError, match="not an ONNX model"):
        pack_onnx(tmp_path / "junk.onnx", tmp_path / "junk.cta")
    with pytest.raises(UserError, match="already a packed ticket artifact"):
        pack_onnx(packed, tmp_path / "again.cta")
    with pytest.raises(UserError, match="no such ONNX file"):
        pack_onnx(tmp_path / "missing.onnx", tmp_path / "x.cta")
    assert not (tmp_path / "junk.cta").exists() and not list(tmp_path.glob(".*.tmp"))


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    import runpy

    monkeypatch.setattr(sys, "argv", [str(TOOL), *args])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(TOOL), run_name="__main__")
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


def test_cli_packs_unpacks_and_refuses_in_one_line(models, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cli.cta"
    code, stdout, _ = _cli(monkeypatch, capsys, str(models["fp32"]), "--out", str(out))
    assert code == 0 and "restores bit-exact" in stdout and out.read_bytes().startswith(MAGIC)
    code, stdout, _ = _cli(monkeypatch, capsys, "--unpack", str(out), "--out", str(tmp_path / "r.onnx"))
    assert code == 0 and (tmp_path / "r.onnx").read_bytes() == models["fp32"].read_bytes()
    code, _, stderr = _cli(monkeypatch, capsys, "--unpack", str(models["fp32"]))  # would land on itself
    assert code == 2 and stderr.count("\n") == 1 and "exists" in stderr and "--out" in stderr
    code, _, stderr = _cli(monkeypatch, capsys, "--unpack", str(models["fp32"]), "--out", str(tmp_path / "x.onnx"))
    assert code == 2 and stderr.count("\n") == 1 and "bad magic" in stderr and not (tmp_path / "x.onnx").exists()
    cut = _damaged(out, out.read_bytes()[:-10])  # and a real process: exit status 2, one line, no traceback
    done = subprocess.run([sys.executable, str(TOOL), "--unpack", str(cut)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and "truncated" in done.stderr


def test_state_dict_loads_into_the_model_and_dequantizes_int8(models, tmp_path):
    model = _lenet(0.05)
    folded = fold_masks(model).state_dict()
    pack_onnx(models["fp32"], tmp_path / "f.cta")
    state = artifact_state_dict(tmp_path / "f.cta")
    fresh = build_model(ModelConfig(name="lenet300_100"), 10, 1, 28)
    fresh.load_state_dict(state)  # strict: the same names and shapes
    for name, tensor in folded.items():
        assert torch.equal(state[name], tensor)
    pack_onnx(models["int8_dynamic"], tmp_path / "q.cta")
    dequantized = artifact_state_dict(tmp_path / "q.cta")
    assert set(dequantized) == set(folded)
    for name, tensor in folded.items():
        got = dequantized[name]
        assert got.dtype == torch.float32 and got.shape == tensor.shape
        assert torch.equal(got[tensor == 0], torch.zeros_like(got[tensor == 0]))  # pruned stays exactly 0
        step = tensor.abs().amax(dim=1, keepdim=True) / 127 if tensor.ndim == 2 else 0
        assert bool(((got - tensor).abs() <= step / 2 + 1e-7).all())
    qdq = artifact_state_dict(onnx.load(str(models["int8_qdq"])))
    assert set(qdq) == set(folded)  # weights and biases dequantized, no scale or zero point left over
    for name, tensor in folded.items():
        assert qdq[name].dtype == torch.float32 and qdq[name].shape == tensor.shape
        if name.endswith("weight"):
            assert torch.equal(qdq[name][tensor == 0], torch.zeros(int((tensor == 0).sum())))


def test_external_data_is_refused(tmp_path):
    model = _identity_model({"w": np.ones(1024, dtype=np.float32)})
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    with pytest.raises(UserError, match="external file"):
        pack_onnx(tmp_path / "ext.onnx", tmp_path / "ext.cta")


@pytest.mark.slow
def test_real_fashion_ticket_artifact_scores_exactly_as_its_source(tmp_path, fashion_mnist_root):
    """A real ticket (default recipe, small budget) -> fp32 and int8 artifacts -> restored ONNX files give
    the same full-test-set accuracy from raw pixels, and the same logits, as the files that were packed."""
    from compress.export.onnx.accuracy import onnx_test_accuracy, raw_test_batches
    from compress.export.onnx.preprocess import apply_preprocess, read_metadata
    from compress.lottery import find_ticket
    from compress.pipeline import export_run
    from compress.recipe import load_recipe

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    recipe = load_recipe(recipes / "lth_lenet300_fashion.yaml", overrides=[
        f"data.root={fashion_mnist_root}", "train.iterations=150", "train.eval_every=50",
        "train.checkpoint_every=150", "lottery.rounds=1", "lottery.controls=[]", "export.onnx=false",
        "prune.rates={linear: 0.9, output: 0.5}"])  # one round straight to ~10% of the weights
    run = tmp_path / "run"
    find_ticket(recipe, run, progress=False)
    fp32 = Path(export_run(run, out=tmp_path / "ticket.onnx")["path"])
    int8 = _quantize_dynamic(fp32, tmp_path / "ticket.int8.onnx")
    meta = read_metadata(fp32.read_bytes())
    for source in (fp32, int8):
        packed = tmp_path / f"{source.stem}.cta"
        pack_onnx(source, packed)
        restored = tmp_path / f"{source.stem}.restored.onnx"
        unpack_onnx(packed, restored)
        assert restored.read_bytes() == source.read_bytes()
        accuracy = onnx_test_accuracy(source, recipe, preprocess=meta)
        assert 0.5 < accuracy and onnx_test_accuracy(restored, recipe, preprocess=meta) == accuracy
        images, _ = next(raw_test_batches(recipe.data, recipe.seed, limit=500))
        x = apply_preprocess(images, meta)
        assert np.array_equal(session(restored.read_bytes()).run(None, {"input": x})[0],
                              session(source.read_bytes()).run(None, {"input": x})[0])


def test_large_tensors_choose_on_a_sample_and_still_round_trip(monkeypatch):
    import compress.export.artifact.pack as artifact

    monkeypatch.setattr(artifact, "EXACT_BYTES", 4096)
    tensors = _codings_tensors()
    model = _identity_model(tensors)
    blob, header = pack_bytes(model)
    entries = {entry["name"]: entry for entry in header["tensors"]}
    assert entries["gap_fixed"]["sample"]["elements"] == 4096 and entries["dense"]["encoding"] == "dense"
    assert entries["bitmap"]["sample"]["elements"] == 2048  # float16: 4096 bytes
    assert unpack_bytes(blob).SerializeToString() == model.SerializeToString()
