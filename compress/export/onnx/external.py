"""ONNX external tensor data from a file someone sent: only regular files in the model's own folder.

``onnx`` resolves an initializer's ``location`` against a base folder; a crafted model can name an absolute
path, climb out with ``..`` or point through a symbolic link to any file the reader may open. Every tool
that reads external data checks each location here first, against the folder of the ``.onnx`` file (never
the current directory), and refuses anything else in one ``UserError`` line.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto

from compress.errors import UserError


def external_locations(model: onnx.ModelProto) -> dict[str, str]:
    """Initializer name -> its external ``location`` (empty when it has none)."""
    return {init.name: next((entry.value for entry in init.external_data if entry.key == "location"), "")
            for init in model.graph.initializer if init.data_location == TensorProto.EXTERNAL}


def check_external_data(model: onnx.ModelProto, folder: str | Path, label: object) -> None:
    """Each external location must be a regular file inside ``folder``, named relative to it."""
    folder = Path(folder).resolve()
    for name, location in external_locations(model).items():
        where = f"{label}: initializer {name!r} keeps its data in {location!r}"
        relative = Path(location)
        if not location or relative.is_absolute() or ".." in relative.parts:
            raise UserError(f"{where}: external data must be a file named relative to the model's folder, "
                            "without '..'")
        target = folder / relative
        if target.is_symlink() or folder not in target.resolve().parents:  # a linked file or folder on the way
            raise UserError(f"{where}: a symbolic link; external data must be a regular file beside the model")
        if not target.is_file():
            raise UserError(f"{where}: no such file beside the model")
