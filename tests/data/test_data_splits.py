"""Registry, synthetic data, the seeded split and the batch stream (no files needed)."""

from __future__ import annotations

import itertools

import pytest
import torch

from compress.data import (
    DatasetInfo,
    DataSplits,
    RawData,
    TensorSplit,
    dataset_info,
    find_data,
    list_datasets,
    load_dataset,
    register_dataset,
)
from compress.data.registry import DATASETS
from compress.data.tensors import crop_flip, epoch_permutation
from compress.recipe.schema import DataConfig


def synthetic(seed: int = 0, validation_size: int = 100, **kwargs) -> DataSplits:
    return load_dataset(DataConfig(name="synthetic", validation_size=validation_size, **kwargs), seed=seed)


def take(stream, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(itertools.islice(stream, count))


def test_registry_lists_the_builtin_datasets():
    assert list_datasets() == ["cifar10", "fashion_mnist", "imagefolder", "mnist", "synthetic"]
    assert list_datasets("*mnist") == ["fashion_mnist", "mnist"]
    assert dataset_info("cifar10") == DatasetInfo(10, 3, 32)
    assert dataset_info("imagefolder") == DatasetInfo(None, None, None)


def test_unknown_name_is_one_line_listing_the_names():
    with pytest.raises(ValueError) as error:
        load_dataset(DataConfig(name="fashoin_mnist"), seed=0)
    message = str(error.value)
    assert "\n" not in message and "fashion_mnist" in message and "synthetic" in message
    with pytest.raises(ValueError, match="available"):
        dataset_info("nope")


def test_register_dataset_adds_a_loader():
    @register_dataset("tiny_test_dataset", info=DatasetInfo(2, 1, 4))
    def tiny(config: DataConfig) -> RawData:
        images = torch.arange(20 * 16, dtype=torch.uint8).view(20, 1, 4, 4)
        return RawData(images, torch.arange(20) % 2, images[:4], torch.arange(4) % 2, ["a", "b"], "tiny")

    try:
        splits = load_dataset(DataConfig(name="tiny_test_dataset", validation_size=5), seed=1)
        assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 5, 4)
        assert splits.classes == ["a", "b"] and find_data(DataConfig(name="tiny_test_dataset"))[0]
    finally:
        DATASETS._entries.pop("tiny_test_dataset")


def test_synthetic_shapes_and_normalisation():
    splits = synthetic()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (700, 100, 200)
    assert (splits.num_classes, splits.in_channels, splits.image_size) == (10, 1, 28)
    x, y = next(splits.test.eval_batches(64))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(splits.train.images.mean().item()) < 0.05 and abs(splits.train.images.std().item() - 1) < 0.05
    assert set(splits.train.labels.tolist()) == set(range(10))


def test_synthetic_is_learnable_by_class_means():
    splits = synthetic()
    means = torch.stack([splits.train.images[splits.train.labels == c].mean(0) for c in range(10)])
    distances = torch.cdist(splits.test.images.flatten(1), means.flatten(1))
    accuracy = (distances.argmin(1) == splits.test.labels).float().mean().item()
    assert accuracy > 0.9


def test_synthetic_image_size_and_train_subset():
    splits = synthetic(image_size=16, train_subset=50)
    assert len(splits.train) == 50 and splits.train.images.shape[1:] == (1, 16, 16)
    with pytest.raises(ValueError, match="train_subset"):
        synthetic(train_subset=10_000)
    with pytest.raises(ValueError, match="validation_size"):
        synthetic(validation_size=800)


def test_split_is_reproducible_by_seed():
    a, b, c = synthetic(seed=0), synthetic(seed=0), synthetic(seed=1)
    assert torch.equal(a.val.indices, b.val.indices) and torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.val.indices, c.val.indices)
    # val and train never overlap and together are the whole training set
    rows = torch.cat([a.train.indices, a.val.indices]).sort().values
    assert torch.equal(rows, torch.arange(800))


def test_validation_size_zero_gives_an_empty_val_split():
    splits = synthetic(validation_size=0)
    assert len(splits.val) == 0 and len(splits.train) == 800
    assert list(splits.val.eval_batches(100)) == []
    with pytest.raises(ValueError, match="empty split"):
        splits.val.batches(10, seed=0)


