"""``compress.io.file_backed``: the same values, in a file that nothing leaves behind."""

from __future__ import annotations

import gc
import os

import pytest
import torch

from compress import io


@pytest.mark.parametrize("linux", [True, False])
def test_file_backed_tensors_read_back_the_same_and_leave_no_file(tmp_path, monkeypatch, linux):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    if not linux:  # another OS: no /proc/self/fd, so the file is kept until its MappedFile goes
        real = os.path.isdir
        monkeypatch.setattr(io.os.path, "isdir", lambda path: False if path == "/proc/self/fd" else real(path))
    state = {"a": torch.randn(64, 32), "b": torch.arange(10)}
    backed, mapped = io.file_backed(state)
    assert type(backed) is dict and all(torch.equal(backed[k], state[k]) for k in state)
    again = mapped.load()
    assert all(torch.equal(again[k], state[k]) for k in state)
    assert bool(list(tmp_path.glob("compress-*"))) != linux  # unlinked at once on Linux
    io.save_torch(backed, tmp_path / "rewind.pt")  # a plain dict: loads with weights_only
    assert torch.equal(torch.load(tmp_path / "rewind.pt", weights_only=True)["a"], state["a"])
    del backed, again, mapped
    gc.collect()
    assert not list(tmp_path.glob("compress-*"))
