"""A packed ticket's (or an ONNX file's) tensors as a torch state dict, external data read safely.

    from compress.export.artifact import artifact_state_dict
    state = artifact_state_dict("ticket.cta")          # or "ticket.onnx", or a ModelProto with base_dir=
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from compress.errors import UserError
from compress.export.artifact.pack import MAGIC, unpack_onnx
from compress.export.quantize.dequantize import dequantized_arrays


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
