"""Self-describing exports: preprocessing in metadata_props or embedded, and accuracy from raw pixels.

The done-when test: the default recipe's ticket (real Fashion-MNIST, a small budget), given the raw test
images the way its metadata says -- and, separately, with the normalisation embedded in the graph --
scores within 0.1 points of the accuracy the run reports for the ticket.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from compress.data.sources import FASHION_MNIST_CLASSES
from compress.data.tensors import normalise
from compress.errors import UserError
from compress.export import apply_preprocess, export_onnx, onnx_test_accuracy, read_metadata
from compress.export.onnx.accuracy import raw_test_batches
from compress.export.onnx.preprocess import Preprocess, embed_normalisation
from compress.export.onnx.verify import session
from compress.lottery import find_ticket
from compress.pipeline import export_run
from compress.recipe import load_recipe

torch.set_num_threads(1)
RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory, fashion_mnist_root) -> tuple[Path, object, dict]:
    """The default recipe, 1 round of 300 iterations, no controls: a real ticket in ~10 s."""
    recipe = load_recipe(RECIPES / "lth_lenet300_fashion.yaml", overrides=[
        f"data.root={fashion_mnist_root}", "train.iterations=300", "train.eval_every=100",
        "train.checkpoint_every=300", "lottery.rounds=1", "lottery.controls=[]", "export.onnx=false"])
    out = tmp_path_factory.mktemp("fashion") / "run"
    summary = find_ticket(recipe, out, progress=False)
    return out, recipe, summary


def _reported(run: Path) -> float:
    """The run's own test accuracy of the weights ticket.pt holds (its round's final weights)."""
    summary = json.loads((run / "summary.json").read_text())
    round_index = summary["ticket"]["round"]
    return json.loads((run / f"round_{round_index:02d}" / "result.json").read_text())["test_accuracy"]


def test_metadata_export_scores_the_reported_accuracy_from_raw_pixels(fashion_run, tmp_path):
    run, recipe, _ = fashion_run
    result = export_run(run, out=tmp_path / "meta" / "ticket.onnx", preprocess="metadata")
    path = Path(result["path"])
    meta = read_metadata(path)
    assert meta["mode"] == "metadata" and meta["dataset"] == "fashion_mnist"
    assert meta["mean"] == pytest.approx([0.2860]) and meta["std"] == pytest.approx([0.3530])  # the loader's
    assert meta["classes"] == FASHION_MNIST_CLASSES and meta["input_shape"] == [1, 28, 28]
    assert meta["layout"] == "NCHW" and meta["resize"] is None
    reported = _reported(run)
    accuracy = onnx_test_accuracy(path, recipe)
    assert abs(accuracy - reported) <= 0.001
    saved = json.loads((tmp_path / "meta" / "ticket.export.json").read_text())
    assert saved["accuracy"]["test_examples"] == 10000
    assert saved["accuracy"]["onnx_raw_images"] == accuracy
    assert abs(saved["accuracy"]["torch_ticket"] - reported) <= 0.001
    assert saved["preprocess"]["compress.preprocess"] == "metadata"
    # the failure the metadata prevents: raw [0, 1] pixels fed straight in score far lower
    runner = session(path.read_bytes())
    correct = total = 0
    for images, labels in raw_test_batches(recipe.data, recipe.seed, limit=2000):
        logits = runner.run(None, {"input": images.astype(np.float32) / 255})[0]
        correct, total = correct + int((logits.argmax(1) == labels).sum()), total + len(labels)
    assert correct / total < accuracy - 0.02


def test_embedded_export_takes_pixels_over_255_and_scores_the_same(fashion_run, tmp_path):
    run, recipe, _ = fashion_run
    result = export_run(run, out=tmp_path / "embed" / "ticket.onnx", preprocess="embed", compact=True)
    path = Path(result["path"])
    assert result["embedded_max_abs_diff"] <= 1e-4
    meta = read_metadata(path)
    assert meta["mode"] == "embedded" and meta["input_range"] == "[0, 1]"
    proto = onnx.load(str(path))
    assert [n.op_type for n in proto.graph.node[:2]] == ["Sub", "Div"]
    reported = _reported(run)
    assert abs(onnx_test_accuracy(path, recipe) - reported) <= 0.001
    # by hand, as a deployment would: pixel / 255 only
    runner = session(path.read_bytes())
    images, labels = next(raw_test_batches(recipe.data, recipe.seed, limit=1000))
    by_hand = runner.run(None, {"input": images.astype(np.float32) / 255})[0].argmax(1)
    via_helper = runner.run(None, {"input": apply_preprocess(images, meta)})[0].argmax(1)
    assert np.array_equal(by_hand, via_helper)
    # the compacted file is self-describing too
    assert read_metadata(result["compact_path"])["mode"] == "embedded"
    assert abs(result["accuracy"]["compact_onnx_raw_images"] - reported) <= 0.001


def test_apply_preprocess_matches_the_toolkit_normalisation():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 20, 20), generator=generator, dtype=torch.uint8)
    mean, std = torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26])
    for side in (None, 32):
        pre = Preprocess("x", ("a", "b"), tuple(mean.tolist()), tuple(std.tolist()), (3, side or 20, side or 20),
                         resize_to=side)
        meta = read_metadata(_tagged(pre))
        assert meta["resize"] == ({"side": 32, "mode": "bilinear", "antialias": True} if side else None)
        want = normalise(images, mean, std, torch.device("cpu"), side).numpy()
        got = apply_preprocess(images.numpy(), meta)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5)


def _tagged(pre: Preprocess) -> onnx.ModelProto:
    """A one-node model carrying ``pre``'s metadata."""
    from compress.export.onnx.preprocess import add_metadata

    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["input"], ["output"])], "g",
                                   [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, None)],
                                   [onnx.helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, None)])
    return add_metadata(onnx.helper.make_model(graph), pre)


def test_embedding_is_exact_on_a_three_channel_conv(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    x = torch.randn(4, 3, 8, 8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    pre = Preprocess("cifar10", tuple("abcde"), mean, std, (3, 8, 8), embedded=True)
    report = export_onnx(model, tmp_path / "m.onnx", x[:2], verify_inputs=x, preprocess=pre)
    assert report.embedded_max_abs_diff <= 1e-5
    plain = onnx.load(str(tmp_path / "m.onnx"))
    again = embed_normalisation(onnx.load(str(tmp_path / "m.onnx")), mean, std)  # idempotence is not promised:
    assert len(again.graph.node) == len(plain.graph.node) + 2  # each call prepends one Sub / Div pair
    pixels = x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    out = session(plain.SerializeToString()).run(None, {"input": pixels.numpy()})[0]
    np.testing.assert_allclose(out, model(x).detach().numpy(), atol=1e-5)


def test_a_file_without_metadata_is_refused_by_name(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    export_onnx(model, tmp_path / "bare.onnx", torch.randn(2, 1, 2, 2))
    with pytest.raises(UserError, match="bare.onnx: records no preprocessing"):
        read_metadata(tmp_path / "bare.onnx")
    with pytest.raises(UserError, match="no such ONNX file"):
        read_metadata(tmp_path / "missing.onnx")
