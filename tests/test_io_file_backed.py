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
    if not linux:  # another OS: no /proc/self/fd, so the file is kept until its mapping goes
        real = os.path.isdir
        monkeypatch.setattr(io.os.path, "isdir", lambda path: False if path == "/proc/self/fd" else real(path))
    state = {"a": torch.randn(64, 32), "b": torch.arange(10)}
    backed = io.file_backed(state)
    assert all(torch.equal(backed[k], state[k]) for k in state)
    again = io.remapped(backed)
    assert all(torch.equal(again[k], state[k]) for k in state)
    assert (again is backed) != linux  # Linux maps the unlinked file afresh; elsewhere the one mapping stays
    assert bool(list(tmp_path.glob("compress-*"))) != linux  # unlinked at once on Linux
    del backed, again
    gc.collect()
    assert not list(tmp_path.glob("compress-*"))
