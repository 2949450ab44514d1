"""The artifact as files: ``pack_onnx`` (checked by unpacking), and reading a ``.cta`` back: the ONNX file
bit-exact, its header, or its weights as a state dict (``pack`` holds the byte-level packing).

Every length and offset read from the file is checked against the file before use (an artifact is untrusted
input): a truncated or altered file raises ``ArtifactError`` naming it.
"""

from __future__ import annotations

import hashlib
import json
import lzma
from pathlib import Path

import numpy as np
import onnx

from compress.errors import ArtifactError, UserError
from compress.export.artifact.bounds import (
    MAX_HEADER_BYTES,
    MAX_RESTORED_BYTES,
    check_header,
    check_header_text,
    check_shapes,
)
from compress.export.artifact.pack import (
    _FILTERS,
    _PREAMBLE,
    CODEC,
    MAGIC,
    VERSION,
    _decode_tensor,
    _decompress,
    _load_source,
    pack_bytes,
)
from compress.export.quantize.dequantize import dequantized_arrays
from compress.io import save_bytes


def _split(blob: bytes, path: object, max_bytes: int = MAX_RESTORED_BYTES) -> tuple[dict, bytes]:
    """Header and payload of an artifact, after checking magic, version, lengths, checksum and the header's
    claims (``compress.export.artifact.bounds``)."""
    if len(blob) < len(MAGIC) or blob[:len(MAGIC)] != MAGIC:
        raise ArtifactError(path, "not a compress ticket artifact (bad magic bytes)")
    if len(blob) < _PREAMBLE.size:
        raise ArtifactError(path, "truncated artifact (shorter than its fixed header)")
    _magic, version, _flags, header_len, payload_len, digest = _PREAMBLE.unpack_from(blob)
    if version != VERSION:
        raise ArtifactError(path, f"artifact format version {version}, this compress reads version {VERSION}")
    body = blob[_PREAMBLE.size:]
    if len(body) != header_len + payload_len:
        state = "truncated" if len(body) < header_len + payload_len else "trailing bytes after the"
        raise ArtifactError(path, f"{state} artifact ({len(body)} bytes after the fixed header, "
                                  f"expected {header_len + payload_len})")
    if hashlib.sha256(body).digest() != digest:
        raise ArtifactError(path, "corrupt artifact (sha256 checksum mismatch)")
    text = _lzma_header(body[:header_len], path)
    check_header_text(text, path)
    try:
        header = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise ArtifactError(path, f"corrupt artifact header ({type(error).__name__}: {error})") from None
    check_header(header, payload_len, path, max_bytes)
    return header, body[header_len:]


def _lzma_header(data: bytes, path: object) -> bytes:
    try:
        decoder = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_FILTERS)
        out = decoder.decompress(data, max_length=MAX_HEADER_BYTES)
    except lzma.LZMAError as error:
        raise ArtifactError(path, f"corrupt artifact header ({error})") from None
    if not decoder.eof:
        raise ArtifactError(path, f"corrupt artifact header (longer than {MAX_HEADER_BYTES:,} bytes, or cut)")
    return out


def unpack_bytes(blob: bytes, path: object = "<artifact>", max_bytes: int = MAX_RESTORED_BYTES) -> onnx.ModelProto:
    """The ModelProto of an artifact's bytes (``unpack_onnx`` without files); an artifact that restores to
    more than ``max_bytes`` is refused before anything is decompressed."""
    header, payload = _split(blob, path, max_bytes)
    try:
        model_spec = header["model"]
        offset = model_spec["stored"]
        shell = onnx.ModelProto()
        shell.ParseFromString(_decompress(payload[:offset], model_spec["size"], "model", path))
        initializers = shell.graph.initializer
        check_shapes(header, initializers, path)
        for entry in header["tensors"]:
            streams = []
            for spec in entry["streams"]:
                streams.append(payload[offset:offset + spec["stored"]])
                offset += spec["stored"]
            initializers[entry["index"]].raw_data = _decode_tensor(entry, streams, path)
        if offset != len(payload):
            raise ValueError(f"streams cover {offset} of {len(payload)} payload bytes")
    except ArtifactError:
        raise
    except (KeyError, TypeError, IndexError, ValueError) as error:  # protobuf DecodeError is an Exception
        raise ArtifactError(path, f"corrupt artifact ({type(error).__name__}: {error})") from None
    except Exception as error:  # protobuf's DecodeError
        raise ArtifactError(path, f"corrupt artifact model ({type(error).__name__})") from None
    try:
        restored = shell.SerializeToString()
    except Exception as error:  # protobuf's EncodeError (over 2 GiB): the bounds should have caught it
        raise ArtifactError(path, f"corrupt artifact model ({type(error).__name__})") from None
    if hashlib.sha256(restored).hexdigest() != header.get("source", {}).get("sha256"):
        raise ArtifactError(path, "corrupt artifact (the restored model differs from the packed one)")
    return shell


