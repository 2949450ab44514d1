"""What a loaded dataset was made from: ``DataSplits.identity`` / ``identity_hash``, for resume safety.

The identity names the dataset, the files actually read (resolved paths) with a cheap fingerprint of
each, and the split parameters. Two loads of the same files with the same parameters give equal
identities; another copy, a changed byte in an IDX file, another tarball or another seed do not.

Files are fingerprinted by content (``compress.data.locate.content_digest``: whole up to 1 GiB, sampled
blocks above), never by mtime: a dataset copied, re-downloaded or re-provided is the same source, so its
runs resume. A folder is taken by its listing, every file's relative path and size
(``compress.data.folder.tree_signature``, which keys its tensor cache too): hashing an image tree would
read all of it. Data a registered loader does not describe is fingerprinted from its
shapes, all labels and a strided sample of its images.
"""

from __future__ import annotations

import hashlib
import json

import torch

from compress.data.registry import RawData, StreamData
from compress.recipe.schema import DataConfig

IDENTITY_FORMAT = 1
CONTENT_KEYS = {"sha256", "sampled_sha256", "listing_sha256"}
_SAMPLED_IMAGES = 256  # images per split hashed when no files are known


def _tensor_digest(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(f"{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        n = tensor.shape[0] if tensor.dim() else 0
        if tensor.dim() > 1 and n > _SAMPLED_IMAGES:
            tensor = tensor[torch.linspace(0, n - 1, _SAMPLED_IMAGES).round().long()]
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _content(raw: RawData | StreamData) -> dict:
    """The fingerprint of data whose loader named no files."""
    if isinstance(raw, StreamData):
        listing = json.dumps([raw.train, raw.test]).encode()
        return {"file_list_sha256": hashlib.sha256(listing).hexdigest()}
    return {"sampled_sha256": _tensor_digest(raw.train_images, raw.train_labels, raw.test_images, raw.test_labels)}


def data_identity(config: DataConfig, seed: int, raw: RawData | StreamData, num_test: int) -> dict:
    """JSON-ready identity of ``raw`` loaded with ``config`` and ``seed``."""
    identity: dict = {"format": IDENTITY_FORMAT, "dataset": config.name}
    if raw.files:
        identity["files"] = [dict(record) for record in raw.files]
    else:
        identity["content"] = _content(raw)
    identity["classes"] = list(raw.classes)
    identity["examples"] = {"train": raw.num_train, "test": num_test}
    identity["split"] = {"validation_size": config.validation_size, "train_subset": config.train_subset,
                         "test_subset": config.test_subset, "image_size": config.image_size, "seed": seed}
    return identity


def identity_hash(identity: dict) -> str:
    """16 hex digits of the SHA-256 of the identity as canonical JSON.

    A file (or folder listing) counts by its content alone, so the same files moved to another folder
    (another ``data.root``) are the same source.
    """
    files = [{k: v for k, v in record.items() if not (k == "path" and CONTENT_KEYS & set(record))}
             for record in identity.get("files", [])]
    text = json.dumps({**identity, "files": files}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
