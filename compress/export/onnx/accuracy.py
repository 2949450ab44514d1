"""Accuracy of an exported ONNX file through onnxruntime, starting from the dataset's raw pixels.

The toolkit's splits hold already-normalised tensors; a deployment holds pixels. This module reads the
dataset's own decoded pixels (uint8, before any normalisation: the loader's ``RawData`` / image files),
applies exactly what the file's metadata says (``compress.export.onnx.preprocess``), and counts correct
argmax predictions. The test rows are the run's: the whole test set, or the seeded ``data.test_subset``
(``compress.data.load.test_indices``), in order.

    from compress.export.onnx import onnx_test_accuracy
    acc = onnx_test_accuracy("runs/x/ticket.onnx", recipe)             # a Recipe, or a DataConfig + seed=
    acc = onnx_test_accuracy("restored.onnx", recipe, limit=1000)      # the first 1000 test examples
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from compress.errors import UserError, first_line
from compress.export.onnx.preprocess import apply_preprocess, read_metadata

BATCH = 1000  # examples per onnxruntime call


def _config_and_seed(spec, seed: int | None):
    """(DataConfig, seed) from a Recipe or a DataConfig."""
    from compress.recipe.schema import DataConfig

    if isinstance(spec, DataConfig):
        return spec, 0 if seed is None else seed
    data = getattr(spec, "data", None)
    if isinstance(data, DataConfig):
        return data, spec.seed if seed is None else seed
    raise UserError(f"onnx_test_accuracy takes a Recipe or a DataConfig, got {type(spec).__name__}")


def raw_test_batches(config, seed: int = 0, *, limit: int | None = None,
                     batch: int = BATCH) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The test split's raw pixels (uint8 N x C x H x W) and labels, in order, in batches.

    Never downloads (``data.download`` is ignored here): an evaluation reads what is on disk.
    """
    from compress.data.load import test_indices
    from compress.data.registry import DATASETS, StreamData

    if limit is not None and limit < 1:
        raise UserError(f"limit must be >= 1 or None, got {limit}")
    if hasattr(config, "download"):
        config = dataclasses.replace(config, download=False)
    raw = DATASETS.get(config.name).load(config)
    if isinstance(raw, StreamData):
        from compress.data.folder import decode_samples

        rows = test_indices(len(raw.test), config.test_subset, seed)
        samples = raw.test if rows is None else [raw.test[i] for i in rows.tolist()]
        samples = samples[:limit] if limit is not None else samples
        side = raw.image_size
        for i in range(0, len(samples), batch):
            images, labels = decode_samples(samples[i:i + batch], raw.in_channels, side, (side, side))
            yield images.numpy(), labels.numpy()
        return
    images, labels = raw.test_images, raw.test_labels
    rows = test_indices(images.shape[0], config.test_subset, seed)
    if rows is not None:
        images, labels = images[rows], labels[rows]
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    for i in range(0, images.shape[0], batch):
        yield images[i:i + batch].numpy(), labels[i:i + batch].numpy()


RUNTIMES = ("onnxruntime", "openvino")


def _runner(model_bytes: bytes, runtime: str, precision: str):
    """``run(x) -> logits`` in the runtime asked for."""
    if runtime == "onnxruntime":
        if precision != "f32":
            raise UserError(f"onnxruntime runs the file's own precision; precision {precision!r} is openvino's")
        from compress.export.onnx.verify import session

        runner = session(model_bytes)
        name = runner.get_inputs()[0].name
        return lambda x: runner.run(None, {name: x})[0]
    if runtime != "openvino":
        raise UserError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    import tempfile

    from compress.export.onnx.openvino import compile_onnx

    with tempfile.TemporaryDirectory(prefix="compress-ov-") as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(model_bytes)
        compiled = compile_onnx(path, precision, threads=0)  # 0: OpenVINO's own choice of threads
    request = compiled.create_infer_request()

    def run(x):
        request.infer({0: x})
        return request.get_output_tensor(0).data.copy()

    return run


def onnx_test_accuracy(onnx_path: str | Path | bytes | onnx.ModelProto, recipe_or_data, *,
                       limit: int | None = None, seed: int | None = None, preprocess: dict | None = None,
                       runtime: str = "onnxruntime", precision: str = "f32") -> float:
    """Top-1 accuracy of the ONNX model on the test set, from raw pixels, preprocessed as its metadata says.

    ``recipe_or_data``: a ``Recipe`` (its ``data`` and ``seed``) or a ``DataConfig`` (``seed`` then picks
    the ``test_subset`` rows, default 0). ``limit``: only the first ``limit`` test examples.
    ``preprocess``: a ``read_metadata``-style dict for a file that records none (else an error).
    ``runtime``: ``onnxruntime`` or ``openvino`` (then ``precision`` ``f32`` or ``bf16``: OpenVINO's
    inference precision, which a CPU without bf16 kernels runs as f32).
    """
    config, seed = _config_and_seed(recipe_or_data, seed)
    model_bytes = _bytes(onnx_path)
    meta = preprocess if preprocess is not None else read_metadata(model_bytes)
    run = _runner(model_bytes, runtime, precision)
    correct = total = 0
    for images, labels in raw_test_batches(config, seed, limit=limit):
        x = apply_preprocess(images, meta)
        try:
            logits = run(x)
        except Exception as error:  # the runtimes' own exception types
            raise UserError(f"{runtime} cannot run the model on preprocessed test images of shape {x.shape}: "
                             f"{first_line(error)}"
                             ) from error
        correct += int((logits.argmax(1) == labels).sum())
        total += len(labels)
    if total == 0:
        raise UserError(f"{config.name}: the test split is empty")
    return correct / total


def _bytes(source: str | Path | bytes | onnx.ModelProto) -> bytes:
    if isinstance(source, bytes):
        return source
    if isinstance(source, onnx.ModelProto):
        return source.SerializeToString()
    path = Path(source)
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file")
    return path.read_bytes()
