"""export_onnx with integer, several and named inputs and tuple / dict outputs (a tiny BERT)."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import compress
from compress.errors import UserError
from compress.recipe import PARTIAL_SECTIONS, recipe_from_dict


class TwoInputs(nn.Module):
    """Token ids (int64) plus a float feature; returns a tuple."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.fc = nn.Linear(8 + 3, 4)

    def forward(self, ids: torch.Tensor, extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.cat([self.embed(ids).mean(1), extra], dim=1)
        return self.fc(h), h.sum(1)


def _prune(model: nn.Module) -> None:
    recipe = recipe_from_dict({"prune": {"rates": {"linear": 0.5, "output": 0.5}}, "lottery": {"rounds": 1}},
                              sections=PARTIAL_SECTIONS)
    search = compress.LotterySearch(model, recipe, iterations=1)
    search.on_step()  # one "trained" level: prunes and rewinds


def test_integer_and_several_inputs_keep_their_dtype(tmp_path):
    torch.manual_seed(0)
    model = TwoInputs()
    _prune(model)
    ids = torch.randint(0, 20, (5, 7))
    extra = torch.randn(5, 3, dtype=torch.float64)  # float64 becomes float32, ints stay int64
    report = compress.export_onnx(model, tmp_path / "two.onnx", verify_inputs=(ids, extra))
    assert report.input_dtypes == ["int64", "float32"] and report.max_abs_diff <= report.tolerance
    session = ort.InferenceSession(str(tmp_path / "two.onnx"))
    assert [i.type for i in session.get_inputs()] == ["tensor(int64)", "tensor(float)"]
    got = session.run(None, {"input_0": ids[:3].numpy(), "input_1": extra[:3].float().numpy()})
    want = model(ids[:3], extra[:3].float())
    assert all(torch.allclose(torch.from_numpy(g), w, atol=1e-5) for g, w in zip(got, want, strict=True))
    assert sum(z["pruned"] for z in report.zeros.values()) > 0


def test_a_dtype_problem_is_named_as_such(tmp_path):
    model = TwoInputs()
    with pytest.raises(UserError, match="inputs of dtype"):
        compress.export_onnx(model, tmp_path / "x.onnx", verify_inputs=(torch.rand(2, 7), torch.randn(2, 3)))


def test_a_tiny_bert_from_a_config_exports_and_verifies(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    _prune(model)
    inputs = {"input_ids": torch.randint(0, 50, (4, 10)), "attention_mask": torch.ones(4, 10, dtype=torch.long)}
    inputs["attention_mask"][1, 6:] = 0
    report = compress.export_onnx(model, tmp_path / "bert.onnx", verify_inputs=inputs)
    assert report.input_names == ["input_ids", "attention_mask"] and report.input_dtypes == ["int64", "int64"]
    assert report.max_abs_diff <= report.tolerance
    session = ort.InferenceSession(str(tmp_path / "bert.onnx"))
    assert [o.name for o in session.get_outputs()] == ["logits"]
    (logits,) = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(logits), model(**inputs).logits, atol=1e-5)
