"""ImageFolder trees and tarballs: extraction once, corrupt archives, decoding, streaming."""

from __future__ import annotations

import io
import itertools
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from compress.data import FolderSplit, TensorSplit, find_data, load_dataset
from compress.errors import UserError
from compress.recipe.schema import DataConfig

CLASSES = ("cat", "dog", "emu")


def make_tree(root: Path, n_train: int = 6, n_test: int = 2, size: int = 12, mode: str = "RGB",
              test_name: str = "test") -> Path:
    """PNG files whose colour depends on the class, so labels can be checked from pixels."""
    generator = torch.Generator().manual_seed(0)
    for part, n in (("train", n_train), (test_name, n_test)):
        for label, name in enumerate(CLASSES):
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                channels = 1 if mode == "L" else 3
                pixels = torch.randint(0, 40, (size, size, channels), generator=generator) + 100 * label
                array = pixels.to(torch.uint8).numpy()
                Image.fromarray(array[..., 0] if mode == "L" else array, mode).save(folder / f"{i:04d}.png")
    return root


def make_tarball(tree: Path, path: Path, top: str | None = None) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for part in sorted(tree.iterdir()):
            archive.add(part, arcname=f"{top}/{part.name}" if top else part.name)
    return path


def extracted(cache: Path) -> list[str]:
    folder = cache / "compress" / "extracted"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def tarball(tmp_path: Path) -> Path:
    return make_tarball(make_tree(tmp_path / "tree"), tmp_path / "tiny-folder.tar.gz", top="tiny")


def test_imagefolder_tarball_is_extracted_once_and_decoded_once(tarball, data_env, monkeypatch):
    config = DataConfig(name="imagefolder", root=str(tarball), validation_size=3)
    available, where = find_data(config)
    assert available and str(tarball) in where and extracted(data_env) == []  # find_data never extracts
    splits = load_dataset(config, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 3, 6)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (3, 3, 12)
    assert splits.classes == list(CLASSES) and splits.source == str(tarball)
    names = extracted(data_env)
    assert len(names) == 2 and names[0].startswith("tiny-folder-") and names[1].endswith(".u8-native.pt")
    # labels follow the class folders: class c has pixel values around 100 * c
    pixels = splits.test.images * torch.tensor(splits.std).view(1, 3, 1, 1) + torch.tensor(splits.mean).view(1, 3, 1, 1)
    assert torch.equal((pixels.mean((1, 2, 3)) * 255 / 100).floor().long(), splits.test.labels)

    def no_extraction(*args, **kwargs):
        raise AssertionError("extracted twice")

    monkeypatch.setattr(tarfile, "open", no_extraction)
    monkeypatch.setattr("compress.data.folder.decode_samples", no_extraction)
    again = load_dataset(config, seed=0)
    assert torch.equal(again.train.images, splits.train.images)


def test_truncated_tarball_is_a_clear_error_and_leaves_no_cache(tarball, data_env, tmp_path):
    truncated = tmp_path / "broken.tar.gz"
    truncated.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])
    with pytest.raises(ValueError) as error:
        load_dataset(DataConfig(name="imagefolder", root=str(truncated)), seed=0)
    message = str(error.value)
    assert "\n" not in message and str(truncated) in message and "truncated or corrupt" in message
    assert extracted(data_env) == []


def test_tarball_without_train_and_test_leaves_no_cache(tmp_path, data_env):
    (tmp_path / "loose").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "loose" / "a.png")
    archive = make_tarball(tmp_path / "loose", tmp_path / "loose.tar")
    with pytest.raises(ValueError, match="no train/ and test/"):
        load_dataset(DataConfig(name="imagefolder", root=str(archive)), seed=0)
    assert extracted(data_env) == []


def test_unsafe_tarball_member_is_refused(tmp_path, data_env):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as handle:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 2
        handle.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(ValueError, match="cannot extract"):
        load_dataset(DataConfig(name="imagefolder", root=str(archive)), seed=0)
    assert not (tmp_path / "escape.txt").exists() and extracted(data_env) == []


def test_grayscale_folder_with_val_and_resize(tmp_path, data_env):
    tree = make_tree(tmp_path / "gray", mode="L", test_name="val")
    splits = load_dataset(DataConfig(name="imagefolder", root=str(tree), validation_size=0, image_size=8), seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 0, 6)
    assert splits.in_channels == 1 and splits.image_size == 8 and splits.train.images.shape[1:] == (1, 8, 8)
    assert len(list((data_env / "compress" / "decoded").glob("gray-*.u8-8.pt"))) == 1


