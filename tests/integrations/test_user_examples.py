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


def run(script: str, *args: str, env: dict | None = None, stderr: list | None = None) -> str:
    result = subprocess.run([sys.executable, f"examples/{script}", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert result.returncode == 0, result.stderr[-3000:]
    if stderr is not None:
        stderr.append(result.stderr)
    return result.stdout


def assert_same_run(full: dict, resumed: dict) -> None:
    for part in ("folded", "masks"):
        assert set(full[part]) == set(resumed[part])
        assert all(torch.equal(full[part][k], resumed[part][k]) for k in full[part]), part


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
    assert_same_run(full, torch.load(out / "final.pt", weights_only=True))

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


@pytest.mark.slow
def test_lightning_example_resumes_exactly_with_the_sampler_and_exports(tmp_path):
    pytest.importorskip("lightning")
    import onnxruntime as ort

    import compress
    from compress.errors import UserError
    from compress.integrations.lightning import NOT_RESUMABLE, LotteryTicketCallback, ticket_state_dict

    out = tmp_path / "pl"
    env = {"TICKET_ITERATIONS": "20"}  # 20 + 2 x 16 steps; a checkpoint at step 30, mid-level 1
    assert "after 52 steps" in run("lightning_ticket.py", "--out", str(out), env=env)
    full = torch.load(out / "final.pt", weights_only=True)
    assert_rewound(torch.load(out / "weights_at_k.pt", weights_only=True),
                   torch.load(out / "after_rewind.pt", weights_only=True))
    run("lightning_ticket.py", "--out", str(out), "--resume", str(out / "ckpt" / "step=30.ckpt"), env=env)
    assert_same_run(full, torch.load(out / "final.pt", weights_only=True))

    # the checkpoint -> a plain model of one's own -> ONNX equal to torch
    plain = ticket_state_dict(out / "final.ckpt", module="net")
    assert not any(key.endswith(("_orig", "_mask")) for key in plain)
    assert all(torch.equal(plain[key], value) for key, value in full["folded"].items())
    x = torch.randn(3, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    (onnx_out,) = ort.InferenceSession(str(out / "ticket.onnx")).run(None, {"input": x.numpy()})
    recipe = compress.recipe.recipe_from_dict({"train": {"iterations": 20}, "lottery": {"rounds": 2, "rewind_to": 4},
                                               "prune": {"rates": {"conv": 0.2, "linear": 0.3, "output": 0.1}}},
                                              sections=compress.recipe.PARTIAL_SECTIONS)
    def make_net() -> torch.nn.Module:  # the example's CNN
        nn = torch.nn
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    assert_planned(full["masks"], compress.LotterySearch(make_net(), recipe).plan(), 2)
    net = make_net()
    net.load_state_dict(plain)
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(onnx_out), net.eval()(x), atol=1e-5)

    # a plain shuffling DataLoader: the resume is refused nothing, but the callback says what holds
    plain_out = tmp_path / "plain"
    run("lightning_ticket.py", "--out", str(plain_out), "--plain-loader", env=env)
    stderr: list = []
    run("lightning_ticket.py", "--out", str(plain_out), "--plain-loader", "--resume",
        str(plain_out / "ckpt" / "step=30.ckpt"), env=env, stderr=stderr)
    assert NOT_RESUMABLE[:60] in stderr[0].replace("\n", " ")
    with pytest.raises(UserError, match="lottery.controls .* not supported by the Lightning callback"):
        LotteryTicketCallback(compress.recipe.recipe_from_dict({"lottery": {"controls": ["random_prune"]}}))


@pytest.mark.slow
def test_own_loop_example_controls_resume_in_a_fresh_process_and_onnx(tmp_path):
    import onnxruntime as ort

    out = tmp_path / "own"
    env = {"TICKET_ITERATIONS": "20"}
    stdout = run("own_loop.py", "--out", str(out), env=env)
    full = torch.load(out / "final.pt", weights_only=True)
    assert_rewound(torch.load(out / "weights_at_k.pt", weights_only=True),
                   torch.load(out / "after_rewind.pt", weights_only=True))
    # the recipe's controls were trained by the loop and are in the report, every pruned level
    levels = full["levels"]
    assert [row["level"] for row in levels] == [0, 1, 2]
    for row in levels[1:]:
        assert all(row[name] is not None and 0 <= row[name]["accuracy"] <= 1 for name in ("ticket", "reinit",
                                                                                          "random_prune"))
    assert "level 2: ticket" in stdout and "random_prune" in stdout
    # stopped mid-level 1 (step 30 of 52), resumed in a fresh process: equal to the uninterrupted run
    run("own_loop.py", "--out", str(out), "--stop-after", "30", env=env)
    run("own_loop.py", "--out", str(out), "--resume", str(out / "checkpoint.pt"), env=env)
    resumed = torch.load(out / "final.pt", weights_only=True)
    assert_same_run(full, resumed)
    assert resumed["levels"] == levels
    # ONNX equals torch on the folded ticket
    import torch.nn as nn

    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    net.load_state_dict(full["folded"])
    x = torch.randn(4, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    (got,) = ort.InferenceSession(str(out / "ticket.onnx")).run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(got), net.eval()(x), atol=1e-5)
