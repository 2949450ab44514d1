"""What an exported model expects as input, written into the ONNX file, read back, and applied to raw images.

The toolkit trains on ``(pixel / 255 - mean) / std`` (``compress.data.tensors.normalise``), with mean and
std per channel taken from the dataset's loader (the published constants for MNIST, Fashion-MNIST and
CIFAR-10) or computed on the training split (``DataSplits.mean`` / ``std``). A bare ONNX file does not say
so, and fed raw pixels in [0, 1] it scores far below the run's accuracy. So every export records it:

* ``export.preprocess: metadata`` (default): the graph takes normalised float32 NCHW tensors, and the file's
  ``metadata_props`` (and ``export.json``) hold the recipe to get there from raw pixels;
* ``export.preprocess: embed``: a ``Sub`` / ``Div`` pair in front of the graph normalises, so the graph takes
  images as float32 in [0, 1] (``pixel / 255``); the metadata is written too and says so.

Resizing (``data.image_size`` differing from the dataset's side) is never embedded: it is recorded as
``resize`` and ``apply_preprocess`` does it with the toolkit's own bilinear, antialiased resize.

Metadata keys (every value a string; lists and objects as JSON): ``compress.preprocess`` (``metadata`` |
``embedded``), ``dataset``, ``classes``, ``mean``, ``std``, ``layout`` (``NCHW``), ``input_shape`` (one
example, C x H x W; the batch dimension is dynamic), ``input_dtype``, ``input_range`` (what the graph input
holds), ``raw_dtype`` / ``raw_range`` (the dataset's pixels), ``pixel_scale`` (255), ``resize`` (null or
``{"side": N, "mode": "bilinear", "antialias": true}``), ``formula``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compress.errors import UserError
from compress.registry import PREPROCESS_MODES

MODES = ("metadata", "embed")
for _mode, _what in zip(MODES, ("normalisation recorded in the metadata_props", "normalisation embedded in the graph"),
                        strict=True):
    PREPROCESS_MODES.register(_mode)(_what)
MODE_KEY = "compress.preprocess"
PIXEL_SCALE = 255.0
_NORMALISED = "normalised"  # suffix of the graph's original input once preprocessing is embedded in front


@dataclass(frozen=True)
class Preprocess:
    """How raw dataset pixels (uint8, N x C x H x W) become the exported graph's input."""

    dataset: str
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_shape: tuple[int, int, int]  # C x H x W the model takes
    resize_to: int | None = None  # data.image_size: raw images are resized to this side first
    embedded: bool = False

    def metadata(self) -> dict[str, str]:
        """The ``metadata_props`` entries (module docstring)."""
        resize = None
        if self.resize_to is not None:
            resize = {"side": self.resize_to, "mode": "bilinear", "antialias": True}
        return {
            MODE_KEY: "embedded" if self.embedded else "metadata",
            "dataset": self.dataset,
            "classes": json.dumps(list(self.classes)),
            "mean": json.dumps([float(m) for m in self.mean]),
            "std": json.dumps([float(s) for s in self.std]),
            "layout": "NCHW",
            "input_shape": json.dumps(list(self.input_shape)),
            "input_dtype": "float32",
            "input_range": "[0, 1]" if self.embedded else "normalised: (pixel / 255 - mean) / std",
            "raw_dtype": "uint8",
            "raw_range": "[0, 255]",
            "pixel_scale": json.dumps(PIXEL_SCALE),
            "resize": json.dumps(resize),
            "formula": ("x = resize(pixel) / 255, float32 NCHW; the graph normalises" if self.embedded else
                        "x = (resize(pixel) / 255 - mean[c]) / std[c], float32 NCHW"),
        }

    def with_embedded(self, embedded: bool) -> Preprocess:
        return Preprocess(self.dataset, self.classes, self.mean, self.std, self.input_shape, self.resize_to,
                          embedded)


def preprocess_from_data(name: str, data, input_shape: tuple[int, ...] | None = None, embedded: bool = False,
                         resize_to: int | None = None) -> Preprocess:
    """From loaded ``DataSplits`` (``compress.data.load_dataset``): its mean / std are what training used.

    ``resize_to``: the recipe's ``data.image_size`` (None: images are used at their native size).
    """
    if not data.mean or not data.std:
        raise UserError(f"{name}: the loaded data records no normalisation mean / std")
    side = data.image_size
    shape = tuple(input_shape) if input_shape is not None else (data.in_channels, side, side)
    return Preprocess(dataset=name, classes=tuple(data.classes), mean=tuple(data.mean), std=tuple(data.std),
                      input_shape=(int(shape[0]), int(shape[1]), int(shape[2])), resize_to=resize_to,
                      embedded=embedded)


def add_metadata(proto: onnx.ModelProto, preprocess: Preprocess) -> onnx.ModelProto:
    """Write (replace) the preprocessing entries of ``proto.metadata_props``; returns ``proto``."""
    entries = preprocess.metadata()
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in entries]
    del proto.metadata_props[:]
    for key, value in [*kept, *entries.items()]:
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, value
    return proto