def test_mixed_sizes_need_image_size(tmp_path, data_env):
    tree = make_tree(tmp_path / "mixed")
    Image.new("RGB", (20, 20)).save(tree / "train" / "dog" / "big.png")
    config = DataConfig(name="imagefolder", root=str(tree), validation_size=2)
    with pytest.raises(ValueError, match="set data.image_size"):
        load_dataset(config, seed=0)
    splits = load_dataset(DataConfig(name="imagefolder", root=str(tree), validation_size=2, image_size=12), seed=0)
    assert len(splits.train) + len(splits.val) == 19


def test_missing_or_wrong_root_is_a_clear_error(tmp_path, data_env):
    with pytest.raises(ValueError, match="needs data.root"):
        load_dataset(DataConfig(name="imagefolder"), seed=0)
    with pytest.raises(ValueError, match="does not exist"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path / "nope")), seed=0)
    with pytest.raises(ValueError, match="train/ and test/"):
        load_dataset(DataConfig(name="imagefolder", root=str(tmp_path)), seed=0)
    assert find_data(DataConfig(name="imagefolder", root=str(tmp_path)))[0] is False


def test_large_folders_stream_with_the_same_batches(tmp_path, data_env, monkeypatch):
    tree = make_tree(tmp_path / "big")
    config = DataConfig(name="imagefolder", root=str(tree), validation_size=3, image_size=12)
    in_memory = load_dataset(config, seed=0)
    monkeypatch.setenv("COMPRESS_DATA_MEMORY_LIMIT", "1")
    monkeypatch.setenv("COMPRESS_WORKERS", "0")
    streamed = load_dataset(config, seed=0)
    assert isinstance(streamed.train, FolderSplit) and isinstance(in_memory.train, TensorSplit)
    assert (len(streamed.train), len(streamed.val), len(streamed.test)) == (15, 3, 6)
    assert streamed.mean == pytest.approx(in_memory.mean) and streamed.std == pytest.approx(in_memory.std)
    for augment in (False, True):
        a = list(itertools.islice(in_memory.train.batches(4, seed=1, start=2, augment=augment), 5))
        b = list(itertools.islice(streamed.train.batches(4, seed=1, start=2, augment=augment), 5))
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(ya, yb)
            torch.testing.assert_close(xa, xb)
    for (xa, ya), (xb, yb) in zip(in_memory.test.eval_batches(4), streamed.test.eval_batches(4), strict=True):
        assert torch.equal(ya, yb)
        torch.testing.assert_close(xa, xb)


def test_cifar10_missing_offline_is_one_line(tmp_path, data_env, monkeypatch):
    import torchvision.datasets

    class OfflineCIFAR10:
        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            raise RuntimeError("<urlopen error [Errno -2] Name or service not known>")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", OfflineCIFAR10)
    root = tmp_path / "nothing-here"
    for download in (False, True):
        with pytest.raises(ValueError) as error:
            load_dataset(DataConfig(name="cifar10", root=str(root), download=download), seed=0)
        message = str(error.value)
        assert "\n" not in message and str(root) in message and "COMPRESS_CIFAR10" in message
    assert "Name or service not known" in message
    assert find_data(DataConfig(name="cifar10", root=str(root)))[0] is False


def test_cifar10_rejects_a_folder_of_other_classes(tmp_path, data_env):
    tree = make_tree(tmp_path / "not-cifar")
    with pytest.raises(ValueError, match="does not look like CIFAR-10"):
        load_dataset(DataConfig(name="cifar10", root=str(tree), validation_size=2), seed=0)


# --- hardening: bad images, empty test folders, temp folders of killed extractions ---------------------

def write_jpeg(path: Path, size: int = 12, truncate: float | None = None) -> None:
    """A noisy JPEG; ``truncate`` keeps only that fraction of its bytes (a copy cut short)."""
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (size, size, 3), generator=generator, dtype=torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG")
    data = buffer.getvalue()
    path.write_bytes(data[: int(len(data) * truncate)] if truncate else data)


@pytest.mark.parametrize("bad", ["train/dog/0003.png", "test/emu/0001.png", "train/cat/0000.png"])
def test_corrupt_image_in_a_folder_names_the_file(tmp_path, data_env, bad):
    tree = make_tree(tmp_path / "tree")
    (tree / bad).write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")  # 0000: the file probed for the shape
    with pytest.raises(UserError) as error:
        load_dataset(DataConfig(name="imagefolder", root=str(tree), validation_size=2), seed=0)
    message = str(error.value)
    assert "\n" not in message and str(tree / bad) in message and "replace or delete" in message


