"""The compressed ticket artifact (``ticket.cta``): its coding, pack / unpack, and the run's size table."""

from compress.export.artifact.pack import CODEC, SUFFIX, artifact_state_dict, pack_onnx, unpack_onnx

__all__ = ["CODEC", "SUFFIX", "artifact_state_dict", "pack_onnx", "unpack_onnx"]