def test_batches_are_a_pure_function_of_seed_and_k():
    split = synthetic().train  # 700 examples, batch 64 -> 10 batches per epoch
    first = take(split.batches(64, seed=3), 25)
    again = take(split.batches(64, seed=3), 25)
    resumed = take(split.batches(64, seed=3, start=13), 12)
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    for (x1, y1), (x2, y2) in zip(first[13:], resumed, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other = take(split.batches(64, seed=4), 1)
    assert not torch.equal(first[0][1], other[0][1])


def test_each_epoch_is_a_permutation_without_the_partial_batch():
    split = synthetic().train
    epoch = take(split.batches(64, seed=0), 10)
    seen = torch.cat([x.flatten(1) for x, _ in epoch])
    assert seen.shape[0] == 640 and torch.unique(seen, dim=0).shape[0] == 640
    next_epoch = take(split.batches(64, seed=0, start=10), 1)[0][0]
    assert not torch.equal(next_epoch, epoch[0][0])


def test_augment_keeps_shapes_changes_pixels_and_resumes_exactly():
    split = synthetic(image_size=32).train
    plain = take(split.batches(50, seed=0), 3)
    augmented = take(split.batches(50, seed=0, augment=True), 3)
    resumed = take(split.batches(50, seed=0, start=2, augment=True), 1)
    for (x, y), (xa, ya) in zip(plain, augmented, strict=True):
        assert xa.shape == x.shape and torch.equal(y, ya) and not torch.equal(x, xa)
    assert torch.equal(augmented[2][0], resumed[0][0])


def test_crop_flip_matches_pad_crop_flip_by_hand():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6)
    fill = torch.tensor([-1.0, -2.0, -3.0])
    shifts = torch.tensor([[0, 8], [4, 1]])
    flips = torch.tensor([False, True])
    out = crop_flip(x, shifts, flips, fill)
    padded = fill.view(1, 3, 1, 1).expand(2, 3, 13, 14).clone()
    padded[:, :, 4:9, 4:10] = x
    expected0 = padded[0, :, 0:5, 8:14]
    expected1 = padded[1, :, 4:9, 1:7].flip(-1)
    assert torch.equal(out[0], expected0) and torch.equal(out[1], expected1)


def test_eval_batches_cover_the_split_in_order():
    split = synthetic().test
    batches = list(split.eval_batches(64))
    assert [len(y) for _, y in batches] == [64, 64, 64, 8]
    assert torch.equal(torch.cat([x for x, _ in batches]), split.images)


def test_batch_size_errors():
    split = synthetic().train
    with pytest.raises(ValueError, match="batch_size"):
        split.batches(701, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        list(split.eval_batches(0))


@pytest.fixture
def native_28():
    """A registered dataset stored at 28x28 whatever data.image_size says (like MNIST)."""
    @register_dataset("native_28_test", info=DatasetInfo(3, 1, 28))
    def load(config: DataConfig) -> RawData:
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (60, 1, 28, 28), generator=generator, dtype=torch.uint8)
        labels = torch.arange(60) % 3
        return RawData(images[:50], labels[:50], images[50:], labels[50:], ["a", "b", "c"], "native_28")

    yield DataConfig(name="native_28_test", validation_size=10, image_size=40)
    DATASETS._entries.pop("native_28_test")


def test_image_size_resizes_per_batch_when_the_resized_set_is_too_large(native_28, monkeypatch):
    eager = load_dataset(native_28, seed=0)
    assert eager.train.images.shape[1:] == (1, 40, 40) and eager.train.size is None and eager.image_size == 40
    monkeypatch.setenv("COMPRESS_DATA_MEMORY_LIMIT", "1000")
    lazy = load_dataset(native_28, seed=0)
    assert lazy.train.images.shape[1:] == (1, 28, 28) and lazy.train.size == 40 and lazy.image_size == 40
    for (xe, ye), (xl, yl) in zip(take(eager.train.batches(8, seed=0, augment=True), 3),
                                  take(lazy.train.batches(8, seed=0, augment=True), 3), strict=True):
        assert xl.shape == (8, 1, 40, 40) and torch.equal(ye, yl)
        torch.testing.assert_close(xl, xe, atol=1e-4, rtol=1e-4)
    xe, _ = next(eager.test.eval_batches(10))
    xl, _ = next(lazy.test.eval_batches(10))
    torch.testing.assert_close(xl, xe, atol=1e-4, rtol=1e-4)


def test_batches_are_the_epoch_permutation_gathered():
    # what the stream costs (about one gather a batch) is measured in benchmarks/test_data_speed.py
    split = TensorSplit(torch.randn(1000, 1, 4, 4), torch.randint(0, 10, (1000,)))
    order = epoch_permutation(1000, seed=5, epoch=0)
    for j, (x, y) in enumerate(take(split.batches(60, seed=5), 16)):
        index = order[j * 60:(j + 1) * 60]
        assert torch.equal(x, split.images.index_select(0, index)) and torch.equal(y, split.labels[index])