def test_truncated_jpeg_in_a_tarball_names_the_member_and_the_archive(tmp_path, data_env):
    tree = make_tree(tmp_path / "tree")
    write_jpeg(tree / "train" / "dog" / "0009.jpg")
    write_jpeg(tree / "train" / "emu" / "0009.jpg", truncate=0.6)
    archive = make_tarball(tree, tmp_path / "cut.tar.gz", top="top")
    with pytest.raises(UserError) as error:
        load_dataset(DataConfig(name="imagefolder", root=str(archive), validation_size=2), seed=0)
    message = str(error.value)
    assert "\n" not in message and f"top/train/emu/0009.jpg in {archive}" in message
    assert "truncated" in message and "in the archive" in message


@pytest.mark.parametrize("workers", ["0", "1"])
def test_corrupt_image_in_a_streamed_folder_is_one_line(tmp_path, data_env, monkeypatch, workers):
    tree = make_tree(tmp_path / "tree")
    write_jpeg(tree / "test" / "dog" / "0005.jpg", truncate=0.5)  # test images are not decoded for the stats
    monkeypatch.setenv("COMPRESS_DATA_MEMORY_LIMIT", "1")
    monkeypatch.setenv("COMPRESS_WORKERS", workers)
    splits = load_dataset(DataConfig(name="imagefolder", root=str(tree), validation_size=2, image_size=12), seed=0)
    assert isinstance(splits.test, FolderSplit)
    with pytest.raises(UserError) as error:
        list(splits.test.eval_batches(4))
    message = str(error.value)
    assert "\n" not in message and message.startswith("cannot decode image")
    assert str(tree / "test" / "dog" / "0005.jpg") in message


@pytest.mark.parametrize("test_name", ["test", "val"])
def test_empty_test_folder_is_refused_at_load_time(tmp_path, data_env, test_name):
    tree = make_tree(tmp_path / "tree", n_test=0, test_name=test_name)  # class folders, no images
    with pytest.raises(UserError) as error:
        load_dataset(DataConfig(name="imagefolder", root=str(tree), validation_size=2), seed=0)
    message = str(error.value)
    assert "\n" not in message and str(tree / test_name) in message and "no images" in message
    for child in (tree / test_name).iterdir():  # no class folders at all
        child.rmdir()
    with pytest.raises(UserError, match=str(tree / test_name)):
        load_dataset(DataConfig(name="imagefolder", root=str(tree), validation_size=2), seed=0)


def test_stale_extraction_folders_of_dead_processes_are_removed(tarball, data_env):
    import socket
    import subprocess
    import sys

    from compress.data.folder import extraction_target
    from compress.data.locate import short_hash

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = short_hash(socket.gethostname(), length=8)
    target = extraction_target(tarball, "tiny-folder")
    target.parent.mkdir(parents=True)

    def plant(name: str) -> Path:
        folder = target.parent / name
        (folder / "train").mkdir(parents=True)
        (folder / "train" / "partial.png").write_bytes(b"x" * 100)
        return folder

    stale = plant(f".{target.name}.extracting-{host}-{dead.pid}-0badc0de.tmp")
    live = plant(f".{target.name}.extracting-{host}-1-0badc0de.tmp")  # pid 1 is always running
    elsewhere = plant(f".{target.name}.extracting-0123abcd-{dead.pid}-0badc0de.tmp")  # another machine's
    foreign = plant(f".{target.name}.abcdefgh.tmp")  # not named by this code
    load_dataset(DataConfig(name="imagefolder", root=str(tarball), validation_size=3), seed=0)
    assert not stale.exists() and live.exists() and elsewhere.exists() and foreign.exists()
    assert target.is_dir()
    stale = plant(stale.name)  # a kill after another process finished the extraction: cleaned up too
    load_dataset(DataConfig(name="imagefolder", root=str(tarball), validation_size=3), seed=0)
    assert not stale.exists() and live.exists()


def test_interrupted_extraction_leaves_nothing(tarball, data_env, monkeypatch):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tarfile.TarFile, "extractall", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(DataConfig(name="imagefolder", root=str(tarball)), seed=0)
    assert extracted(data_env) == []
