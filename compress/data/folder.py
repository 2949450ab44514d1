"""ImageFolder trees (train/ + test/ or val/): tarball extraction, scanning, decoding, tensor cache."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from compress.data.locate import content_digest, decoded_dir, extracted_dir, file_record, one_line, short_hash
from compress.data.registry import RawData, StreamData, memory_limit
from compress.errors import UserError
from compress.io import save_torch

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
TARBALL_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
TEST_DIRS = ("test", "val")
CACHE_FORMAT = 1
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def is_tarball(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(TARBALL_SUFFIXES)


def _test_dir(folder: Path) -> Path | None:
    return next((folder / name for name in TEST_DIRS if (folder / name).is_dir()), None)


def find_tree(folder: Path) -> Path | None:
    """``folder`` if it holds train/ and test/ (or val/), or its single sub-folder that does."""
    if not folder.is_dir():
        return None
    if (folder / "train").is_dir() and _test_dir(folder):
        return folder
    subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subdirs) == 1 and (subdirs[0] / "train").is_dir() and _test_dir(subdirs[0]):
        return subdirs[0]
    return None


def extraction_target(tarball: Path, name: str, digest: tuple[str, str] | None = None) -> Path:
    """The cache folder of one tarball's content: a copy of the same bytes (another path or mtime) reuses it.
    ``digest``: the tarball's ``content_digest`` when already computed."""
    return extracted_dir() / f"{name}-{(digest or content_digest(tarball))[1][:16]}"


def _temp_tag() -> str:
    """This machine and process: a stale temp folder names its owner, so a later run can tell it is dead."""
    return f"{short_hash(socket.gethostname(), length=8)}-{os.getpid()}"


def _temp_pattern(target: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(target.name)}\.extracting-([0-9a-f]{{8}})-(\d+)-[0-9a-f]{{8}}\.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's live process
        return True
    return True


