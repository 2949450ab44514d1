"""``export_run``: export a run's ticket (or one round) to ONNX, verified on real test inputs."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn

from compress import paths
from compress.errors import UserError, first_line
from compress.export.onnx.export import compact_path, export_onnx
from compress.export.onnx.preprocess import preprocess_from_data
from compress.io import check_target, file_sha256, load_torch, save_json

EXPORT_JSON = "export.json"
VERIFY_BATCH = 32  # test examples run through torch and onnxruntime


def _finished_rounds(run_dir: Path) -> list[int]:
    rounds = []
    for folder in sorted(run_dir.glob("round_*")):
        suffix = folder.name[len("round_"):]
        if suffix.isdigit() and (folder / paths.FINAL).exists() and (folder / paths.MASK).exists():
            rounds.append(int(suffix))
    return rounds


def _load_recipe(run_dir: Path):
    """The run's recipe, or None and why not (a ticket alone still exports, on random inputs)."""
    path = run_dir / paths.RECIPE
    if not path.exists():
        return None, f"no {paths.RECIPE} in the run dir"
    from compress.recipe import load_recipe

    try:
        return load_recipe(path), ""
    except ValueError as error:  # RecipeError is a ValueError
        return None, f"{paths.RECIPE} does not load ({first_line(error)})"


def _test_batch(recipe, recipe_note: str, shape: tuple[int, ...] | None, batch: int):
    """The first ``batch`` test examples of the run's dataset, the loaded data, and a note on failure."""
    if recipe is None:
        return None, None, recipe_note
    from compress.data import load_dataset

    config = recipe.data
    if hasattr(config, "download"):
        config = dataclasses.replace(config, download=False)  # an export never fetches a dataset
    try:
        data = load_dataset(config, recipe.seed, torch.device("cpu"))
        x, _ = next(iter(data.test.eval_batches(batch)))
    except (OSError, ValueError) as error:
        # missing files, no network (OSError), a missing or corrupt dataset (UserError, a ValueError): no data,
        # said in the report and on stderr. Anything else is a bug and keeps its traceback: verification never
        # turns to random inputs silently.
        note = f"{config.name} not loaded: {first_line(error)}"
        print(f"warning: export verification on random inputs: {note}", file=sys.stderr)
        return None, None, note
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        return None, data, f"test inputs are {tuple(x.shape[1:])}, the model takes {tuple(shape)}"
    return x.float(), data, ""


def _round_model(run_dir: Path, round_index: int, recipe, ticket: dict | None, data) -> nn.Module:
    """A fresh model of the recipe with the round's masks and trained (final) weights."""
    from compress.models import build_model
    from compress.pruning import apply_masks

    folder = paths.round_dir(run_dir, round_index)
    if recipe is None and ticket is None:
        raise UserError(f"{run_dir}: exporting round {round_index} needs the run's {paths.RECIPE} or {paths.TICKET}")
    if ticket is not None:
        from compress.recipe.schema import ModelConfig

        config = ModelConfig(**{**ticket["model"], "kwargs": dict(ticket["model"].get("kwargs", {}))})
        shape = ticket["shape"]
        classes, channels, side = shape["num_classes"], shape["in_channels"], shape["image_size"]
    elif data is not None:
        config = recipe.model
        classes, channels = data.num_classes, data.in_channels
        side = recipe.data.image_size or data.image_size
    else:
        raise UserError(f"{run_dir}: no {paths.TICKET} and the dataset does not load, so the model's input "
                         f"shape is unknown; cannot rebuild round {round_index}")
    # pretrained=False: the round's trained weights overwrite whatever a model hub would send
    model = build_model(dataclasses.replace(config, pretrained=False), classes, channels, side)
    masks = load_torch(folder / paths.MASK, map_location="cpu")  # refuses pickled code, names a cut file
    state = load_torch(folder / paths.FINAL, map_location="cpu")
    try:
        apply_masks(model, masks)
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as error:
        raise UserError(f"{folder}: {paths.FINAL} / {paths.MASK} do not fit the run's model "
                         f"({first_line(error)})") from error
    return model.eval()


