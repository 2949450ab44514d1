"""How small a pruned ONNX file can be: raw, gzip, ONNX sparse initializers, and the bitmask limit.

* raw: the ``.onnx`` file as exported (dense float32 weights, zeros included).
* gzip: that file through gzip level 6 (the gzip CLI default; level 9 is ~2% smaller and ~9x slower
  on VGG-19).
* sparse: the same graph with each weight stored as ``onnx.SparseTensorProto`` in
  ``graph.sparse_initializer`` -- nonzero values plus their linearised positions. The ONNX checker
  requires INT64 indices, so each survivor costs 4 B + 8 B; a tensor is converted only where that
  is smaller than dense. onnxruntime densifies them at load time.
* bitmask: the limit of the obvious custom format, one bit per weight plus the survivors as float32
  (``nnz * 4 B + n / 8 B`` for a tensor of ``n`` weights), with the rest of the file as is. It is an
  estimate, not a file: ONNX has no such tensor encoding.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from compress.errors import UserError, first_line
from compress.export.onnx.verify import check_onnx, check_zero_counts, session
from compress.io import save_bytes

GZIP_LEVEL = 6
INDEX_BYTES = 8  # INT64, the only index type onnx.checker accepts for sparse tensors
SPARSE_TOLERANCE = 1e-6  # the same values densified again: any difference would be a bug
_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)


def _weights(proto: onnx.ModelProto) -> Iterator[tuple[onnx.TensorProto, np.ndarray]]:
    """Float initializers with at least one dimension (scalars and shape constants are not weights), one
    array at a time (all at once would be a second copy of the model)."""
    for init in proto.graph.initializer:
        if init.data_type in _FLOAT_TYPES and len(init.dims) >= 1:
            yield init, numpy_helper.to_array(init)


def _sparse_tensors(proto: onnx.ModelProto) -> dict[str, onnx.SparseTensorProto]:
    """Each float initializer that is smaller stored sparse, as its sparse tensor (by name)."""
    sparse: dict[str, onnx.SparseTensorProto] = {}
    for init, array in _weights(proto):
        name = init.name
        flat = array.reshape(-1)
        # counted first: the positions (8 bytes each) of a tensor that stays dense would be a transient twice its size
        if np.count_nonzero(flat) * (array.itemsize + INDEX_BYTES) < flat.size * array.itemsize:
            positions = np.flatnonzero(flat)
            values = numpy_helper.from_array(flat[positions], name)
            indices = numpy_helper.from_array(positions.astype(np.int64), f"{name}.indices")
            sparse[name] = helper.make_sparse_tensor(values, indices, list(array.shape))
    return sparse


def sparsify(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``proto`` with every float initializer that is smaller sparse moved to ``graph.sparse_initializer``:
    a new model sharing nothing with ``proto``, or ``proto`` itself when no initializer is smaller sparse
    (below ~1/3 nonzeros none is): a model of hundreds of MB is not copied to change nothing."""
    sparse = _sparse_tensors(proto)
    if not sparse:
        return proto, 0
    result = onnx.ModelProto()
    _copy_fields(proto, result, skip={"graph"})
    _copy_fields(proto.graph, result.graph, skip={"initializer", "sparse_initializer"})  # not copied to be dropped
    result.graph.initializer.extend(init for init in proto.graph.initializer if init.name not in sparse)
    result.graph.sparse_initializer.extend(proto.graph.sparse_initializer)
    result.graph.sparse_initializer.extend(sparse.values())
    return result, len(sparse)


def sparsify_in_place(proto: onnx.ModelProto) -> int:
    """``sparsify`` without the copy: ``proto`` itself becomes the sparse-initializer model. The number of
    tensors converted."""
    sparse = _sparse_tensors(proto)
    initializers = proto.graph.initializer
    for index in reversed([i for i, init in enumerate(initializers) if init.name in sparse]):
        del initializers[index]
    proto.graph.sparse_initializer.extend(sparse.values())
    return len(sparse)


