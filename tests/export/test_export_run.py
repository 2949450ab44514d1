"""export_run on a run dir (ticket.pt or a round), its fallbacks and errors, and tools/export_onnx.py."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compress import paths
from compress.io import save_torch
from compress.pipeline import export_run
from compress.pipeline.export import stored_paths
from compress.ticket import save_ticket

torch.set_num_threads(1)

TOOL = Path(__file__).resolve().parents[2] / "tools" / "export_onnx.py"


@pytest.fixture()
def run_dir(tmp_path: Path, write_lenet_run_dir) -> Path:
    """A run dir as LotteryRun leaves it after round 2 (untrained weights: export does not care)."""
    return write_lenet_run_dir(tmp_path / "run", "export-test", round_files=True)


def test_export_run_ticket_on_test_data(run_dir):
    result = export_run(run_dir, compact=True)
    assert (run_dir / "ticket.onnx").exists() and (run_dir / "ticket.compact.onnx").exists()
    stored = json.loads((run_dir / "export.json").read_text())
    assert stored["path"] == "ticket.onnx"  # relative to the run dir, so a copied run dir stays valid
    assert stored == json.loads(json.dumps(stored_paths(result, run_dir)))
    assert result["inputs"] == "32 test examples of synthetic" and result["verify_batch"] == 32
    assert result["max_abs_diff"] <= 1e-4 and result["compact"]["max_abs_diff"] <= 1e-4
    assert result["source"] == "ticket.pt (round 2)"
    assert set(result["sizes"]) == {"raw", "gzip", "sparse", "bitmask"}
    assert sum(entry["pruned"] for entry in result["zeros"].values()) == round(0.9 * 784 * 300) \
        + round(0.9 * 300 * 100) + round(0.9 * 100 * 10)


def test_export_run_round_and_out(run_dir, tmp_path):
    result = export_run(run_dir, round=2)
    assert result["path"] == str(paths.round_dir(run_dir, 2) / "ticket.onnx")
    assert (paths.round_dir(run_dir, 2) / "export.json").exists()
    out = tmp_path / "elsewhere" / "lenet.onnx"
    result = export_run(run_dir, out=out)
    assert out.exists() and (out.parent / "lenet.export.json").exists()
    assert not (run_dir / "ticket.onnx").exists()


def test_export_run_falls_back_to_random_inputs(run_dir):
    (run_dir / paths.RECIPE).unlink()
    result = export_run(run_dir)
    assert result["inputs"].startswith("random normal") and "recipe.yaml" in result["inputs"]
    assert result["max_abs_diff"] <= 1e-4


def test_export_run_bad_dirs(run_dir, tmp_path):
    with pytest.raises(ValueError, match="no such run dir"):
        export_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no ticket.pt"):
        export_run(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"round 7 .*finished rounds: 2\)"):
        export_run(run_dir, round=7)


def run_tool(monkeypatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", [str(TOOL), *args])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(TOOL), run_name="__main__")
    return exit_info.value.code


def test_tool_prints_the_verification(run_dir, monkeypatch, capsys):
    assert run_tool(monkeypatch, "--run", str(run_dir), "--compact") == 0
    out = capsys.readouterr().out
    for expected in ("max |ORT - torch|", "zero counts OK", "gzip", "sparse initializers", "bitmask limit",
                     "params 266,610 ->", "MACs 266,200 ->"):
        assert expected in out


def test_tool_reports_a_bad_run_dir_in_one_line(tmp_path, monkeypatch, capsys):
    assert run_tool(monkeypatch, "--run", str(tmp_path / "nope")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_export_onnx_takes_a_ticket_path(run_dir, tmp_path):
    from compress.export import export_onnx

    report = export_onnx(run_dir / paths.TICKET, tmp_path / "t.onnx")
    assert report.input_shape == [1, 28, 28] and report.inputs.startswith("random normal")
    assert len(report.zeros) == 3 and report.max_abs_diff <= 1e-4


class _Payload:
    """Unpickling this runs ``Path(marker).touch()``: what a crafted run file could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name", [paths.FINAL, paths.MASK])
def test_export_round_refuses_a_file_that_would_run_code(run_dir, tmp_path, name):
    from compress.errors import ArtifactError

    marker = tmp_path / "pwned"
    target = paths.round_dir(run_dir, 2) / name
    torch.save({"weight": _Payload(marker)}, target)
    with pytest.raises(ArtifactError, match="refused") as error:
        export_run(run_dir, round=2)
    assert str(target) in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists()


def test_export_round_names_a_truncated_final_pt(run_dir):
    from compress.errors import UserError

    target = paths.round_dir(run_dir, 2) / paths.FINAL
    target.write_bytes(target.read_bytes()[:200])
    with pytest.raises(UserError, match="truncated or corrupt") as error:
        export_run(run_dir, round=2)
    assert str(target) in str(error.value) and "\n" not in str(error.value)


def test_export_round_rebuilds_the_model_without_pretrained_weights(run_dir, monkeypatch):
    import compress.models

    ticket = torch.load(run_dir / paths.TICKET, weights_only=True)
    ticket["model"]["pretrained"] = True  # a pretrained timm run: the trained weights are what count
    save_torch(ticket, run_dir / paths.TICKET)
    configs = []
    real = compress.models.build_model

    def spy(config, *args, **kwargs):
        configs.append(config)
        return real(config, *args, **kwargs)

    monkeypatch.setattr(compress.models, "build_model", spy)
    export_run(run_dir, round=2)
    assert configs and all(config.pretrained is False for config in configs)


def test_export_run_out_may_be_a_folder(run_dir, tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    result = export_run(run_dir, round=2, out=folder)
    assert result["path"] == str(folder / "ticket.onnx") and (folder / "ticket.onnx").is_file()
    assert (folder / "ticket.export.json").is_file()


def test_tool_out_an_existing_folder_writes_ticket_onnx_there(run_dir, tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    result = subprocess.run([sys.executable, str(TOOL), "--run", str(run_dir), "--out", str(folder)],
                            capture_output=True, text=True, timeout=300, cwd=TOOL.parents[1])
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert (folder / "ticket.onnx").is_file() and str(folder / "ticket.onnx") in result.stdout


# #23: a bug is not turned into random inputs; ticket.py's folded contract is enforced
def test_a_bug_while_loading_test_data_is_not_turned_into_random_inputs(run_dir, monkeypatch):
    import compress.data

    run = run_dir

    def broken(*args, **kwargs):
        raise TypeError("a bug in the data code")

    monkeypatch.setattr(compress.data, "load_dataset", broken)
    with pytest.raises(TypeError, match="a bug in the data code"):
        export_run(run, accuracy=False)

    def missing(*args, **kwargs):
        raise FileNotFoundError(2, "No such file", "/data/x")

    monkeypatch.setattr(compress.data, "load_dataset", missing)
    result = export_run(run, accuracy=False)  # no data: said, on random inputs
    assert "random" in result["inputs"] and "not loaded" in result["inputs"]


def test_save_ticket_refuses_unfolded_weights(run_dir, tmp_path):
    from compress.ticket import read_ticket

    run = run_dir
    ticket = read_ticket(run / paths.TICKET)
    unfolded = {key: value + 1.0 if key.endswith(".weight") else value for key, value in ticket["trained_state"].items()}
    with pytest.raises(ValueError, match="not folded"):
        save_ticket(tmp_path / "t.pt", model_config=ticket["model"], shape=ticket["shape"], masks=ticket["masks"],
                    rewind_state=ticket["rewind_state"], trained_state=unfolded, info={})