def _target(out: str | Path) -> Path:
    """``out`` as the ONNX file to write: ``<out>/ticket.onnx`` when it is a folder (or ends with a slash)."""
    text = str(out)
    path = Path(out)
    if path.is_dir() or text.endswith(("/", os.sep)):
        return path / paths.TICKET_ONNX
    existing = next((parent for parent in path.parents if parent.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UserError(f"{out}: cannot write there, {existing} is a file, not a folder")
    return path


@dataclasses.dataclass(frozen=True)
class _Settings:
    """``export.*`` of the recipe, overridden by export_run's arguments."""

    preprocess: str = "metadata"
    quantize: str = "none"
    qat: str = "auto"
    qat_tolerance: float = 0.005
    qat_iterations: int = 300
    calibration_size: int = 256


def _settings(recipe, **given) -> _Settings:
    base = _Settings()
    if recipe is not None:
        base = _Settings(**{f.name: getattr(recipe.export, f.name, getattr(base, f.name))
                            for f in dataclasses.fields(_Settings)})
    settings = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
    from compress.recipe.schema import QAT_MODES
    from compress.registry import PREPROCESS_MODES, QUANTIZE_MODES

    for key, allowed in (("preprocess", PREPROCESS_MODES), ("quantize", QUANTIZE_MODES), ("qat", QAT_MODES)):
        if getattr(settings, key) not in allowed:
            raise UserError(f"export.{key}: {getattr(settings, key)!r} is not one of {', '.join(allowed)}")
    if settings.qat == "on" and settings.quantize == "none":  # never ignore a setting silently
        raise UserError("qat on needs an int8 export: pass --quantize int8 (or int8-static / int8-dynamic), "
                        "or --qat off")
    return settings


def export_run(run_dir: str | Path, *, round: int | None = None, out: str | Path | None = None,
               compact: bool = False, opset: int = 17, preprocess: str | None = None, quantize: str | None = None,
               qat: str | None = None, accuracy: bool = True) -> dict:
    """Export a run's ticket (``ticket.pt``) or round ``round`` (final.pt + mask.pt) to ONNX, verified.

    Writes ``ticket.onnx`` (+ ``ticket.compact.onnx`` with ``compact``, ``ticket.int8.onnx`` with
    ``quantize``) and ``export.json`` (the report) into the run dir -- into ``round_NN/`` for a round --
    or ``out`` (a file, or a folder to write ``ticket.onnx`` in; the report goes next to it as
    ``<stem>.export.json``). Verification uses the first test examples of the run's dataset (never
    downloaded here); when they cannot be loaded, seeded random inputs, and ``inputs`` says why.
    ``preprocess`` / ``quantize`` / ``qat``: None = the run recipe's ``export.*`` (else the defaults).
    ``accuracy``: also measure the torch and onnxruntime (raw images, as the metadata says) test accuracy.
    """
    from compress.ticket import read_ticket, ticket_model

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run dir")
    ticket_path = run_dir / paths.TICKET
    ticket = read_ticket(ticket_path) if ticket_path.exists() else None
    if round is None and ticket is None:
        raise UserError(f"{run_dir}: no {paths.TICKET} (not a run dir, or no round finished yet); "
                         "pass --round N to export a finished round")
    if round is not None:
        done = _finished_rounds(run_dir)
        if isinstance(round, bool) or not isinstance(round, int) or round not in done:
            listed = ", ".join(map(str, done)) or "none"
            raise UserError(f"{run_dir}: round {round} has no {paths.FINAL} + {paths.MASK} (finished rounds: {listed})")
    recipe, recipe_note = _load_recipe(run_dir)
    settings = _settings(recipe, preprocess=preprocess, quantize=quantize, qat=qat)

    shape = None
    if ticket is not None:
        side = ticket["shape"]["image_size"]
        shape = (ticket["shape"]["in_channels"], side, side)
    inputs, data, data_note = _test_batch(recipe, recipe_note, shape, VERIFY_BATCH)
    if round is None:
        model, source = ticket_model(ticket), f"{paths.TICKET} (round {ticket['info'].get('round', '?')})"
        default_dir = run_dir
    else:
        model, source = _round_model(run_dir, round, recipe, ticket, data), f"round {round}"
        default_dir = paths.round_dir(run_dir, round)
    if shape is None and data is not None:
        side = recipe.data.image_size or data.image_size
        shape = (data.in_channels, side, side)

    target = _target(out) if out is not None else default_dir / paths.TICKET_ONNX
    report_path = target.with_name(f"{target.stem}.{EXPORT_JSON}") if out is not None else default_dir / EXPORT_JSON
    # before any work: a device, FIFO or link there is refused now, not after minutes of verification
    for path in (target, report_path, compact_path(target) if compact else None,
                 _int8_target(target) if settings.quantize != "none" else None):
        if path is not None:
            check_target(path)
    pre = None
    if data is not None:
        pre = preprocess_from_data(recipe.data.name, data, shape, embedded=settings.preprocess == "embed",
                                   resize_to=recipe.data.image_size)
    elif settings.preprocess == "embed":
        raise UserError(f"export.preprocess: embed needs the run's dataset for its mean / std ({data_note})")
    if inputs is not None:
        report = export_onnx(model, target, inputs[:2], opset=opset, verify_inputs=inputs, compact=compact,
                             preprocess=pre)
        report_dict = report.to_dict()
        report_dict["inputs"] = f"{len(inputs)} test examples of {recipe.data.name}"
    else:
        example = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
        report = export_onnx(model, target, example, opset=opset, compact=compact)
        report_dict = report.to_dict()
        report_dict["inputs"] = f"{report.inputs} -- test data unavailable: {data_note}"
        report_dict["preprocess_note"] = f"no preprocessing recorded: {data_note}"
    exported_round = round if round is not None else ticket["info"].get("round")
    result = {"run_dir": str(run_dir), "source": source, "round": exported_round, "report": str(report_path),
              "settings": dataclasses.asdict(settings), **report_dict}
    if round is None:  # what the pipeline compares to reuse this export: the very ticket it was made of
        result["ticket_sha256"] = file_sha256(ticket_path)
    if compact:
        result["compact_path"] = str(compact_path(target))
    if accuracy and data is not None:
        result["accuracy"] = _accuracies(model, data, recipe, target, compact, ticket if round is None else None)
    if settings.quantize != "none":
        from compress.export.quantize.export import export_int8

        result["int8"] = export_int8(model, target, report, recipe, data, settings, opset, inputs,
                                     fp32_accuracy=result.get("accuracy", {}).get("onnx_raw_images"))
    save_json(stored_paths(result, run_dir), report_path)  # a copied run dir must not point at the original
    return result


_PATH_KEYS = ("path", "report", "compact_path", "run_dir")


def stored_paths(result: dict, run_dir: Path) -> dict:
    """``result`` with its file paths inside ``run_dir`` made relative to it (``.`` for the run dir)."""
    base = Path(run_dir).resolve()

    def convert(value):
        if isinstance(value, dict):
            return {key: (_relative(item, base) if key in _PATH_KEYS and isinstance(item, str) else convert(item))
                    for key, item in value.items()}
        return value

    return convert(result)


def anchored_paths(result: dict, run_dir: Path) -> dict:
    """The inverse of ``stored_paths``: the paths of an ``export.json`` read back, joined to ``run_dir``."""
    def convert(value):
        if isinstance(value, dict):
            return {key: (str(Path(run_dir) / item) if key in _PATH_KEYS and isinstance(item, str) else convert(item))
                    for key, item in value.items()}
        return value

    return convert(result)


def _relative(text: str, base: Path) -> str:
    try:
        return str(Path(text).resolve().relative_to(base))
    except ValueError:  # outside the run dir (--out elsewhere): kept as written
        return text


def _int8_target(target: Path) -> Path:
    from compress.export.quantize.export import int8_path

    return int8_path(target)


def _accuracies(model: nn.Module, data, recipe, target: Path, compact: bool, ticket: dict | None) -> dict:
    """Test accuracy of the torch model on the toolkit's normalised split and of the ONNX file(s) through
    onnxruntime from the dataset's raw pixels, preprocessed as the file's metadata (or graph) says."""
    from compress.export.onnx.accuracy import onnx_test_accuracy
    from compress.pruning import fold_masks
    from compress.training.evaluate import evaluate

    _, torch_accuracy = evaluate(fold_masks(model).eval(), data.test)
    result = {"test_examples": len(data.test), "torch_ticket": torch_accuracy,
              "onnx_raw_images": onnx_test_accuracy(target, recipe)}
    if ticket is not None and "test_accuracy" in ticket["info"]:
        result["run_reported"] = ticket["info"]["test_accuracy"]  # the final weights ticket.pt holds
        if "early_stop_test_accuracy" in ticket["info"]:
            # what the summary prints: the same round at its early-stop iteration, not the weights exported
            result["run_early_stop"] = ticket["info"]["early_stop_test_accuracy"]
    if compact:
        result["compact_onnx_raw_images"] = onnx_test_accuracy(compact_path(target), recipe)
    result.update(_openvino_accuracies(target, recipe))
    return result


def _openvino_accuracies(target: Path, recipe) -> dict:
    """OpenVINO f32 and bf16 accuracy from raw images, and the precision bf16 really ran at (a CPU without
    bf16 kernels runs it as f32); nothing when OpenVINO is not installed.

    Measured in a child process: once OpenVINO's runtime (its TBB allocator and thread pool) has run in a
    process, joining DataLoader worker processes there later crashed (SIGSEGV in poll), and one process
    may run several experiments (tools/reproduce.py)."""
    from compress.export.onnx import openvino

    if openvino.available() is not None:
        return {"openvino_note": openvino.available()}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_openvino_accuracies_here, Path(target), recipe).result()


def _openvino_accuracies_here(target: Path, recipe) -> dict:
    from compress.export.onnx import openvino
    from compress.export.onnx.accuracy import onnx_test_accuracy

    ran = openvino.inference_precision(openvino.compile_onnx(target, "bf16", threads=1))
    return {"openvino_f32_raw_images": onnx_test_accuracy(target, recipe, runtime="openvino", precision="f32"),
            "openvino_bf16_raw_images": onnx_test_accuracy(target, recipe, runtime="openvino", precision="bf16"),
            "openvino_bf16_ran_as": ran}
