"""Datasets by name: ``load_dataset(config, seed, device)`` -> train / val / test splits on the device.

Registered: ``mnist``, ``fashion_mnist``, ``cifar10``, ``imagefolder``, ``synthetic``
(``list_datasets()``); add more with ``register_dataset``.
"""

from compress.data import sources as _sources  # noqa: F401  (registers the built-in datasets)
from compress.data.load import load_dataset
from compress.data.registry import (
    DATASETS,
    DatasetInfo,
    RawData,
    StreamData,
    dataset_info,
    find_data,
    list_datasets,
    register_dataset,
)
from compress.data.stream import FolderSplit
from compress.data.tensors import DataSplits, Split, TensorSplit

__all__ = [
    "DATASETS",
    "DataSplits",
    "DatasetInfo",
    "FolderSplit",
    "RawData",
    "Split",
    "StreamData",
    "TensorSplit",
    "dataset_info",
    "find_data",
    "list_datasets",
    "load_dataset",
    "register_dataset",
]
