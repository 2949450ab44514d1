"""Output paths a tool must never replace or write through (FIFOs, links, devices, existing files), and the
export's one-line refusals (``--opset 7``, ``--qat on --quantize none``, a file-size limit)."""

from __future__ import annotations

import json
import os
import resource
import runpy
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compress import paths
from compress.errors import UserError
from compress.io import check_target, save_json

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]
EXPORT = REPO / "tools" / "export_onnx.py"
PACK = REPO / "tools" / "pack_ticket.py"


def _tool(monkeypatch, capsys, tool: Path, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", [str(tool), *args])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(tool), run_name="__main__")
    captured = capsys.readouterr()
    return done.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, write_lenet_run_dir) -> Path:
    """A run dir with a ticket of LeNet-300-100 (untrained: the export does not care), no dataset files."""
    return write_lenet_run_dir(tmp_path_factory.mktemp("paths") / "run", "paths-test")


@pytest.fixture(scope="module")
def exported(run_dir) -> Path:
    from compress.pipeline import export_run

    export_run(run_dir, accuracy=False)
    return run_dir / paths.TICKET_ONNX


def _specials(tmp_path: Path) -> dict[str, Path]:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "link"
    link.symlink_to(victim)
    return {"FIFO": fifo, "symbolic link": link}


def test_atomic_writes_refuse_anything_but_a_regular_file(tmp_path):
    for kind, path in _specials(tmp_path).items():
        with pytest.raises(UserError, match=kind):
            save_json({"a": 1}, path)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode) and (tmp_path / "link").is_symlink()
    assert (tmp_path / "victim.txt").read_text() == "keep me"
    with pytest.raises(UserError, match="character device"):
        check_target(Path("/dev/null"))  # checked only: never written, even as root
    save_json({"a": 1}, tmp_path / "plain.json")
    save_json({"a": 2}, tmp_path / "plain.json")  # a regular file is replaced as before
    assert json.loads((tmp_path / "plain.json").read_text()) == {"a": 2}


def test_export_out_fifo_or_link_is_one_line(run_dir, tmp_path, monkeypatch, capsys):
    for kind, path in _specials(tmp_path).items():
        code, _, err = _tool(monkeypatch, capsys, EXPORT, "--run", str(run_dir), "--out", str(path), "--no-accuracy")
        assert code == 2 and err.count("\n") == 1 and kind in err and str(path) in err
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode) and (tmp_path / "victim.txt").read_text() == "keep me"


def test_export_refuses_opset_7_and_qat_without_int8(run_dir, monkeypatch, capsys):
    code, _, err = _tool(monkeypatch, capsys, EXPORT, "--run", str(run_dir), "--opset", "7", "--no-accuracy")
    assert code == 2 and err.count("\n") == 1 and "opset" in err and "graph inputs" in err
    code, _, err = _tool(monkeypatch, capsys, EXPORT, "--run", str(run_dir), "--qat", "on", "--quantize", "none")
    assert code == 2 and err.count("\n") == 1 and "qat on" in err and "--quantize" in err


def test_recipe_refuses_qat_on_without_quantize(tmp_path):
    from compress.recipe import RecipeError, load_recipe

    (tmp_path / "r.yaml").write_text("name: q\nexport:\n  qat: 'on'\n  quantize: none\n")
    with pytest.raises(RecipeError, match="export.qat"):
        load_recipe(tmp_path / "r.yaml")


def test_export_json_paths_are_relative_to_the_run_dir(run_dir, exported, tmp_path):
    from compress.pipeline.run import current_export

    stored = json.loads((run_dir / "export.json").read_text())
    assert stored["path"] == paths.TICKET_ONNX and stored["run_dir"] == "." and stored["report"] == "export.json"
    copy = tmp_path / "copied"
    shutil.copytree(run_dir, copy)
    from compress.recipe import load_recipe

    loaded = current_export(copy, load_recipe(copy / paths.RECIPE))
    assert loaded is not None and Path(loaded["path"]) == copy / paths.TICKET_ONNX


def test_pack_never_overwrites_and_refuses_special_outputs(exported, tmp_path, monkeypatch, capsys):
    onnx_file = tmp_path / "ticket.onnx"
    shutil.copy(exported, onnx_file)
    (tmp_path / "ticket.cta").write_bytes(b"mine")
    code, _, err = _tool(monkeypatch, capsys, PACK, str(onnx_file))  # the default output exists
    assert code == 2 and err.count("\n") == 1 and "never overwritten" in err
    assert (tmp_path / "ticket.cta").read_bytes() == b"mine"
    code, _, err = _tool(monkeypatch, capsys, PACK, str(onnx_file), "--out", str(tmp_path / "other.cta"), "--sizes")
    assert code == 2 and "ticket.cta" in err and not (tmp_path / "other.cta").exists()
    assert (tmp_path / "ticket.cta").read_bytes() == b"mine"
    (tmp_path / "s").mkdir()
    for path in _specials(tmp_path / "s").values():
        code, _, err = _tool(monkeypatch, capsys, PACK, str(onnx_file), "--out", str(path))
        assert code == 2 and err.count("\n") == 1 and str(path) in err
        code, _, err = _tool(monkeypatch, capsys, PACK, "--unpack", str(tmp_path / "ticket.cta"), "--out", str(path))
        assert code == 2 and err.count("\n") == 1 and str(path) in err
    assert (tmp_path / "s" / "victim.txt").read_text() == "keep me"


def _small_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_a_file_size_limit_is_one_line(exported, tmp_path):
    """``ulimit -f``: the write fails with EFBIG (Python ignores SIGXFSZ); one line naming the file."""
    done = subprocess.run([sys.executable, str(PACK), str(exported), "--out", str(tmp_path / "big.cta")],
                          capture_output=True, text=True, timeout=300, cwd=REPO, preexec_fn=_small_file_limit,
                          # no bytecode writes: under the limit a .pyc would be cut short, not refused
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                               "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert "big.cta" in done.stderr and "ulimit -f" in done.stderr
    assert not list(tmp_path.glob(".*.tmp")) and not (tmp_path / "big.cta").exists()
