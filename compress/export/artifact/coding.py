"""The mask codings of a packed ticket (``compress.export.artifact.pack``): bitmap, gap varints, fixed-width gaps.

A mask is the flat positions of a tensor's kept (non-background) elements. ``bitmap``: one bit per element
(``np.packbits``, big-endian bit order); ``gap_varint``: the gaps between kept positions (``position -
previous - 1``, the first from -1) as unsigned LEB128; ``gap_fixed``: the same gaps as 1/2/4/8-byte
little-endian integers, the narrowest that holds the largest. Plus the byte shuffle for values wider than a
byte (byte planes, as Blosc does). Decoders raise ValueError on a stream that does not fit its header.
"""

from __future__ import annotations

import numpy as np

MASK_ENCODINGS = ("bitmap", "gap_varint", "gap_fixed")


def varint_encode(values: np.ndarray) -> bytes:
    """Unsigned LEB128 of each value (vectorised): 7 bits a byte, high bit set on all but the last."""
    values = np.asarray(values, dtype=np.uint64)
    if values.size == 0:
        return b""
    bits = np.zeros(values.shape, dtype=np.int64)
    probe = values.copy()
    while probe.any():
        bits += probe > 0
        probe >>= np.uint64(7)
    lengths = np.maximum(bits, 1)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    out = np.zeros(int(lengths.sum()), dtype=np.uint8)
    for k in range(int(lengths.max())):
        rows = lengths > k
        chunk = (values[rows] >> np.uint64(7 * k)) & np.uint64(0x7F)
        more = np.where(lengths[rows] > k + 1, 0x80, 0).astype(np.uint64)
        out[starts[rows] + k] = (chunk | more).astype(np.uint8)
    return out.tobytes()


def varint_decode(data: bytes, count: int) -> np.ndarray:
    """The ``count`` values of ``varint_encode``; ValueError when the stream does not hold exactly that."""
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw < 0x80)
    if ends.size != count or (raw.size and ends[-1] != raw.size - 1):
        raise ValueError(f"{ends.size} varints, expected {count}")
    if count == 0:
        return np.zeros(0, dtype=np.uint64)
    starts = np.concatenate(([0], ends[:-1] + 1))
    if int((ends - starts).max()) >= 10:
        raise ValueError("varint longer than 64 bits")
    index = np.arange(raw.size)
    shift = (index - np.repeat(starts, ends - starts + 1)) * 7
    parts = (raw & 0x7F).astype(np.uint64) << shift.astype(np.uint64)
    return np.bitwise_or.reduceat(parts, starts)


def fixed_width(max_gap: int) -> int:
    return next(width for width in (1, 2, 4, 8) if max_gap < 256 ** width)


def mask_streams(keep: np.ndarray) -> dict[str, tuple[bytes, dict]]:
    """Every mask coding of a flat boolean array: name -> (uncompressed bytes, parameters)."""
    positions = np.flatnonzero(keep)
    gaps = np.diff(positions, prepend=-1) - 1 if positions.size else np.zeros(0, dtype=np.int64)
    width = fixed_width(int(gaps.max(initial=0)))
    return {
        "bitmap": (np.packbits(keep).tobytes(), {}),
        "gap_varint": (varint_encode(gaps), {}),
        "gap_fixed": (gaps.astype(f"<u{width}").tobytes(), {"width": width}),
    }


def decode_mask(name: str, data: bytes, params: dict, size: int, count: int) -> np.ndarray:
    if name == "bitmap":
        if len(data) != (size + 7) // 8:
            raise ValueError(f"bitmap of {len(data)} bytes for {size} elements")
        keep = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=size).astype(bool)
        if int(keep.sum()) != count:
            raise ValueError("bitmap population differs from the header's count")
        return np.flatnonzero(keep)
    if name == "gap_varint":
        gaps = varint_decode(data, count).astype(np.int64)
    elif name == "gap_fixed":
        width = int(params.get("width", 0))
        if width not in (1, 2, 4, 8) or len(data) != width * count:
            raise ValueError(f"fixed-width gaps of {len(data)} bytes, width {width}, count {count}")
        gaps = np.frombuffer(data, dtype=f"<u{width}").astype(np.int64)
    else:
        raise ValueError(f"unknown mask encoding {name!r}")
    positions = np.cumsum(gaps + 1) - 1
    if count and (gaps.min() < 0 or positions[-1] >= size):
        raise ValueError("gap positions run past the tensor")
    return positions


def byte_shuffle(data: bytes, itemsize: int) -> bytes:
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, itemsize).T.tobytes()


def byte_unshuffle(data: bytes, itemsize: int) -> bytes:
    return np.frombuffer(data, dtype=np.uint8).reshape(itemsize, -1).T.tobytes()