def remove_stale_extractions(target: Path) -> list[Path]:
    """Delete temp folders of ``target`` left by a killed extraction on this machine (owner pid gone).

    Only folders named by ``extract_tarball`` for this same cache entry are considered; those of live
    processes, or of other machines sharing the cache, are left alone.
    """
    if not target.parent.is_dir():
        return []
    host = _temp_tag().split("-")[0]
    pattern, removed = _temp_pattern(target), []
    for path in target.parent.iterdir():
        match = pattern.fullmatch(path.name)
        if match and match.group(1) == host and path.is_dir() and not path.is_symlink() \
                and not _alive(int(match.group(2))):
            log.info("removing %s, left by a killed extraction (process %s)", path, match.group(2))
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def extract_tarball(tarball: Path, name: str, digest: tuple[str, str] | None = None) -> Path:
    """Extract once into the cache (temp folder beside it, then one rename); return the tree in it."""
    target = extraction_target(tarball, name, digest)
    remove_stale_extractions(target)
    if target.is_dir():
        tree = find_tree(target)
        if tree is None:
            raise UserError(f"cache folder {target} holds no train/ and test/ folders; delete it and retry")
        return tree
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.extracting-{_temp_tag()}-{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    log.info("extracting %s into %s (once)", tarball, target)
    try:
        with tarfile.open(tarball) as archive:
            if hasattr(tarfile, "data_filter"):
                archive.extractall(tmp, filter="data")  # refuses absolute paths, '..' and device files
            else:  # Python < 3.10.12 / 3.11.4
                _check_members(archive, tarball)
                archive.extractall(tmp)
        if find_tree(tmp) is None:
            raise UserError(f"{tarball} holds no train/ and test/ (or val/) image folders")
        try:
            os.replace(tmp, target)
        except OSError:
            if find_tree(target) is None:  # not a lost race with another process extracting the same file
                raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise UserError(f"cannot extract {tarball}: {one_line(exc)} (truncated or corrupt archive?); "
                         f"replace the file or point data.root at an extracted folder") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return find_tree(target)  # type: ignore[return-value]


def _check_members(archive: tarfile.TarFile, tarball: Path) -> None:
    for member in archive.getmembers():
        parts = Path(member.name).parts
        if member.name.startswith("/") or ".." in parts or not (member.isfile() or member.isdir()):
            raise UserError(f"{tarball} has an unsafe member {member.name!r}; refusing to extract it")


@dataclass
class FolderTree:
    root: Path
    classes: list[str]
    train: list[tuple[str, int]]
    test: list[tuple[str, int]]


def _images(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.path for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


def scan_tree(tree: Path) -> FolderTree:
    """Class folders of train/ (sorted, like torchvision's ImageFolder) and the files in each."""
    train_dir, test_dir = tree / "train", _test_dir(tree)
    if not train_dir.is_dir() or test_dir is None:
        raise UserError(f"{tree} needs train/ and test/ (or val/) sub-folders with one folder per class")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{train_dir} has no class folders")
    extra = sorted({p.name for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith(".")} - set(classes))
    if extra:
        raise UserError(f"{test_dir} has classes missing from train/: {', '.join(extra)}")
    train = [(path, label) for label, c in enumerate(classes) for path in _images(train_dir / c)]
    test = [(path, label) for label, c in enumerate(classes) if (test_dir / c).is_dir()
            for path in _images(test_dir / c)]
    if not train:
        raise UserError(f"{train_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    if not test:
        raise UserError(f"{test_dir} holds no images in class folders named like train/'s ({', '.join(classes[:5])}"
                         f"{', ...' if len(classes) > 5 else ''}); put the test images there")
    return FolderTree(tree, classes, train, test)


class ImageDecodeError(UserError):
    """An image file that cannot be read or decoded; ``path`` is the file, ``reason`` the decoder's words.

    Constructible from the message alone: DataLoader workers re-raise exceptions that way.
    """

    def __init__(self, message: str, path: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.path, self.reason = path, reason

    @classmethod
    def of(cls, path: str, exc: BaseException) -> ImageDecodeError:
        reason = one_line(exc)
        return cls(f"cannot decode image {path} ({reason}); it is truncated or corrupt: replace or delete it",
                   str(path), reason)

    def inside(self, tree: Path | None, source: str) -> ImageDecodeError:
        """The same failure naming the file as a member of the tarball it was extracted from."""
        if self.path is None or tree is None or not is_tarball(Path(source)):
            return self  # a user's folder: the full path is where the file is
        path = Path(self.path)
        try:  # the extraction folder's contents are the archive's members
            member = Path(*path.relative_to(extracted_dir()).parts[1:]).as_posix()
        except ValueError:
            try:
                member = path.relative_to(tree).as_posix()
            except ValueError:
                return self
        return ImageDecodeError(f"cannot decode image {member} in {source} ({self.reason}); it is truncated or "
                                f"corrupt: replace or delete it in the archive (extracted copy: {path})",
                                self.path, self.reason)


def _decode_failures() -> tuple[type[BaseException], ...]:
    from PIL import Image

    # OSError: truncated / unidentified / missing; SyntaxError, ValueError: some PIL plugins on bad headers
    return OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError


def probe(path: str) -> tuple[int, int, int]:
    """(channels, height, width) of one image from its header."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return (1 if image.mode in _GRAY_MODES else 3), image.height, image.width
    except _decode_failures() as exc:
        raise ImageDecodeError.of(path, exc) from exc


def decode_file(path: str, channels: int, size: int | None) -> Tensor:
    """One image as uint8 C x H x W (resized to size x size when given)."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    try:  # torchvision's decoders are faster than PIL (read_file: older torchvision takes no path here)
        image = decode_image(read_file(path), mode=mode)
    except (RuntimeError, ValueError, TypeError):
        image = None
    if image is None or image.dtype != torch.uint8:  # formats torchvision does not decode (bmp, tiff, 16-bit)
        from PIL import Image

        try:
            with Image.open(path) as pil:
                array = np.asarray(pil.convert("L" if channels == 1 else "RGB"))
        except _decode_failures() as exc:
            raise ImageDecodeError.of(path, exc) from exc
        image = torch.from_numpy(array.copy()).view(array.shape[0], array.shape[1], -1).permute(2, 0, 1)
    if size is not None and tuple(image.shape[1:]) != (size, size):
        resized = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", align_corners=False,
                                antialias=True)
        image = resized.round_().clamp_(0, 255).to(torch.uint8)[0]
    return image.contiguous()


def decode_samples(samples: list[tuple[str, int]], channels: int, size: int | None,
                   shape: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """All images of a list into one uint8 N x C x H x W tensor; sizes must agree unless resized."""
    height, width = (size, size) if size is not None else shape
    images = torch.empty((len(samples), channels, height, width), dtype=torch.uint8)
    for i, (path, _) in enumerate(samples):
        image = decode_file(path, channels, size)
        if tuple(image.shape[1:]) != (height, width):
            raise UserError(f"images differ in size ({path} is {image.shape[2]}x{image.shape[1]}, others "
                             f"{width}x{height}); set data.image_size to resize them")
        images[i] = image
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return images, labels


def tensor_cache_file(tree: Path, name: str, size: int | None) -> Path:
    """Beside the extraction folder for a tarball; under the decoded cache for a user's folder.

    A user's folder is keyed by its path and its listing (``tree_signature``), which changes when a file is
    added, removed, renamed or resized (not when one is rewritten in place at its size: delete the cache then).
    """
    tag = f"u8-{size or 'native'}.pt"
    try:
        relative = tree.resolve().relative_to(extracted_dir().resolve())
        return extracted_dir() / f"{relative.parts[0]}.{tag}"
    except ValueError:
        pass
    return decoded_dir() / f"{name}-{short_hash(tree.resolve(), tree_signature(tree))}.{tag}"


def tree_signature(tree: Path) -> str:
    """sha256 of every file's path (relative to ``tree``) and size, in order; not of mtimes, so a copy of the
    folder (``cp -r`` gives new ones) is the same data. Stats each file once: cheap beside decoding them."""
    digest = hashlib.sha256()
    splits = dict.fromkeys([tree / "train", _test_dir(tree) or tree])
    for split in splits:
        for root, dirs, files in os.walk(split):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(f for f in files if not f.startswith(".")):
                path = Path(root) / name
                digest.update(f"{path.relative_to(tree).as_posix()}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def tree_record(tree: Path) -> dict:
    """A user's folder for ``DataSplits.identity``: its path and ``tree_signature`` (which also keys its tensor
    cache); the signature, not the path, is what counts (``compress.data.identity.identity_hash``)."""
    return {"path": str(tree.resolve()), "listing_sha256": tree_signature(tree)}


def _read_cache(path: Path) -> dict | None:
    keys = {"format", "classes", "train_images", "train_labels", "test_images", "test_labels"}
    try:
        cached = torch.load(path, weights_only=True, mmap=True)
    except Exception as exc:  # a damaged cache is rebuilt, never trusted
        log.warning("ignoring unreadable data cache %s (%s)", path, one_line(exc))
        return None
    if not isinstance(cached, dict) or set(cached) != keys or cached["format"] != CACHE_FORMAT:
        return None
    return cached


def load_tree(tree: Path, name: str, size: int | None, source: str) -> RawData | StreamData:
    """Decode a tree once into a uint8 tensor cache (atomic write), or stream it when too large."""
    cache = tensor_cache_file(tree, name, size)
    cached = _read_cache(cache) if cache.is_file() else None
    if cached is not None and cached["train_images"].numel() * 4 <= memory_limit():
        return RawData(cached["train_images"], cached["train_labels"], cached["test_images"], cached["test_labels"],
                       list(cached["classes"]), source)
    scanned = scan_tree(tree)
    try:
        return _decode_tree(scanned, tree, name, size, source, cache)
    except ImageDecodeError as exc:
        raise exc.inside(tree, source) from exc


def _decode_tree(scanned: FolderTree, tree: Path, name: str, size: int | None, source: str,
                 cache: Path) -> RawData | StreamData:
    channels, height, width = probe(scanned.train[0][0])
    side_h, side_w = (size, size) if size is not None else (height, width)
    if size is None and height != width:
        raise UserError(f"images in {tree} are not square ({width}x{height}); set data.image_size")
    if len(scanned.train) * channels * side_h * side_w * 4 > memory_limit():
        if size is None:
            raise UserError(f"{tree} is too large to hold in memory; set data.image_size so it can be streamed")
        return StreamData(scanned.train, scanned.test, scanned.classes, source, channels, size, tree=tree)
    log.info("decoding %d images from %s (once; cached at %s)", len(scanned.train) + len(scanned.test), tree, cache)
    train_images, train_labels = decode_samples(scanned.train, channels, size, (height, width))
    test_images, test_labels = decode_samples(scanned.test, channels, size, (height, width))
    save_torch({"format": CACHE_FORMAT, "classes": scanned.classes, "train_images": train_images,
                "train_labels": train_labels, "test_images": test_images, "test_labels": test_labels}, cache)
    return RawData(train_images, train_labels, test_images, test_labels, scanned.classes, source)


def resolve_folder_source(path: Path, name: str) -> tuple[Path, dict]:
    """A tree folder, or a tarball extracted once into the cache: the tree, and the record that identifies the
    data (the tarball's ``file_record``, hashed once for both, or the folder's ``tree_record``)."""
    if is_tarball(path):
        digest = content_digest(path)
        return extract_tarball(path, name, digest), file_record(path, digest)
    tree = find_tree(path)
    if tree is None:
        raise UserError(f"{path} is neither a .tar/.tar.gz nor a folder with train/ and test/ (or val/) sub-folders")
    return tree, tree_record(tree)
