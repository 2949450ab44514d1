"""A run's int8 ticket: quantize the verified fp32 export, verify it, measure it, and fine-tune (QAT) if asked.

Checks on ``ticket.int8.onnx``: ``onnx.checker`` (full), onnxruntime runs at two batch sizes, every exact
zero of each pruned fp32 weight is an int8 zero with zero point 0 (``quantize.check_int8_zeros``), the
preprocessing metadata is still there, and -- with the dataset -- its test accuracy from raw pixels beside
the fp32 ticket's. QAT (``export.qat``): ``on`` always; ``auto`` when post-training int8 loses more than
``export.qat_tolerance`` against fp32; the fine-tuned fp32 model is exported (``ticket.qat.onnx``,
verified like any export) and quantized the same way, and its int8 replaces the post-training one.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn

from compress.errors import UserError
from compress.export.onnx.export import ExportReport, export_onnx
from compress.export.onnx.preprocess import MODE_KEY, Preprocess, preprocess_from_data
from compress.export.onnx.verify import check_onnx, max_abs_diff, ort_outputs
from compress.export.quantize.int8 import check_int8_zeros, choose_mode, quantize_onnx
from compress.io import save_bytes
from compress.pruning import fold_masks, get_masks


def int8_path(target: Path) -> Path:
    return target.with_name(f"{target.stem}.int8{target.suffix or '.onnx'}")


def qat_path(target: Path) -> Path:
    return target.with_name(f"{target.stem}.qat{target.suffix or '.onnx'}")


def graph_inputs(x: torch.Tensor, preprocess: Preprocess | None) -> torch.Tensor:
    """Normalised tensors (the toolkit's) -> what the exported graph takes (``pixel / 255`` when embedded)."""
    if preprocess is None or not preprocess.embedded:
        return x
    channels = len(preprocess.mean)
    return x * torch.tensor(preprocess.std).view(1, channels, 1, 1) + torch.tensor(preprocess.mean).view(
        1, channels, 1, 1)


def calibration_inputs(data, count: int, preprocess: Preprocess | None) -> np.ndarray:
    """The first ``count`` training examples of the run's split, as the graph takes them."""
    x, _ = next(iter(data.train.eval_batches(count)))
    return graph_inputs(x.float().cpu(), preprocess).numpy()


def _folded_weights(model: nn.Module) -> dict[str, np.ndarray]:
    folded = fold_masks(model).cpu().float().eval()
    modules = dict(folded.named_modules())
    return {f"{name}.weight": modules[name].weight.detach().numpy() for name in get_masks(model)}


def _quantize_checked(model: nn.Module, fp32: Path, zeros: dict, mode: str, calibration: np.ndarray | None,
                      inputs: torch.Tensor | None, what: str) -> tuple[bytes, dict]:
    result = quantize_onnx(fp32, mode=mode, calibration=calibration)
    proto = onnx.load_from_string(result.data)
    check_onnx(proto, what)
    fp32_proto = onnx.load(str(fp32))
    if any(p.key == MODE_KEY for p in fp32_proto.metadata_props) and \
            not any(p.key == MODE_KEY for p in proto.metadata_props):
        raise RuntimeError(f"{what}: the preprocessing metadata did not survive quantization")
    int8_zeros = check_int8_zeros(proto, zeros, _folded_weights(model), what)
    report = {"mode": result.mode, "rule": result.rule, "calibration_examples": result.calibration_examples,
              "zeros": int8_zeros}
    if inputs is not None:
        fp32_out = ort_outputs(fp32.read_bytes(), [inputs], f"{fp32.name}")[0]
        full, single = ort_outputs(result.data, [inputs, inputs[:1]], what)
        report["max_abs_diff_vs_fp32"] = max_abs_diff(full, [torch.from_numpy(o) for o in fp32_out])
        report["argmax_agreement_vs_fp32"] = float(np.mean(full[0].argmax(1) == fp32_out[0].argmax(1)))
        report["verify_batch"] = int(inputs.shape[0])
        if single[0].shape[0] != 1:
            raise UserError(f"{what}: onnxruntime gave batch {single[0].shape[0]} for a batch of 1")
    return result.data, report


def export_int8(model: nn.Module, target: Path, report: ExportReport, recipe, data, settings, opset: int,
                inputs: torch.Tensor | None, fp32_accuracy: float | None) -> dict:
    """Quantize the verified fp32 ``target`` to ``<stem>.int8.onnx`` (module docstring); the report part."""
    from compress.export.onnx.accuracy import onnx_test_accuracy

    what = int8_path(target).name
    mode, _ = choose_mode(onnx.load(str(target)), settings.quantize)
    if mode == "int8-static" and data is None:
        raise UserError(f"{what}: static int8 needs the run's dataset for calibration; it does not load")
    pre = None
    if data is not None:
        shape = tuple(report.input_shape)
        pre = preprocess_from_data(recipe.data.name, data, shape, embedded=settings.preprocess == "embed",
                                   resize_to=recipe.data.image_size)
    calibration = calibration_inputs(data, settings.calibration_size, pre) if data is not None else None
    graph_in = graph_inputs(inputs, pre) if inputs is not None else None
    data_bytes, result = _quantize_checked(model, target, report.zeros, settings.quantize, calibration, graph_in,
                                           what)
    result["path"] = str(int8_path(target))
    if data is not None:
        result["accuracy_fp32"] = fp32_accuracy if fp32_accuracy is not None else onnx_test_accuracy(target, recipe)
        result["accuracy_int8"] = onnx_test_accuracy(data_bytes, recipe)
        result["accuracy_drop"] = result["accuracy_fp32"] - result["accuracy_int8"]
    drop = result.get("accuracy_drop")
    need = settings.qat == "on" or (settings.qat == "auto" and drop is not None and drop > settings.qat_tolerance)
    result["qat"] = {"setting": settings.qat, "tolerance": settings.qat_tolerance, "ran": bool(need and data)}
    if settings.qat == "auto" and drop is None:
        result["qat"]["note"] = "no test data: post-training loss unknown, QAT not run"
    if need and data is not None:
        data_bytes, result = _with_qat(model, target, recipe, data, settings, opset, inputs, pre, calibration,
                                       result, what)
    save_bytes(data_bytes, int8_path(target))
    return result


def _with_qat(model: nn.Module, target: Path, recipe, data, settings, opset: int, inputs: torch.Tensor | None,
              pre: Preprocess | None, calibration: np.ndarray | None, result: dict, what: str) -> tuple[bytes, dict]:
    """Fine-tune a copy with fake-quantized weights, export it verified, quantize it, measure it."""
    from compress.export.onnx.accuracy import onnx_test_accuracy
    from compress.export.quantize.qat import qat_finetune

    tuned = copy.deepcopy(model)
    train = recipe.train
    stats = qat_finetune(tuned, data, iterations=settings.qat_iterations, lr=train.optimizer.lr * 0.1,
                         batch_size=train.batch_size, seed=recipe.seed, augment=recipe.data.augment)
    fp32_qat = qat_path(target)
    qat_report = export_onnx(tuned, fp32_qat, inputs[:2], opset=opset, verify_inputs=inputs, preprocess=pre)
    data_bytes, qat_result = _quantize_checked(tuned, fp32_qat, qat_report.zeros, settings.quantize, calibration,
                                               graph_inputs(inputs, pre), what)
    post_training = {key: result.pop(key) for key in ("accuracy_int8", "accuracy_drop") if key in result}
    result.update(qat_result)
    result["path"] = str(int8_path(target))
    result["post_training"] = post_training
    result["accuracy_int8"] = onnx_test_accuracy(data_bytes, recipe)
    result["accuracy_drop"] = result["accuracy_fp32"] - result["accuracy_int8"]
    result["qat"].update(stats, fp32_path=str(fp32_qat), accuracy_fp32_after_qat=onnx_test_accuracy(fp32_qat, recipe))
    return data_bytes, result