def gzip_size(data: bytes, chunk: int = 1 << 24) -> int:
    """``len(gzip.compress(data, GZIP_LEVEL))`` without holding the compressed copy (streamed in chunks)."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    view = memoryview(data)
    size = sum(len(compressor.compress(view[start:start + chunk])) for start in range(0, len(view), chunk))
    return size + len(compressor.flush())


def sizes_and_sparse(data: bytes, proto: onnx.ModelProto) -> tuple[dict[str, int], bytes | None]:
    """``storage_sizes`` of the exported ``data`` (parsed as ``proto``) and the sparse-initializer file's bytes
    (None: no initializer is smaller sparse, that file is ``data``). ``proto`` is turned into the sparse
    model in place, so the weights are held once more at most, not twice (the bitmask estimate reads the
    dense initializers first)."""
    bitmask = bitmask_bytes(proto, len(data))
    # protobuf (upb) computes ByteSize by encoding the message: a transient copy of the weights, twice once
    # converted -- an unchanged parse of ``data`` is ``len(data)`` bytes, a converted one is measured once
    sparse_bytes = proto.SerializeToString() if sparsify_in_place(proto) else None
    return _size_table(data, len(data) if sparse_bytes is None else len(sparse_bytes), bitmask), sparse_bytes


def weights_and_counts(model: nn.Module, pruned: dict[str, int]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """``{"<module>.weight": weight}`` and ``{"<module>.weight": masked-out count}`` of the modules in ``pruned``
    (``compress.pruning.pruned_counts``), as ``zeros_and_storage`` takes them."""
    modules = dict(model.named_modules())
    return ({f"{name}.weight": modules[name].weight.detach() for name in pruned},
            {f"{name}.weight": count for name, count in pruned.items()})


def zeros_and_storage(data: bytes, weights: dict, pruned: dict[str, int], what: str
                      ) -> tuple[dict, dict[str, int], bytes | None]:
    """After onnxruntime's check of ``data``: ``check_zero_counts`` and ``sizes_and_sparse`` on one parse of it.
    Not before: the parsed graph and the sparse-initializer bytes would each hold the weights once more
    while the session loads."""
    proto = onnx.load_from_string(data)
    zeros = check_zero_counts(proto, weights, pruned, what)
    sizes, sparse_bytes = sizes_and_sparse(data, proto)
    return zeros, sizes, sparse_bytes


def _size_table(data: bytes, sparse: int, bitmask: int) -> dict[str, int]:
    return {"raw": len(data), "gzip": gzip_size(data), "sparse": sparse, "bitmask": bitmask}


def _copy_fields(source, target, skip: set[str]) -> None:
    """``target.CopyFrom(source)`` but for the fields named in ``skip``."""
    for field, value in source.ListFields():
        if field.name in skip:
            continue
        if hasattr(value, "extend"):  # a repeated field (protobuf's descriptor API differs across versions)
            getattr(target, field.name).extend(value)
        elif hasattr(value, "CopyFrom"):  # a message
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def bitmask_bytes(proto: onnx.ModelProto, raw_size: int) -> int:
    """``raw_size`` with each weight tensor replaced by bitmask + float32 survivors where that is smaller."""
    size = raw_size
    for _init, array in _weights(proto):
        dense = array.nbytes
        packed = int(np.count_nonzero(array)) * array.itemsize + math.ceil(array.size / 8)
        size -= dense - min(dense, packed)
    return size


def storage_sizes(model_bytes: bytes, proto: onnx.ModelProto | None = None,
                  sparse: onnx.ModelProto | None = None) -> dict[str, int]:
    """Bytes: ``raw``, ``gzip``, ``sparse`` (sparse-initializer file) and ``bitmask`` (limit estimate)."""
    proto = proto if proto is not None else onnx.load_from_string(model_bytes)
    sparse = sparse if sparse is not None else sparsify(proto)[0]
    return _size_table(model_bytes, sparse.ByteSize(), bitmask_bytes(proto, len(model_bytes)))


def random_feed(proto: onnx.ModelProto, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Normal inputs for every graph input; symbolic dimensions (the batch) get ``batch``."""
    initializers = {init.name for init in proto.graph.initializer}
    rng = np.random.default_rng(seed)
    feed = {}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        shape = [d.dim_value if d.dim_value > 0 else batch for d in dims]
        feed[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def save_sparse_onnx(path_in: str | Path, path_out: str | Path) -> dict:
    """Write ``path_in`` with sparse initializers to ``path_out`` (atomically), after checking it.

    Checks: the ONNX checker, and onnxruntime on random inputs gives the same outputs as the dense
    file (max |diff| <= 1e-6). Returns the sizes, the number of tensors converted and that difference.
    """
    path_in, path_out = Path(path_in), Path(path_out)
    if not path_in.is_file():
        raise UserError(f"{path_in}: no such ONNX file")
    dense_bytes = path_in.read_bytes()
    try:
        proto = onnx.load_from_string(dense_bytes)
    except Exception as error:  # protobuf DecodeError and friends
        raise UserError(f"{path_in}: not an ONNX model ({type(error).__name__})") from error
    sparse, converted = sparsify(proto)
    sparse_bytes = sparse.SerializeToString()
    check_onnx(sparse, path_out.name, full=False)
    feed = random_feed(proto)
    diff = compare_sessions(dense_bytes, sparse_bytes, feed, path_out.name)
    save_bytes(sparse_bytes, path_out)
    return {"path": str(path_out), "raw": len(dense_bytes), "sparse": len(sparse_bytes),
            "sparse_tensors": converted, "max_abs_diff": diff}


def compare_sessions(dense_bytes: bytes, sparse_bytes: bytes, feed: dict[str, np.ndarray], what: str) -> float:
    """Max |sparse - dense| of the two files' onnxruntime outputs; ValueError above SPARSE_TOLERANCE."""
    try:
        expected = session(dense_bytes).run(None, feed)
        actual = session(sparse_bytes).run(None, feed)
    except Exception as error:  # onnxruntime's own exception types
        raise UserError(f"{what}: onnxruntime cannot load or run the sparse-initializer model: "
                         f"{first_line(error)}"
                         ) from error
    diff = max((float(np.abs(a.astype(np.float64) - e.astype(np.float64)).max(initial=0.0))
                for a, e in zip(actual, expected, strict=True)), default=0.0)
    if not diff <= SPARSE_TOLERANCE:
        raise UserError(f"{what}: sparse-initializer model differs from the dense one by {diff:.3g}")
    return diff

