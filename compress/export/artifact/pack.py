"""A ticket packed for shipping: the ONNX file with its sparse tensors mask-coded and entropy-coded, bit-exact.

    from compress.export.artifact.pack import pack_onnx, unpack_onnx, artifact_state_dict
    info = pack_onnx("runs/x/ticket.onnx", "ticket.cta")        # info["ratio"]: source bytes / artifact bytes
    proto = unpack_onnx("ticket.cta", "restored.onnx")          # serialises exactly as the source ModelProto

Every initializer of at least ``MIN_TENSOR_BYTES`` held in ``raw_data`` is taken out of the model and stored
as a mask plus its non-background values (background: 0, or the tensor's most frequent value when that is
more common, e.g. a quantized zero point). Per tensor the smallest compressed encoding wins:

* ``bitmap``: one bit per element (``np.packbits``);
* ``gap_varint`` / ``gap_fixed``: the gaps between kept positions as LEB128 varints or as 1/2/4/8-byte
  little-endian integers;
* ``dense``: no mask, every element (what a tensor with few zeros needs; tried from ``DENSE_MIN_KEPT``).

The kept values stay in the tensor's own dtype (int8 for a quantized model, float32/float16 otherwise) and,
for items wider than a byte, are byte-shuffled (byte planes, as Blosc does) when that compresses better.
The rest of the ModelProto (graph, small tensors, metadata_props) is serialised with those tensors' bytes
left out. Every stream goes through **stdlib lzma** (raw LZMA2, preset 6): it is always there,
beats gzip/zlib by 15-25% on these streams, and ``zstandard`` is not installed in this project.

File layout (little-endian): ``MAGIC`` (8 B) | format version (u16) | flags (u16, 0) | header length (u32) |
payload length (u64) | sha256 of header + payload (32 B) | header (lzma'd JSON: tensors, streams, source
hashes) | payload (the streams, back to back). Unpacking checks the magic, version, lengths and checksum
before decoding anything, bounds every decompression by the size the header announces, and checks that
the restored model serialises to the source's sha256; any failure is one ``ArtifactError`` line.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from compress.errors import ArtifactError, UserError
from compress.export.artifact.coding import byte_shuffle, byte_unshuffle, decode_mask, mask_streams

MAGIC = b"\x89CTKT\r\n\x1a"  # like PNG's: a high byte, then line-ending bytes that text-mode copies mangle
VERSION = 1
SUFFIX = ".cta"
MIN_TENSOR_BYTES = 256  # smaller initializers stay in the serialised model: a mask would not pay for itself
_PREAMBLE = struct.Struct("<8sHHIQ32s")
_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6}]  # 9 and 9e: same size +-0.05% here, 2-10x slower
CODEC = "lzma (raw LZMA2, preset 6)"
ENCODINGS = ("bitmap", "gap_varint", "gap_fixed", "dense")
# ``dense`` is tried only on tensors keeping at least this fraction of their elements: trying it on Conv-2's
# 17 MB fc weight at 3% took ~45 s (plain and byte-shuffled), and on every sparse tensor measured
# (LeNet-300-100 and Conv-2 at 3-4%, fp32 and int8) dense came out 15-40% larger than the best mask coding
DENSE_MIN_KEPT = 0.25
# tensors up to this size try every candidate in full; a larger one compares them on its first EXACT_BYTES
# and compresses only the winner in full. lzma runs at ~0.5-1.5 MB/s on weight bytes on this machine, so
# trying all candidates in full (~5 passes) would take minutes for a 45 MB timm ResNet-18
EXACT_BYTES = 1 << 20


def _compress(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_FILTERS)


def _decompress(data: bytes, size: int, what: str, path: object) -> bytes:
    """``data`` decoded to exactly ``size`` bytes; a corrupt stream cannot make it allocate more."""
    try:
        decoder = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_FILTERS)
        out = decoder.decompress(data, max_length=size)
    except lzma.LZMAError as error:
        raise ArtifactError(path, f"corrupt {what} stream ({error})") from None
    if len(out) != size or not decoder.eof:
        raise ArtifactError(path, f"corrupt {what} stream (decodes to {len(out)} bytes, expected {size})")
    return out


# -- tensors --------------------------------------------------------------------------------------------

@dataclass
class _Encoded:
    entry: dict
    streams: list[bytes]


def _element_view(init: onnx.TensorProto) -> tuple[np.ndarray, int]:
    """The raw bytes of a tensor as unsigned integers of its item size (bit patterns: -0.0 is not 0.0)."""
    raw = init.raw_data
    count = int(np.prod(init.dims, dtype=np.int64)) if len(init.dims) else 1
    itemsize = len(raw) // count if count else 0
    if count == 0 or itemsize not in (1, 2, 4, 8) or itemsize * count != len(raw):
        return np.frombuffer(raw, dtype=np.uint8), 0
    return np.frombuffer(raw, dtype=f"<u{itemsize}"), itemsize


def _background(elements: np.ndarray) -> int:
    """0, unless another bit pattern is more frequent (a quantized tensor's zero point)."""
    zeros = int(np.count_nonzero(elements == 0))
    if zeros * 2 >= elements.size:
        return 0
    values, counts = np.unique(elements, return_counts=True)
    best = int(np.argmax(counts))
    return int(values[best]) if counts[best] > zeros else 0


def _values_stream(data: bytes, itemsize: int, shuffle: bool | None = None) -> tuple[bytes, bool]:
    """The compressed values, byte-shuffled when that is smaller (never for 1-byte items); ``shuffle``
    given: that way only."""
    if itemsize <= 1 or not data:
        return _compress(data), False
    if shuffle is not None:
        return _compress(byte_shuffle(data, itemsize) if shuffle else data), shuffle
    plain, shuffled = _compress(data), _compress(byte_shuffle(data, itemsize))
    return (shuffled, True) if len(shuffled) < len(plain) else (plain, False)


def _candidates(elements: np.ndarray, background: int, itemsize: int, only: str | None = None,
                shuffle: bool | None = None) -> dict[str, _Encoded]:
    """Each encoding of ``elements`` (or just ``only``), compressed; entries without the tensor's identity."""
    keep = elements != background
    kept = elements[keep]
    base = {"nnz": int(kept.size)}
    candidates: dict[str, _Encoded] = {}
    if only != "dense":
        values_raw = kept.tobytes()
        values, shuffled = _values_stream(values_raw, itemsize, shuffle)
        for name, (mask_raw, params) in mask_streams(keep).items():
            if only is not None and name != only:
                continue
            mask = _compress(mask_raw)
            entry = {**base, "encoding": name, "params": params, "shuffle": shuffled,
                     "streams": [{"what": "mask", "size": len(mask_raw), "stored": len(mask)},
                                 {"what": "values", "size": len(values_raw), "stored": len(values)}]}
            candidates[name] = _Encoded(entry, [mask, values])
    if only == "dense" or (only is None and kept.size >= DENSE_MIN_KEPT * elements.size):
        dense_raw = elements.tobytes()
        dense, dense_shuffled = _values_stream(dense_raw, itemsize, shuffle)
        candidates["dense"] = _Encoded({**base, "encoding": "dense", "params": {}, "shuffle": dense_shuffled,
                                        "streams": [{"what": "dense", "size": len(dense_raw), "stored": len(dense)}]},
                                       [dense])
    return candidates


def _smallest(candidates: dict[str, _Encoded]) -> tuple[str, dict[str, int]]:
    sizes = {name: sum(len(s) for s in c.streams) for name, c in candidates.items()}
    return min((name for name in ENCODINGS if name in sizes), key=lambda name: sizes[name]), sizes  # ties: order


def _encode_tensor(index: int, init: onnx.TensorProto) -> _Encoded | None:
    """The tensor in its smallest encoding: every candidate tried in full up to ``EXACT_BYTES``; above, the
    candidates (and byte shuffling) are compared on the first ``EXACT_BYTES`` and only the winner is made."""
    elements, itemsize = _element_view(init)
    if itemsize == 0:
        return None
    background = _background(elements)
    identity = {"index": index, "name": init.name, "count": int(elements.size), "itemsize": itemsize,
                "background": background}
    if elements.nbytes <= EXACT_BYTES:
        candidates = _candidates(elements, background, itemsize)
        winner, sizes = _smallest(candidates)
        chosen, choice = candidates[winner], {"candidates": sizes}
    else:
        sample = elements[:EXACT_BYTES // itemsize]
        trial = _candidates(sample, background, itemsize)
        winner, sizes = _smallest(trial)
        chosen = _candidates(elements, background, itemsize, only=winner, shuffle=trial[winner].entry["shuffle"])[winner]
        choice = {"candidates": {winner: sum(len(s) for s in chosen.streams)},
                  "sample": {"elements": int(sample.size), "candidates": sizes}}
    chosen.entry = {**identity, **chosen.entry, **choice}
    return chosen


def _decode_tensor(entry: dict, streams: list[bytes], path: object) -> bytes:
    count, itemsize, nnz = entry["count"], entry["itemsize"], entry["nnz"]
    dtype = np.dtype(f"<u{itemsize}")
    specs = entry["streams"]
    decoded = [_decompress(data, spec["size"], f"{entry['name']} {spec['what']}", path)
               for data, spec in zip(streams, specs, strict=True)]
    if entry["encoding"] == "dense":
        raw = decoded[0]
        if len(raw) != count * itemsize:
            raise ValueError(f"dense stream of {len(raw)} bytes")
        return byte_unshuffle(raw, itemsize) if entry["shuffle"] else raw
    mask_raw, values_raw = decoded
    if len(values_raw) != nnz * itemsize:
        raise ValueError(f"values stream of {len(values_raw)} bytes for {nnz} values")
    if entry["shuffle"]:
        values_raw = byte_unshuffle(values_raw, itemsize)
    positions = decode_mask(entry["encoding"], mask_raw, entry.get("params", {}), count, nnz)
    out = np.full(count, entry["background"], dtype=dtype)
    out[positions] = np.frombuffer(values_raw, dtype=dtype)
    return out.tobytes()


# -- files ----------------------------------------------------------------------------------------------

def _load_source(onnx_path: str | Path) -> tuple[bytes, onnx.ModelProto]:
    path = Path(onnx_path)
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file")
    data = path.read_bytes()
    if data.startswith(MAGIC):
        raise UserError(f"{path}: already a packed ticket artifact (restore it with unpack_onnx / --unpack)")
    try:
        proto = onnx.load_from_string(data)
    except Exception as error:  # protobuf DecodeError and friends
        raise UserError(f"{path}: not an ONNX model ({type(error).__name__})") from error
    if not proto.graph.node and not proto.graph.initializer:
        raise UserError(f"{path}: not an ONNX model (no graph)")
    for init in proto.graph.initializer:
        if init.data_location == TensorProto.EXTERNAL:
            raise UserError(f"{path}: initializer {init.name!r} keeps its data in an external file; "
                            "save the model with its data inside (onnx.save(..., save_as_external_data=False))")
    return data, proto


def pack_bytes(proto: onnx.ModelProto, source_bytes: bytes | None = None) -> tuple[bytes, dict]:
    """The artifact of ``proto`` and what was chosen per tensor (``pack_onnx`` without files)."""
    canonical = proto.SerializeToString()
    shell = onnx.ModelProto()
    shell.CopyFrom(proto)
    encoded: list[_Encoded] = []
    for index, init in enumerate(shell.graph.initializer):
        if len(init.raw_data) < MIN_TENSOR_BYTES:
            continue
        item = _encode_tensor(index, init)
        if item is not None:
            encoded.append(item)
            init.ClearField("raw_data")
    shell_raw = shell.SerializeToString()
    shell_stored = _compress(shell_raw)
    streams = [shell_stored] + [s for item in encoded for s in item.streams]
    header = {
        "format": "compress ticket artifact", "version": VERSION, "codec": CODEC,
        "model": {"size": len(shell_raw), "stored": len(shell_stored)},
        "source": {"size": len(canonical), "sha256": hashlib.sha256(canonical).hexdigest(),
                   "file_size": len(source_bytes) if source_bytes is not None else len(canonical),
                   "file_is_canonical": source_bytes is None or source_bytes == canonical},
        "tensors": [item.entry for item in encoded],
    }
    header_bytes = _compress(json.dumps(header, separators=(",", ":")).encode())
    payload = b"".join(streams)
    digest = hashlib.sha256(header_bytes + payload).digest()
    blob = _PREAMBLE.pack(MAGIC, VERSION, 0, len(header_bytes), len(payload), digest) + header_bytes + payload
    return blob, header
