"""DataSplits.identity / identity_hash (resume safety), label range, test split and image size checks."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from compress.data import DatasetInfo, RawData, load_dataset, locate, register_dataset
from compress.data.registry import DATASETS
from compress.errors import UserError
from compress.recipe.schema import DataConfig

STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_idx_set(folder: Path, n_train: int = 30, n_test: int = 10) -> None:
    generator = torch.Generator().manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, n in zip(STEMS, (n_train, n_train, n_test, n_test), strict=True):
        shape = (n, 28, 28) if "images" in stem else (n,)
        tensor = torch.randint(0, 256 if "images" in stem else 10, shape, generator=generator).to(torch.uint8)
        header = bytes([0, 0, 0x08, tensor.dim()]) + b"".join(d.to_bytes(4, "big") for d in tensor.shape)
        (folder / f"{stem}.gz").write_bytes(gzip.compress(header + tensor.numpy().tobytes(), mtime=0))


def change_one_pixel(path: Path) -> None:
    """One byte of the last image differs; size and mtime stay the same."""
    stat = path.stat()
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[-1] ^= 0xFF
    path.write_bytes(gzip.compress(bytes(data), mtime=0))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.fixture
def mnist_dir(tmp_path, data_env, monkeypatch) -> Path:
    monkeypatch.setitem(locate.SYSTEM_DIRS, "mnist", [tmp_path / "no-system-mnist"])
    write_idx_set(tmp_path / "a")
    return tmp_path / "a"


def mnist(root: Path, seed: int = 0, **kwargs):
    return load_dataset(DataConfig(name="mnist", root=str(root), validation_size=5, **kwargs), seed=seed)


def test_identity_names_the_files_read_and_the_split(mnist_dir):
    splits = mnist(mnist_dir, train_subset=20)
    identity = splits.identity
    assert identity["dataset"] == "mnist" and identity["examples"] == {"train": 30, "test": 10}
    assert [Path(f["path"]).name for f in identity["files"]] == [f"{stem}.gz" for stem in STEMS]
    assert all(Path(f["path"]).parent == mnist_dir.resolve() and len(f["sha256"]) == 64 for f in identity["files"])
    assert identity["split"] == {"validation_size": 5, "train_subset": 20, "test_subset": None, "image_size": None,
                                 "seed": 0}
    assert json.loads(json.dumps(identity)) == identity
    assert re.fullmatch(r"[0-9a-f]{16}", splits.identity_hash)


def test_identity_is_stable_and_changes_with_the_files_or_the_split(mnist_dir, tmp_path):
    first, again = mnist(mnist_dir), mnist(mnist_dir)
    assert first.identity == again.identity and first.identity_hash == again.identity_hash
    assert mnist(mnist_dir, seed=1).identity_hash != first.identity_hash
    assert mnist(mnist_dir, test_subset=3).identity_hash != first.identity_hash
    copy = tmp_path / "b"
    shutil.copytree(mnist_dir, copy)
    change_one_pixel(copy / "train-images-idx3-ubyte.gz")
    changed = mnist(copy)
    assert changed.identity_hash != first.identity_hash
    # one byte, same folder, same size and mtime: the content hash still tells
    change_one_pixel(mnist_dir / "t10k-images-idx3-ubyte.gz")
    assert mnist(mnist_dir).identity_hash != first.identity_hash


def make_folder(root: Path, colour: int = 0) -> Path:
    for part, n in (("train", 4), ("test", 2)):
        for label, name in enumerate(("a", "b")):
            (root / part / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (6, 6), (colour + 100 * label, i, 0)).save(root / part / name / f"{i}.png")
    return root


def test_identity_of_tarballs_and_folders(tmp_path, data_env):
    def tar(tree: Path, path: Path) -> Path:
        with tarfile.open(path, "w:gz") as archive:
            for part in sorted(tree.iterdir()):
                archive.add(part, arcname=part.name)
        return path

    def load(root: Path):
        return load_dataset(DataConfig(name="imagefolder", root=str(root), validation_size=2), seed=0)

    one, two = make_folder(tmp_path / "one"), make_folder(tmp_path / "two", colour=50)
    first = load(tar(one, tmp_path / "one.tar.gz"))
    assert first.identity == load(tmp_path / "one.tar.gz").identity
    assert first.identity["files"][0]["path"] == str((tmp_path / "one.tar.gz").resolve())
    assert load(tar(two, tmp_path / "two.tar.gz")).identity_hash != first.identity_hash
    folder = load(one)
    assert folder.identity == load(one).identity and folder.identity_hash != first.identity_hash
    Image.new("RGB", (6, 6)).save(one / "train" / "a" / "extra.png")
    assert load(one).identity_hash != folder.identity_hash


def test_a_tarball_copied_or_touched_is_the_same_data_and_reuses_its_extraction(tmp_path, data_env):
    """Fingerprints are by content: a dataset re-provided with a new mtime (or copied elsewhere) still resumes."""
    from compress.data.folder import extraction_target

    make_folder(tmp_path / "tree")
    tarball = tmp_path / "data.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(tmp_path / "tree" / "train", arcname="train")
        archive.add(tmp_path / "tree" / "test", arcname="test")

    def load(root: Path):
        return load_dataset(DataConfig(name="imagefolder", root=str(root), validation_size=2), seed=0)

    first, target = load(tarball), extraction_target(tarball, "data")
    assert target.is_dir()
    os.utime(tarball, ns=(1, 1))
    copy = tmp_path / "elsewhere" / "data.tar.gz"
    copy.parent.mkdir()
    shutil.copyfile(tarball, copy)  # a new path and a new mtime
    assert load(tarball).identity_hash == load(copy).identity_hash == first.identity_hash
    assert extraction_target(copy, "data") == target
    assert [p.name for p in target.parent.iterdir() if p.is_dir() and not p.name.startswith(".")] == [target.name]
    copy.write_bytes(copy.read_bytes()[:-1] + bytes([copy.read_bytes()[-1] ^ 1]))  # one byte differs
    assert extraction_target(copy, "data") != target


def test_a_folder_copied_with_new_mtimes_is_the_same_data(tmp_path, data_env):
    def load(root: Path):
        return load_dataset(DataConfig(name="imagefolder", root=str(root), validation_size=2), seed=0)

    one = make_folder(tmp_path / "one")
    first = load(one)
    copy = tmp_path / "copy"
    shutil.copytree(one, copy, copy_function=shutil.copyfile)  # cp -r: every mtime is new
    os.utime(copy / "train" / "a", ns=(1, 1))
    assert load(copy).identity_hash == first.identity_hash
    image = copy / "train" / "b" / "0.png"
    image.write_bytes(image.read_bytes() + b"\0")  # a file resized
    assert load(copy).identity_hash != first.identity_hash
    (copy / "train" / "b" / "0.png").rename(copy / "train" / "b" / "9.png")
    assert load(copy).identity_hash != first.identity_hash


def test_files_over_the_whole_hash_size_are_fingerprinted_by_sampled_blocks(tmp_path, monkeypatch):
    from compress.data import locate

    monkeypatch.setattr(locate, "WHOLE_FILE_BYTES", 1 << 20)
    path = tmp_path / "big.bin"
    data = bytearray(torch.randint(0, 256, (5 << 20,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())
    path.write_bytes(bytes(data))
    kind, first = locate.content_digest(path)
    assert kind == "sampled_sha256"
    os.utime(path, ns=(5, 5))
    assert locate.content_digest(path) == (kind, first)  # mtime alone: the same
    data[0] ^= 1  # the first block is always sampled
    path.write_bytes(bytes(data))
    assert locate.content_digest(path)[1] != first
    path.write_bytes(bytes(data) + b"x")
    assert locate.content_digest(path)[1] != first


def test_identity_of_generated_and_registered_data(data_env):
    synthetic = load_dataset(DataConfig(name="synthetic", validation_size=100), seed=0)
    assert synthetic.identity == load_dataset(DataConfig(name="synthetic", validation_size=100), seed=0).identity
    assert "content" in synthetic.identity and "files" not in synthetic.identity
    pixel = {"value": 0}

    @register_dataset("identity_test_dataset", info=DatasetInfo(2, 1, 4))
    def tiny(config: DataConfig) -> RawData:
        images = torch.zeros(20, 1, 4, 4, dtype=torch.uint8)
        images[19, 0, 3, 3] = pixel["value"]
        return RawData(images, torch.arange(20) % 2, images[:4], torch.arange(4) % 2, ["a", "b"], "tiny")

    try:
        config = DataConfig(name="identity_test_dataset", validation_size=5)
        before = load_dataset(config, seed=0).identity_hash
        assert load_dataset(config, seed=0).identity_hash == before
        pixel["value"] = 7
        assert load_dataset(config, seed=0).identity_hash != before
    finally:
        DATASETS._entries.pop("identity_test_dataset")


@pytest.fixture
def custom():
    """Register ``custom_test_dataset`` returning whatever tensors the test sets."""
    data: dict = {}

    @register_dataset("custom_test_dataset", info=DatasetInfo(None, 1, 4))
    def load(config: DataConfig) -> RawData:
        return RawData(**data)

    yield data
    DATASETS._entries.pop("custom_test_dataset")


def test_labels_beyond_the_classes_are_refused_and_num_classes_is_exposed(custom):
    images = torch.zeros(20, 1, 4, 4, dtype=torch.uint8)
    custom.update(train_images=images, train_labels=torch.arange(20) % 3, test_images=images[:4],
                  test_labels=torch.arange(4) % 3, classes=["a", "b"], source="three-label data")
    config = DataConfig(name="custom_test_dataset", validation_size=5)
    with pytest.raises(UserError) as error:
        load_dataset(config, seed=0)
    assert "\n" not in str(error.value) and "three-label data" in str(error.value) and "0..2" in str(error.value)
    custom["classes"] = ["a", "b", "c"]
    splits = load_dataset(config, seed=0)
    assert splits.num_classes == 3 and max(int(s.labels.max()) for s in (splits.train, splits.test)) < 3


def test_an_empty_test_split_is_refused_at_load_time(custom):
    images = torch.zeros(20, 1, 4, 4, dtype=torch.uint8)
    custom.update(train_images=images, train_labels=torch.arange(20) % 2, test_images=images[:0],
                  test_labels=torch.zeros(0, dtype=torch.int64), classes=["a", "b"], source="no-test data")
    with pytest.raises(UserError) as error:
        load_dataset(DataConfig(name="custom_test_dataset", validation_size=5, test_subset=3), seed=0)
    message = str(error.value)
    assert "\n" not in message and "custom_test_dataset" in message and "no-test data" in message


def test_huge_image_size_fails_before_allocating():
    def never(*args, **kwargs):
        raise AssertionError("allocated")

    with pytest.MonkeyPatch.context() as patch:  # the synthetic loader would interpolate 10 x 100000^2 floats
        patch.setattr(torch.nn.functional, "interpolate", never)
        with pytest.raises(UserError) as error:
            load_dataset(DataConfig(name="synthetic", validation_size=100, image_size=100_000), seed=0)
    message = str(error.value)
    assert "\n" not in message and "data.image_size" in message and "100000" in message
    assert load_dataset(DataConfig(name="synthetic", validation_size=100, image_size=64), seed=0).image_size == 64