def _read(artifact_path: str | Path) -> bytes:
    path = Path(artifact_path)
    if not path.is_file():  # a FIFO or device too: reading one could block or never end
        raise ArtifactError(path, "no such artifact file" if not path.exists() else "not a regular file")
    size = path.stat().st_size
    if size > MAX_RESTORED_BYTES + MAX_HEADER_BYTES:
        raise ArtifactError(path, f"{size:,} bytes: larger than any artifact this reads")
    return path.read_bytes()


def unpack_onnx(artifact_path: str | Path, out_onnx_path: str | Path | None = None) -> onnx.ModelProto:
    """The packed ModelProto, bit-exact; also written (atomically) to ``out_onnx_path`` when given."""
    proto = unpack_bytes(_read(artifact_path), artifact_path)
    if out_onnx_path is not None:
        save_bytes(proto.SerializeToString(), Path(out_onnx_path))
    return proto


def read_header(artifact_path: str | Path) -> dict:
    """The artifact's header (format, codec, source hash, per-tensor encodings), after its checks."""
    return _split(_read(artifact_path), artifact_path)[0]


def artifact_state_dict(artifact_path: str | Path | onnx.ModelProto, *, dequantize: bool = True,
                        base_dir: str | Path | None = None) -> dict:
    """The ticket's tensors as a torch state dict (initializer name -> tensor), from an artifact, an ONNX
    file or a ModelProto.

    External tensor data (an ONNX file saved with ``save_as_external_data``) is read from the ONNX file's
    folder -- for a ModelProto from ``base_dir``, which it then needs -- never from the current directory,
    and only as regular files inside that folder (``compress.export.onnx.external``).

    An fp32 ticket's initializers carry the torch names (``1.weight``), so the result loads into the model
    with ``load_state_dict``. With ``dequantize``, int8 weights of a quantized model come back as float32
    under the torch name: DequantizeLinear inputs (QDQ) and onnxruntime's dynamic-quantization triples
    (``<w>[_Transposed]_quantized`` / ``_scale`` / ``_zero_point``, transposed back); their scale and zero
    point tensors are then left out.
    """
    import torch
    from onnx import numpy_helper

    from compress.export.onnx.external import check_external_data, external_locations

    if isinstance(artifact_path, onnx.ModelProto):
        proto, label = artifact_path, "model"
    elif Path(artifact_path).is_file() and not _starts_with_magic(Path(artifact_path)):
        proto, label = _load_onnx_file(Path(artifact_path)), str(artifact_path)  # a plain .onnx file
        base_dir = Path(artifact_path).parent
    else:
        proto, label = unpack_onnx(artifact_path), str(artifact_path)
    if external_locations(proto):
        if base_dir is None:
            raise UserError(f"{label}: its tensors keep their data in external files; pass base_dir= the folder "
                            "of its .onnx file (the current directory is never assumed)")
        check_external_data(proto, base_dir, label)
    folder = str(Path(base_dir).resolve()) if base_dir is not None else ""
    arrays = {init.name: numpy_helper.to_array(init, base_dir=folder) for init in proto.graph.initializer}
    if dequantize:
        arrays = dequantized_arrays(proto, arrays)
    return {name: torch.from_numpy(np.array(array)) for name, array in arrays.items()}


def _starts_with_magic(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(MAGIC)) == MAGIC


def _load_onnx_file(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf DecodeError and friends
        raise UserError(f"{path}: neither a packed ticket artifact nor an ONNX model ({type(error).__name__})") \
            from None


def pack_onnx(onnx_path: str | Path, out_path: str | Path) -> dict:
    """Pack ``onnx_path`` into the artifact ``out_path`` (written atomically); returns sizes and choices.

    The artifact is checked before it is written: unpacked again, it must serialise to the source model.
    """
    source_bytes, proto = _load_source(onnx_path)
    blob, header = pack_bytes(proto, source_bytes)
    restored = unpack_bytes(blob, out_path)
    if restored.SerializeToString() != proto.SerializeToString():  # a bug here, never the user's
        raise AssertionError(f"{onnx_path}: the packed artifact does not restore the model")
    save_bytes(blob, Path(out_path))
    tensors = [{key: entry[key] for key in ("name", "count", "nnz", "itemsize", "encoding", "candidates")}
               | {"stored": sum(s["stored"] for s in entry["streams"])} for entry in header["tensors"]]
    return {"path": str(out_path), "source": str(onnx_path), "source_bytes": len(source_bytes),
            "artifact_bytes": len(blob), "ratio": len(source_bytes) / len(blob), "codec": CODEC,
            "model_stored": header["model"]["stored"], "file_is_canonical": header["source"]["file_is_canonical"],
            "tensors": tensors}
