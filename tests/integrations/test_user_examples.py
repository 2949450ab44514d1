"""The real-user examples (own model, own data, own schedule) run as written, and what they promise holds:
sparsity per recipe, rewind bit for bit against the user's own copy of the weights at step k, controls
refused by the callbacks (trained and reported in the own loop), a resumed run equal to the uninterrupted
one, ONNX equal to torch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def run(script: str, *args: str, env: dict | None = None) -> str:
    result = subprocess.run([sys.executable, f"examples/{script}", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def assert_rewound(at_k: dict, after: dict) -> None:
    """Every weight (pruned or not: ``weight_orig``), bias and buffer equals the user's copy at step k."""
    compared = [key for key in at_k if not key.endswith("_mask")]
    assert compared and all(torch.equal(at_k[key], after[key]) for key in compared)


def assert_planned(masks: dict, plan: list[dict], level: int) -> None:
    rows = {row["name"]: row for row in plan}
    for name, mask in masks.items():
        expected = rows[name]["remaining"][level]
        assert abs(mask.float().mean().item() - expected) <= level / mask.numel() + 1e-6, name


@pytest.mark.slow
def test_hf_example_resumes_exactly_and_exports_a_tiny_bert(tmp_path):
    transformers = pytest.importorskip("transformers")
    import onnxruntime as ort

    import compress
    from compress.errors import UserError
    from compress.integrations.transformers import STATE_FILE, LotteryTicketCallback

    out = tmp_path / "hf"
    env = {"TICKET_ITERATIONS": "20"}  # 20 + 2 x 16 steps; checkpoint at step 30, mid-level 1
    stdout = run("hf_ticket.py", "--out", str(out), env=env)
    assert "after 52 steps" in stdout
    full = torch.load(out / "final.pt", weights_only=True)
    assert_rewound(torch.load(out / "weights_at_k.pt", weights_only=True),
                   torch.load(out / "after_rewind.pt", weights_only=True))
    assert (out / "checkpoint-30" / STATE_FILE).is_file()

    # resume_from_checkpoint restores the search: the same masks and weights, bit for bit
    run("hf_ticket.py", "--out", str(out), "--resume", str(out / "checkpoint-30"), env=env)
    resumed = torch.load(out / "final.pt", weights_only=True)
    for part in ("folded", "masks"):
        assert all(torch.equal(full[part][k], resumed[part][k]) for k in full[part]), part

    # sparsity per the recipe's plan, and ONNX equal to torch on the folded ticket
    config = transformers.BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=16, num_labels=3)
    recipe = compress.recipe.recipe_from_dict({
        "train": {"iterations": 20}, "prune": {"rates": {"linear": 0.3, "output": 0.1}, "keep": ["bert.pooler"]},
        "lottery": {"rounds": 2, "rewind_to": 4}}, sections=compress.recipe.PARTIAL_SECTIONS)
    plan = compress.LotterySearch(transformers.BertForSequenceClassification(config), recipe).plan()
    assert_planned(full["masks"], plan, 2)
    model = transformers.BertForSequenceClassification(config).eval()
    model.load_state_dict(full["folded"])
    ids = torch.randint(1, 40, (3, 12), generator=torch.Generator().manual_seed(5))
    session = ort.InferenceSession(str(out / "ticket.onnx"))
    (logits,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy())})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(logits), model(input_ids=ids).logits, atol=1e-5)

    # a checkpoint without the search's state, or a recipe with controls, is refused in one line
    (out / "checkpoint-30" / STATE_FILE).unlink()
    callback = LotteryTicketCallback(recipe, transformers.BertForSequenceClassification(config))
    args = transformers.TrainingArguments(output_dir=str(out), use_cpu=True, report_to=[])
    with pytest.raises(UserError, match=f"{STATE_FILE} is missing"):
        callback._resume(args, transformers.TrainerState(global_step=30))
    controls = compress.recipe.recipe_from_dict({"lottery": {"controls": ["reinit"]}})
    with pytest.raises(UserError, match="lottery.controls .* not supported by the HF callback"):
        LotteryTicketCallback(controls, transformers.BertForSequenceClassification(config))
    shutil.rmtree(out)
