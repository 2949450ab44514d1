"""Read back what each tracker wrote, with the trackers' own readers (imported by name by the tests)."""

from __future__ import annotations

import json
import struct
from collections import defaultdict
from pathlib import Path


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of the run in ``folder`` through TensorBoard's EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def mlflow_metrics(run_dir: Path, run_name: str) -> tuple[dict[str, list[tuple[int, float]]], dict[str, str]]:
    """({metric: [(step, value)]}, params) of the MLflow run ``run_name`` in the file store ``run_dir/mlruns``."""
    import os

    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(Path(run_dir) / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name(Path(run_dir).resolve().name)
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name == run_name]
    assert len(runs) == 1, f"{len(runs)} MLflow runs named {run_name!r}"
    run = runs[0]
    metrics = {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
               for key in run.data.metrics}
    return metrics, run.data.params


def _leveldb_records(data: bytes):
    """The payloads of a W&B transaction log: a 7-byte header, then LevelDB log blocks of 32 KiB."""
    assert data[:4] == b":W&B", "not a W&B offline run file"
    pos, block, chunks = 7, 32768, b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # a block's tail too small for a header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        chunks += payload
        if kind in (1, 4):  # FULL or LAST
            yield chunks
            chunks = b""


def wandb_history(folder: Path) -> tuple[dict[str, list[tuple[int, float]]], dict]:
    """({key: [(step, value)]}, config) from every offline run file under ``folder/wandb``."""
    from wandb.proto import wandb_internal_pb2

    history: dict[str, list[tuple[int, float]]] = defaultdict(list)
    config: dict = {}
    for path in sorted(Path(folder).glob("wandb/offline-run-*/run-*.wandb")):
        for payload in _leveldb_records(path.read_bytes()):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            kind = record.WhichOneof("record_type")
            if kind == "history":
                step = record.history.step.num
                for item in record.history.item:
                    key = item.key or "/".join(item.nested_key)
                    if not key.startswith("_"):
                        history[key].append((step, json.loads(item.value_json)))
            elif kind == "config":
                for item in record.config.update:
                    config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return dict(history), config