def copy_metadata(source: onnx.ModelProto, target: onnx.ModelProto) -> onnx.ModelProto:
    """Carry every ``metadata_props`` entry of ``source`` over to ``target`` (a quantizer drops them)."""
    have = {p.key for p in target.metadata_props}
    for prop in source.metadata_props:
        if prop.key not in have:
            new = target.metadata_props.add()
            new.key, new.value = prop.key, prop.value
    return target


def embed_normalisation(proto: onnx.ModelProto, mean: tuple[float, ...], std: tuple[float, ...]) -> onnx.ModelProto:
    """A copy of ``proto`` whose input takes ``pixel / 255`` and normalises it with a Sub and a Div in front.

    The graph input keeps its name, type and dynamic batch; the old input becomes an inner tensor.
    """
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    if len(graph.input) != 1:
        raise UserError(f"export.preprocess: embed needs a single-input graph, this one has {len(graph.input)}")
    name = graph.input[0].name
    inner = f"{name}_{_NORMALISED}"
    for node in graph.node:
        for i, value in enumerate(node.input):
            if value == name:
                node.input[i] = inner
    channels = len(mean)
    shape = (1, channels, 1, 1)
    graph.initializer.extend([
        numpy_helper.from_array(np.asarray(mean, dtype=np.float32).reshape(shape), f"{name}_mean"),
        numpy_helper.from_array(np.asarray(std, dtype=np.float32).reshape(shape), f"{name}_std"),
    ])
    nodes = [helper.make_node("Sub", [name, f"{name}_mean"], [f"{name}_centred"], name="preprocess_sub_mean"),
             helper.make_node("Div", [f"{name}_centred", f"{name}_std"], [inner], name="preprocess_div_std")]
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + existing)
    return model


def read_metadata(source: str | Path | onnx.ModelProto | bytes | object) -> dict[str, object]:
    """The preprocessing recorded in an ONNX file (path, bytes, ModelProto or onnxruntime session), decoded.

    Returns ``mode`` (``metadata`` | ``embedded``), ``mean``, ``std`` (lists), ``input_shape``, ``classes``,
    ``resize`` (None or a dict), ``dataset``, ``layout``, ``input_dtype``, ``input_range``, ``pixel_scale``.
    """
    if hasattr(source, "get_modelmeta"):  # an onnxruntime InferenceSession
        props = dict(source.get_modelmeta().custom_metadata_map)
        what = "the session's model"
    else:
        if isinstance(source, onnx.ModelProto):
            proto, what = source, "model"
        elif isinstance(source, bytes):
            proto, what = onnx.load_from_string(source), "model bytes"
        else:
            path = Path(source)
            if not path.is_file():
                raise UserError(f"{path}: no such ONNX file")
            proto, what = onnx.load(str(path), load_external_data=False), str(path)
        props = {p.key: p.value for p in proto.metadata_props}
    if MODE_KEY not in props:
        raise UserError(f"{what}: records no preprocessing (no {MODE_KEY!r} in metadata_props); "
                         "re-export it with this version of compress")
    try:
        return {
            "mode": props[MODE_KEY],
            "dataset": props.get("dataset"),
            "classes": json.loads(props.get("classes", "[]")),
            "mean": [float(v) for v in json.loads(props["mean"])],
            "std": [float(v) for v in json.loads(props["std"])],
            "layout": props.get("layout", "NCHW"),
            "input_shape": [int(v) for v in json.loads(props["input_shape"])],
            "input_dtype": props.get("input_dtype", "float32"),
            "input_range": props.get("input_range"),
            "pixel_scale": float(json.loads(props.get("pixel_scale", "255"))),
            "resize": json.loads(props.get("resize", "null")),
        }
    except (KeyError, ValueError, TypeError) as error:
        raise UserError(f"{what}: damaged preprocessing metadata ({error})") from error


def apply_preprocess(images: np.ndarray, meta: dict) -> np.ndarray:
    """Raw pixels -> the graph's input as ``meta`` (``read_metadata``) says.

    ``images``: uint8 (or float in 0..255) N x C x H x W, or N x H x W for one channel. Returns float32
    N x C x H x W: ``pixel / 255`` resized to the model's side, then normalised unless the graph does it.
    """
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise UserError(f"apply_preprocess takes N x C x H x W (or N x H x W) images, got shape {x.shape}")
    channels = len(meta["mean"])
    if x.shape[1] != channels:
        raise UserError(f"apply_preprocess: images have {x.shape[1]} channels, the model takes {channels} "
                         f"(layout {meta['layout']}: channels second)")
    x = x.astype(np.float32) / np.float32(meta["pixel_scale"])
    side = meta["input_shape"][1]
    if x.shape[-2:] != (side, side):
        x = _resize(x, side)
    if meta["mode"] == "embedded":
        return np.ascontiguousarray(x, dtype=np.float32)
    mean = np.asarray(meta["mean"], dtype=np.float32).reshape(1, channels, 1, 1)
    std = np.asarray(meta["std"], dtype=np.float32).reshape(1, channels, 1, 1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def _resize(x: np.ndarray, side: int) -> np.ndarray:
    """The toolkit's resize (``compress.data.tensors.resize``: bilinear, antialiased), so results match."""
    import torch

    from compress.data.tensors import resize

    return resize(torch.from_numpy(np.ascontiguousarray(x)), side).numpy()
