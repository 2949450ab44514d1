"""The compressed ticket artifact (``ticket.cta``): its coding, pack / unpack, and the run's size table."""

from compress.export.artifact.pack import CODEC, SUFFIX, pack_onnx, unpack_onnx
from compress.export.artifact.state import artifact_state_dict

__all__ = ["CODEC", "SUFFIX", "artifact_state_dict", "pack_onnx", "unpack_onnx"]
