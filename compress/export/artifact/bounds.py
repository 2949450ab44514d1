"""What an artifact's header may claim, checked before anything is decompressed or allocated.

The sha256 of an artifact is a checksum, not a bound: anyone can write a file whose header claims
3e9 elements, a 5 GB stream or a JSON nesting deep enough to exhaust the parser's stack. So before
``compress.export.artifact.pack`` decodes a byte:

* the header's JSON is at most ``MAX_HEADER_BYTES`` decompressed and ``MAX_HEADER_DEPTH`` levels deep;
* every field has its type and range (counts >= 0, ``nnz <= count``, item size 1/2/4/8, known encodings);
* every stream's decompressed size is the one its tensor implies (values: ``nnz * itemsize``, bitmap:
  ``ceil(count / 8)``, fixed gaps: ``width * nnz``, varint gaps: ``nnz .. 10 * nnz``, dense:
  ``count * itemsize``), and the stored sizes cover the payload exactly;
* the model stream plus every tensor's bytes fit in the restored model's size, which is at most
  ``MAX_RESTORED_BYTES`` (protobuf's 2 GiB limit on a serialised ModelProto: no valid ONNX file is larger);
* once the model stream is parsed, each tensor's ``count`` is the product of its initializer's dims.

Each failure is one ``ArtifactError`` line; nothing is allocated beyond what these sizes allow.
"""

from __future__ import annotations

import re

import numpy as np

from compress.errors import ArtifactError

MAX_HEADER_BYTES = 1 << 24  # 16 MiB of JSON: ~40,000 tensors' entries
MAX_HEADER_DEPTH = 8  # the header written is 5 levels deep (header, tensors, entry, candidates / streams)
MAX_RESTORED_BYTES = (1 << 31) - 1  # protobuf refuses to serialise a message of 2 GiB or more
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_ENCODINGS = ("bitmap", "gap_varint", "gap_fixed", "dense")


def json_depth(data: bytes) -> int:
    """How deeply the JSON text ``data`` nests (strings, which may hold brackets, left out)."""
    skeleton = np.frombuffer(_STRINGS.sub(b"", data), dtype=np.uint8)
    opens = (skeleton == ord("[")) | (skeleton == ord("{"))
    closes = (skeleton == ord("]")) | (skeleton == ord("}"))
    steps = opens.astype(np.int64) - closes.astype(np.int64)
    return int(np.cumsum(steps).max(initial=0))


def check_header_text(data: bytes, path: object) -> None:
    depth = json_depth(data)
    if depth > MAX_HEADER_DEPTH:
        raise ArtifactError(path, f"corrupt artifact header (JSON nested {depth} levels, at most "
                                  f"{MAX_HEADER_DEPTH} allowed)")


def _int(value: object, what: str, path: object, low: int = 0, high: int = MAX_RESTORED_BYTES) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ArtifactError(path, f"corrupt artifact header ({what} = {str(value)[:40]!r}, expected an "
                                  f"integer in {low}..{high})")
    return value


def _dict(value: object, what: str, path: object) -> dict:
    if not isinstance(value, dict):
        raise ArtifactError(path, f"corrupt artifact header ({what} is not an object)")
    return value


