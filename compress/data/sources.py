"""The registered datasets: mnist, fashion_mnist, cifar10, imagefolder, synthetic."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from compress.data import locate
from compress.data.folder import find_tree, is_tarball, load_tree, resolve_folder_source
from compress.data.idx import download_idx, find_idx, idx_candidates, read_idx_set
from compress.data.locate import download_root, file_record, one_line, search_roots
from compress.data.registry import DatasetInfo, RawData, StreamData, register_dataset
from compress.errors import UserError
from compress.recipe.schema import DataConfig

MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TARBALL_NAMES = ("cifar10-jpg.tar.gz", "cifar10.tar.gz", "cifar10.tar")


def _searched(roots: list[Path], extra: list[Path], subfolders: tuple[str, ...] = ()) -> str:
    text = ", ".join(str(path) for path in roots)
    if subfolders:
        text += f" (each also with sub-folder {' or '.join(subfolders)})"
    return ", ".join([text, *(str(path) for path in extra)])


# --- MNIST family: original IDX files in place, torchvision download otherwise ---------------------

def _register_idx(name: str, dataset_class: str, folder_names: tuple[str, ...], classes: list[str],
                  mean: float, std: float, apt_hint: str | None) -> None:
    def folders(config: DataConfig) -> list[Path]:
        return idx_candidates(config, folder_names, locate.SYSTEM_DIRS.get(name, []))

    def searched(config: DataConfig) -> str:
        return _searched(search_roots(config), locate.SYSTEM_DIRS.get(name, []), folder_names)

    def find(config: DataConfig) -> tuple[bool, str]:
        files = find_idx(folders(config))
        if files:
            return True, str(files["train_images"].parent)
        if config.download:
            return False, f"{name}: not found (searched {searched(config)}); would download to " \
                          f"{download_root(config) / dataset_class}"
        return False, f"{name}: not found (searched {searched(config)}) and data.download is false"

    def load(config: DataConfig) -> RawData:
        files = find_idx(folders(config))
        if files:
            tensors, source = read_idx_set(files), str(files["train_images"].parent)
        else:
            tensors, source = download_idx(config, dataset_class, searched(config), apt_hint)
            files = find_idx([download_root(config) / dataset_class / "raw"])  # where torchvision put them
        for labels in (tensors[1], tensors[3]):
            if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < len(classes):
                raise UserError(f"{name}: labels in {source} fall outside 0..{len(classes) - 1}")
        records = [file_record(path) for path in files.values()] if files else []
        return RawData(*tensors, classes=list(classes), source=source, mean=(mean,), std=(std,), files=records)

    register_dataset(name, info=DatasetInfo(len(classes), 1, 28), find=find)(load)


_register_idx("mnist", "MNIST", ("MNIST/raw", "mnist"), MNIST_CLASSES, 0.1307, 0.3081, None)
_register_idx("fashion_mnist", "FashionMNIST", ("FashionMNIST/raw", "fashion-mnist", "fashion_mnist"),
              FASHION_MNIST_CLASSES, 0.2860, 0.3530, "apt-get install dataset-fashion-mnist")


# --- CIFAR-10: an ImageFolder copy (folder or tarball), torchvision's pickles, or a download ---------

def _cifar_source(config: DataConfig) -> tuple[str, Path] | None:
    for root in search_roots(config, "COMPRESS_CIFAR10"):
        for path in (root, root / "cifar10", *(root / name for name in TARBALL_NAMES)):
            if is_tarball(path):
                return "tarball", path
            if find_tree(path) is not None:
                return "folder", path
        if (root / "cifar-10-batches-py").is_dir():
            return "pickle", root
    return None


def _cifar_searched(config: DataConfig) -> str:
    return _searched(search_roots(config, "COMPRESS_CIFAR10"), [], ("cifar10/", *TARBALL_NAMES, "cifar-10-batches-py/"))


def _find_cifar10(config: DataConfig) -> tuple[bool, str]:
    found = _cifar_source(config)
    if found:
        return True, f"{found[1]} ({found[0]})"
    if config.download:
        return False, f"cifar10: not found (searched {_cifar_searched(config)}); would download to {download_root(config)}"
    return False, f"cifar10: not found (searched {_cifar_searched(config)}) and data.download is false"


def _cifar_torchvision(root: Path, download: bool) -> tuple[torch.Tensor, ...]:
    import torchvision.datasets as tvd

    parts = []
    for train in (True, False):
        dataset = tvd.CIFAR10(str(root), train=train, download=download)
        parts += [torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(dataset.targets)]
    return tuple(parts)


@register_dataset("cifar10", info=DatasetInfo(10, 3, 32), find=_find_cifar10)
def load_cifar10(config: DataConfig) -> RawData | StreamData:
    found = _cifar_source(config)
    if found and found[0] in ("tarball", "folder"):
        kind, path = found
        tree, record = resolve_folder_source(path, _stem(path) if kind == "tarball" else "cifar10")
        raw = load_tree(tree, "cifar10", None, source=str(path))
        raw.files = [record]
    else:
        root = found[1] if found else download_root(config)
        if not found and not config.download:
            raise UserError(f"cifar10: not found (searched {_cifar_searched(config)}) and data.download is false; "
                             "set data.root or $COMPRESS_CIFAR10 to an ImageFolder copy (folder or .tar.gz)")
        try:
            tensors = _cifar_torchvision(root, download=not found)
        except Exception as exc:  # torchvision raises RuntimeError / URLError / OSError depending on the failure
            raise UserError(f"cifar10: not found (searched {_cifar_searched(config)}) and loading from {root} failed "
                             f"({one_line(exc)}); set data.root or $COMPRESS_CIFAR10 to an ImageFolder copy "
                             "(folder or .tar.gz)") from exc
        batches = root / "cifar-10-batches-py"
        files = sorted(p for p in batches.iterdir() if p.is_file()) if batches.is_dir() else []
        raw = RawData(*tensors, classes=list(CIFAR10_CLASSES), source=f"{root} (torchvision)",
                      files=[file_record(p) for p in files])
    if raw.classes != CIFAR10_CLASSES:
        raise UserError(f"{raw.source} does not look like CIFAR-10 (classes {', '.join(raw.classes[:12])}); "
                         "use data.name: imagefolder for other image folders")
    raw.mean, raw.std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    return raw


# --- any ImageFolder tree or tarball of one ---------------------------------------------------------

def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar"):
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return name


def _imagefolder_path(config: DataConfig) -> Path:
    location = config.root or os.environ.get("COMPRESS_DATA")
    if not location:
        raise UserError("imagefolder needs data.root (or $COMPRESS_DATA): a folder with train/ and test/ (or val/) "
                         "class folders, or a .tar/.tar.gz of one")
    path = Path(location).expanduser()
    if not path.exists():
        raise UserError(f"imagefolder: data.root {path} does not exist")
    return path


def _find_imagefolder(config: DataConfig) -> tuple[bool, str]:
    try:
        path = _imagefolder_path(config)
    except ValueError as exc:
        return False, str(exc)
    if is_tarball(path):
        return True, f"{path} (tarball, extracted on first load)"
    if find_tree(path) is not None:
        return True, str(find_tree(path))
    return False, f"imagefolder: {path} is neither a .tar/.tar.gz nor a folder with train/ and test/ (or val/)"


@register_dataset("imagefolder", info=DatasetInfo(None, None, None), find=_find_imagefolder)
def load_imagefolder(config: DataConfig) -> RawData | StreamData:
    path = _imagefolder_path(config)
    tree, record = resolve_folder_source(path, _stem(path))
    raw = load_tree(tree, _stem(path), config.image_size, source=str(path))
    raw.files = [record]
    return raw


# --- synthetic: tiny, learnable, identical on every machine -------------------------------------------

SYNTHETIC_CLASSES = 10
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 800, 200


@register_dataset("synthetic", info=DatasetInfo(SYNTHETIC_CLASSES, 1, 28))
def load_synthetic(config: DataConfig) -> RawData:
    """Class c = a smooth random pattern of its own plus noise, so small models fit it in a few steps.

    The content is fixed (its own generator, not the run seed), like a real dataset: the run seed
    decides only the validation split and the batch order.
    """
    size = config.image_size or 28
    generator = torch.Generator().manual_seed(20240229)
    coarse = torch.randn(SYNTHETIC_CLASSES, 1, 7, 7, generator=generator)
    patterns = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % SYNTHETIC_CLASSES
        labels = labels[torch.randperm(n, generator=generator)]
        noise = torch.randn(n, 1, size, size, generator=generator)
        images = (128 + 45 * patterns[labels] + 35 * noise).round().clamp(0, 255).to(torch.uint8)
        return images, labels

    train_images, train_labels = make(SYNTHETIC_TRAIN)
    test_images, test_labels = make(SYNTHETIC_TEST)
    return RawData(train_images, train_labels, test_images, test_labels,
                   classes=[f"class_{i}" for i in range(SYNTHETIC_CLASSES)], source="synthetic (generated)")
