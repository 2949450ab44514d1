"""Shared fixtures: where the local dataset copies are, and an isolated data environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                       "t10k-labels-idx1-ubyte")


def _missing(what: str, how: str) -> None:
    """Skip with the reason, or fail when COMPRESS_REQUIRE_DATA=1 (CI that must run everything)."""
    message = f"{what} not found; {how}"
    if os.environ.get("COMPRESS_REQUIRE_DATA") == "1":
        pytest.fail(f"{message} (COMPRESS_REQUIRE_DATA=1)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def cifar10_tar() -> Path:
    """The CIFAR-10 JPEG ImageFolder tarball: $COMPRESS_CIFAR10_TAR or ../shared/data/cifar10-jpg.tar.gz."""
    path = Path(os.environ.get("COMPRESS_CIFAR10_TAR") or REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz")
    if not path.is_file():
        _missing(f"CIFAR-10 JPEG tarball {path}", "set COMPRESS_CIFAR10_TAR to a copy")
    return path


@pytest.fixture(scope="session")
def fashion_mnist_root() -> Path:
    """A folder with the four Fashion-MNIST IDX files: $COMPRESS_FASHION_MNIST or Debian's package."""
    path = Path(os.environ.get("COMPRESS_FASHION_MNIST") or "/usr/share/datasets/fashion-mnist")
    if not all((path / name).is_file() or (path / f"{name}.gz").is_file() for name in FASHION_MNIST_FILES):
        _missing(f"Fashion-MNIST IDX files in {path}",
                 "`apt-get install dataset-fashion-mnist` or set COMPRESS_FASHION_MNIST")
    return path


@pytest.fixture
def data_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No $COMPRESS_DATA / $COMPRESS_CIFAR10, and a fresh user cache under tmp_path (returned)."""
    for name in ("COMPRESS_DATA", "COMPRESS_CIFAR10", "COMPRESS_DATA_MEMORY_LIMIT"):
        monkeypatch.delenv(name, raising=False)
    cache = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


@pytest.fixture
def one_thread_per_training(monkeypatch: pytest.MonkeyPatch):
    """COMPRESS_THREADS=1 for every training (in this process and in spawned workers): results are bit for bit
    equal across executors only at equal threads per training."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("COMPRESS_THREADS", "1")
    yield
    torch.set_num_threads(before)



# Tests that run OpenVINO's runtime in the test process run last: after OpenVINO has run in a process,
# joining DataLoader worker processes there crashed (SIGSEGV in poll; seen with the streamed-folder tests).
# compress itself measures export.json's OpenVINO accuracies in a child process for that reason; the bench
# tests time OpenVINO in-process on purpose. Known issue, to be isolated properly (see the stop note).
_OPENVINO_IN_PROCESS = ("tests/bench/", "tests/export/test_export_openvino.py")


def pytest_collection_modifyitems(config, items):
    def runs_openvino(item) -> bool:
        return item.path.relative_to(REPO).as_posix().startswith(_OPENVINO_IN_PROCESS)

    items[:] = [item for item in items if not runs_openvino(item)] + [item for item in items if runs_openvino(item)]


@pytest.fixture(scope="session")
def write_lenet_run_dir():
    """``write(folder, name, round_files=False)``: a run dir as LotteryRun leaves it after round 2, with a
    90%-pruned LeNet-300-100 ticket (untrained weights: export does not care) on synthetic data; with
    ``round_files`` also round_02's mask.pt and final.pt. Returns the folder."""
    import torch

    from compress import paths
    from compress.io import save_text, save_torch
    from compress.models import build_model
    from compress.pruning import (
        apply_masks,
        effective_weights,
        folded_state_dict,
        magnitude_masks,
        ones_masks,
        prunable_modules,
    )
    from compress.recipe import DataConfig, ModelConfig, Recipe, dump_recipe, recipe_to_dict
    from compress.ticket import save_ticket

    def write(folder: Path, name: str, round_files: bool = False) -> Path:
        recipe = Recipe(name=name, model=ModelConfig(name="lenet300_100"),
                        data=DataConfig(name="synthetic", validation_size=100))
        torch.manual_seed(0)
        model = build_model(recipe.model, 10, 1, 28)
        names = [module for module, _ in prunable_modules(model)]
        masks = magnitude_masks(effective_weights(model, names), ones_masks(model, names),
                                dict.fromkeys(names, 0.9), {n: n for n in names})
        apply_masks(model, masks)
        save_text(dump_recipe(recipe), folder / paths.RECIPE)
        if round_files:
            save_torch(masks, paths.round_dir(folder, 2) / paths.MASK)
            save_torch(model.state_dict(), paths.round_dir(folder, 2) / paths.FINAL)
        save_ticket(folder / paths.TICKET, model_config=recipe_to_dict(recipe)["model"],
                    shape={"num_classes": 10, "in_channels": 1, "image_size": 28}, masks=masks,
                    rewind_state=folded_state_dict(model), trained_state=folded_state_dict(model),
                    info={"round": 2})
        return folder

    return write