def _implied(entry: dict, name: str, path: object) -> list[tuple[str, int, int]]:
    """(what, lowest, highest) decompressed size of each stream of a tensor, from its count and nnz."""
    count, itemsize, nnz = entry["count"], entry["itemsize"], entry["nnz"]
    encoding = entry.get("encoding")
    if encoding not in _ENCODINGS:
        raise ArtifactError(path, f"corrupt artifact header ({name}: unknown encoding {str(encoding)[:40]!r})")
    if encoding == "dense":
        return [("dense", count * itemsize, count * itemsize)]
    if encoding == "bitmap":
        mask = ((count + 7) // 8, (count + 7) // 8)
    elif encoding == "gap_fixed":
        width = _int(_dict(entry.get("params"), f"{name} params", path).get("width"), f"{name} width", path, 1, 8)
        if width not in (1, 2, 4, 8):
            raise ArtifactError(path, f"corrupt artifact header ({name}: gap width {width})")
        mask = (width * nnz, width * nnz)
    else:  # LEB128 gaps below 2**64: 1 to 10 bytes each
        mask = (nnz, 10 * nnz)
    return [("mask", *mask), ("values", nnz * itemsize, nnz * itemsize)]


def check_header(header: object, payload_len: int, path: object, max_bytes: int = MAX_RESTORED_BYTES) -> None:
    """Refuse a header whose claims are inconsistent or exceed the bounds (see the module docstring)."""
    header = _dict(header, "the header", path)
    model = _dict(header.get("model"), "model", path)
    source = _dict(header.get("source"), "source", path)
    limit = min(max_bytes, MAX_RESTORED_BYTES)
    restored = source.get("size")
    if isinstance(restored, int) and not isinstance(restored, bool) and restored > limit:
        raise ArtifactError(path, f"artifact restores to {restored:,} bytes, more than the {limit:,} allowed "
                                  "(the largest model this reads)")
    restored = _int(restored, "source.size", path, 0, limit)
    total = _int(model.get("size"), "model.size", path, 0, restored)
    stored = _int(model.get("stored"), "model.stored", path, 0, payload_len)
    tensors = header.get("tensors")
    if not isinstance(tensors, list):
        raise ArtifactError(path, "corrupt artifact header (tensors is not a list)")
    indices = set()
    for number, entry in enumerate(tensors):
        entry = _dict(entry, f"tensor {number}", path)
        name = f"tensor {number}"
        index = _int(entry.get("index"), f"{name} index", path, 0, restored)
        if index in indices:
            raise ArtifactError(path, f"corrupt artifact header ({name}: index {index} given twice)")
        indices.add(index)
        itemsize = _int(entry.get("itemsize"), f"{name} itemsize", path, 1, 8)
        if itemsize not in (1, 2, 4, 8):
            raise ArtifactError(path, f"corrupt artifact header ({name}: item size {itemsize})")
        count = _int(entry.get("count"), f"{name} count", path, 0, restored // itemsize)
        _int(entry.get("nnz"), f"{name} nnz", path, 0, count)
        _int(entry.get("background"), f"{name} background", path, 0, 256 ** itemsize - 1)
        if not isinstance(entry.get("shuffle"), bool):
            raise ArtifactError(path, f"corrupt artifact header ({name}: shuffle is not true/false)")
        total += count * itemsize
        if total > restored:
            raise ArtifactError(path, f"corrupt artifact header (its tensors hold more than the {restored:,} "
                                      "bytes of the restored model)")
        specs = entry.get("streams")
        implied = _implied(entry, name, path)
        if not isinstance(specs, list) or len(specs) != len(implied):
            raise ArtifactError(path, f"corrupt artifact header ({name}: expected {len(implied)} streams)")
        for spec, (what, low, high) in zip(specs, implied, strict=True):
            spec = _dict(spec, f"{name} stream", path)
            _int(spec.get("size"), f"{name} {what} size", path, low, high)
            stored += _int(spec.get("stored"), f"{name} {what} stored", path, 0, payload_len)
    if stored != payload_len:
        raise ArtifactError(path, f"corrupt artifact header (streams cover {stored:,} of {payload_len:,} "
                                  "payload bytes)")


def check_shapes(header: dict, initializers, path: object) -> None:
    """Each tensor's ``count`` is its initializer's element count (the shape bounds every allocation)."""
    for entry in header["tensors"]:
        index = entry["index"]
        if index >= len(initializers):
            raise ArtifactError(path, f"corrupt artifact (tensor index {index}, the model has "
                                      f"{len(initializers)} initializers)")
        dims = list(initializers[index].dims)
        if any(dim < 0 for dim in dims):
            raise ArtifactError(path, f"corrupt artifact (tensor {index} has a negative dimension)")
        count = 1
        for dim in dims:
            count *= dim  # Python ints: a crafted shape cannot overflow
        if count != entry["count"]:
            raise ArtifactError(path, f"corrupt artifact (tensor {index} claims {entry['count']:,} elements, "
                                      f"its shape {dims} holds {count:,})")
