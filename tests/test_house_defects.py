"""Regression tests of the defects #23 lists (each fails on ee37812's behaviour)."""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
from pathlib import Path

import torch
import torch.nn as nn

import compress.io as cio
from compress import paths

sys.path.insert(0, str(Path(__file__).parent / "lottery"))
from tiny import tiny_recipe  # noqa: E402


def test_atomic_write_never_touches_the_umask_and_fsyncs_the_directory(tmp_path, monkeypatch):
    def no_umask(_mask):
        raise AssertionError("os.umask changes the mask of every thread of the process")

    synced_dirs = []
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced_dirs.append(fd)
        return real_fsync(fd)

    mask = os.umask(0o022)
    os.umask(mask)
    monkeypatch.setattr(os, "umask", no_umask)
    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / "out.json"
    cio.save_json({"a": 1}, target)
    assert json.loads(target.read_text()) == {"a": 1}
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert synced_dirs, "the directory holding the renamed file was not fsynced"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left


def test_int8_quantization_leaves_the_root_logger_level_alone(tmp_path, monkeypatch):
    import onnxruntime.quantization as ort_quantization

    from compress.export import export_onnx, quantize_onnx

    seen = []
    real = ort_quantization.quantize_dynamic

    def spy(*args, **kwargs):
        seen.append(logging.getLogger().level)
        return real(*args, **kwargs)

    monkeypatch.setattr(ort_quantization, "quantize_dynamic", spy)  # imported at call time
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.INFO)
    try:
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
        export_onnx(model, tmp_path / "m.onnx", torch.randn(2, 1, 4, 4))
        quantize_onnx(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", mode="int8-dynamic")
        assert seen == [logging.INFO] and root.level == logging.INFO
    finally:
        root.setLevel(before)


def test_no_validation_split_writes_null_never_nan(tmp_path):
    from compress.lottery import find_ticket
    from compress.recipe import recipe_from_dict

    recipe = recipe_from_dict(tiny_recipe(data={"validation_size": 0}, lottery={"rounds": 0, "controls": []},
                                          train={"iterations": 20, "eval_every": 10, "checkpoint_every": 10}))
    find_ticket(recipe, tmp_path / "run", progress=False)

    def refuse(constant):
        raise AssertionError(f"{constant} in a JSON file")

    for name in (paths.RESULT, ):
        result = json.loads((paths.round_dir(tmp_path / "run", 0) / name).read_text(), parse_constant=refuse)
        assert result["early_stop_val_accuracy"] is None
    json.loads((tmp_path / "run" / paths.SUMMARY).read_text(), parse_constant=refuse)
