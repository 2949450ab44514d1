"""A diverged run stops with a clear error and writes nothing of its diverged state; checkpoints are
loaded without unpickling code, a truncated one is recomputed, and a resume is an uninterrupted run."""

from __future__ import annotations

import os

import pytest
import torch

from compress.data import load_dataset
from compress.errors import ArtifactError, UserError
from compress.io import load_torch, read_jsonl
from compress.models import create_model
from compress.recipe import recipe_from_dict
from compress.training import TrainingDiverged, train


def _setup(**train_overrides):
    train_section = {"iterations": 60, "batch_size": 32, "eval_every": 20, "checkpoint_every": 10,
                     "eval_batch_size": 500, "optimizer": {"name": "adam", "lr": 1.2e-3}, **train_overrides}
    recipe = recipe_from_dict({"name": "t", "data": {"name": "synthetic", "validation_size": 100},
                               "train": train_section, "export": {"onnx": False}})
    return recipe.train, load_dataset(recipe.data, recipe.seed, "cpu")


def _model() -> torch.nn.Module:
    torch.manual_seed(3)
    return create_model("lenet300_100")


class Stop(Exception):
    pass


def test_a_huge_learning_rate_stops_with_the_first_bad_iteration(tmp_path):
    config, data = _setup(optimizer={"name": "adam", "lr": 1e30})
    with pytest.raises(TrainingDiverged) as caught:
        train(_model(), data, config, seed=0, metrics_path=tmp_path / "m.jsonl",
              checkpoint_path=tmp_path / "c.pt", progress=False)
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in message
    assert message.startswith("training diverged: the training loss is ")
    assert "train.optimizer.lr = 1e+30" in message and "lower train.optimizer.lr" in message
    # the first step is taken from the initial weights: its loss is finite, the second one's is not
    assert "at iteration 2 " in message
    assert read_jsonl(tmp_path / "m.jsonl") == [] and not (tmp_path / "c.pt").exists()


def test_divergence_mid_run_names_its_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config, data = _setup()
    model = _model()

    def poison(iteration: int) -> None:
        if iteration == 23:  # weights go nan after step 23: step 24's loss is the first nan
            with torch.no_grad():
                next(model.parameters())[0, 0] = float("nan")

    with pytest.raises(TrainingDiverged, match=r"the training loss is nan at iteration 24 "):
        train(model, data, config, seed=0, metrics_path=tmp_path / "m.jsonl", checkpoint_path=tmp_path / "c.pt",
              on_step=poison, progress=False)
    assert [point["iteration"] for point in read_jsonl(tmp_path / "m.jsonl")] == [20]
    checkpoint = load_torch(tmp_path / "c.pt")
    assert checkpoint["iteration"] == 20  # the checkpoint at 30 would have held nan weights: not written
    assert all(torch.isfinite(value).all() for value in checkpoint["model"].values())


def test_weights_blown_up_by_the_last_step_before_a_checkpoint_are_not_saved(tmp_path):
    config, data = _setup()
    model = _model()

    def poison(iteration: int) -> None:
        if iteration == 30:
            with torch.no_grad():
                next(model.parameters())[0, 0] = float("inf")

    with pytest.raises(TrainingDiverged, match=r"weights became nan or inf during iterations 21\.\.30"):
        train(model, data, config, seed=0, checkpoint_path=tmp_path / "c.pt", on_step=poison, progress=False)
    assert load_torch(tmp_path / "c.pt")["iteration"] == 20


class Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_checkpoint_with_pickled_code_is_refused_without_running_it(tmp_path):
    config, data = _setup()
    marker = tmp_path / "code-ran"
    with open(tmp_path / "c.pt", "wb") as handle:
        torch.save({"model": Payload(str(marker)), "iteration": 10}, handle)
    with pytest.raises(ArtifactError, match=r"c\.pt: refused"):
        train(_model(), data, config, seed=0, checkpoint_path=tmp_path / "c.pt", progress=False)
    assert not marker.exists()


def _interrupted(tmp_path, config, data, at: int) -> None:
    def stop(iteration: int) -> None:
        if iteration == at:
            raise Stop

    with pytest.raises(Stop):
        train(_model(), data, config, seed=0, metrics_path=tmp_path / "m.jsonl", checkpoint_path=tmp_path / "c.pt",
              on_step=stop, progress=False)


@pytest.mark.parametrize("truncate", [False, True])
def test_resumed_or_recomputed_run_equals_an_uninterrupted_one(tmp_path, capsys, truncate):
    config, data = _setup(checkpoint_every=15)
    reference = _model()
    expected = train(reference, data, config, seed=0, progress=False)

    _interrupted(tmp_path, config, data, at=35)  # checkpoint at 30, mid-way between evaluations
    assert load_torch(tmp_path / "c.pt")["iteration"] == 30
    if truncate:
        data_bytes = (tmp_path / "c.pt").read_bytes()
        (tmp_path / "c.pt").write_bytes(data_bytes[:len(data_bytes) // 2])
    model = _model()
    result = train(model, data, config, seed=0, metrics_path=tmp_path / "m.jsonl", checkpoint_path=tmp_path / "c.pt",
                   progress=False)
    warning = capsys.readouterr().err
    if truncate:
        assert "warning: " in warning and "c.pt: truncated or corrupt" in warning and "restarts" in warning
        assert (tmp_path / "c.pt.corrupt").exists()
    else:
        assert "warning" not in warning
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert result.history == expected.history  # train_loss included: the window before the checkpoint is kept
    assert read_jsonl(tmp_path / "m.jsonl") == expected.history  # no line twice


def test_a_fresh_start_drops_metric_lines_of_an_attempt_killed_before_its_first_checkpoint(tmp_path):
    config, data = _setup(checkpoint_every=50)
    _interrupted(tmp_path, config, data, at=45)
    assert len(read_jsonl(tmp_path / "m.jsonl")) == 2 and not (tmp_path / "c.pt").exists()
    result = train(_model(), data, config, seed=0, metrics_path=tmp_path / "m.jsonl",
                   checkpoint_path=tmp_path / "c.pt", progress=False)
    assert read_jsonl(tmp_path / "m.jsonl") == result.history


def test_a_checkpoint_holds_only_tensors_and_plain_data(tmp_path):
    config, data = _setup(iterations=20, checkpoint_every=10)
    _interrupted(tmp_path, config, data, at=15)
    state = load_torch(tmp_path / "c.pt")  # weights_only: would raise ArtifactError otherwise
    assert state["iteration"] == 10 and len(state["window"]) == 10
