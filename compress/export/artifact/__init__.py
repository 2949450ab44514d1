"""The compressed ticket artifact (``ticket.cta``): its coding, packing (``pack``: bytes; ``files``: pack_onnx,
unpack_onnx, read_header, artifact_state_dict), and the run's size table (``sizes``)."""

from compress.export.artifact.files import artifact_state_dict, pack_onnx, read_header, unpack_onnx
from compress.export.artifact.pack import CODEC, SUFFIX

__all__ = ["CODEC", "SUFFIX", "artifact_state_dict", "pack_onnx", "read_header", "unpack_onnx"]
