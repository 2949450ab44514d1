"""How small a ticket ships: the size table of an export (dense, raw, gzip, int8, compressed artifact).

    from compress.export.artifact.sizes import size_rows, size_table_markdown, run_sizes
    rows = size_rows("runs/x/ticket.onnx", workdir="/tmp/sizes")   # quantizes and packs into workdir
    print(size_table_markdown(rows))
    run_sizes("runs/x")   # a run dir's export: ticket.cta, ticket.int8[-dynamic].cta, compression.json

Rows (every size in bytes, ``ratio`` = dense fp32 bytes / these bytes):

* ``dense fp32 ONNX``: the dense model's file. A ticket's ONNX stores every weight, zeros included, in the
  same graph, so unless another file is given the dense size is the fp32 ticket's own size;
* ``fp32 ticket`` raw and gzip (level 6, ``compress.export.onnx.storage.GZIP_LEVEL``);
* ``int8 ticket`` raw and gzip: weights int8 (per-channel, symmetric, so pruned weights stay exactly 0):
  the run's ``ticket.int8.onnx`` when the export made one, else ``quantize_int8`` (dynamic);
* ``artifact (fp32 values)`` and ``artifact (int8 values)``: ``compress.export.artifact.pack_onnx`` of those.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

from compress.errors import UserError
from compress.export.artifact.files import pack_onnx
from compress.export.artifact.pack import CODEC, SUFFIX
from compress.export.onnx.storage import GZIP_LEVEL
from compress.io import load_json, save_json

SIZES_JSON = "compression.json"
AUTO_MAX_BYTES = 32_000_000  # report_sizes after an export: Conv-2 (17 MB) yes, VGG-19 / ResNet-18 not
INT8_SUFFIX = ".int8-dynamic.onnx"  # not ".int8.onnx": that name is the export's own int8 file
RUN_INT8 = "ticket.int8.onnx"
# Deep Compression (Han, Mao & Dally, ICLR 2016), Table 1: prune + quantize + Huffman, no accuracy loss
DEEP_COMPRESSION = (("LeNet-300-100 (MNIST)", "1070 KB", "27 KB", 40), ("LeNet-5 (MNIST)", "1720 KB", "44 KB", 39),
                    ("AlexNet (ImageNet)", "240 MB", "6.9 MB", 35), ("VGG-16 (ImageNet)", "552 MB", "11.3 MB", 49))


def quantize_int8(onnx_path: str | Path, out_path: str | Path) -> Path:
    """An int8-weight copy of ``onnx_path`` (written atomically), its metadata_props kept.

    ``compress.export.quantize.quantize_onnx`` in ``int8-dynamic`` mode: weights int8 per channel, symmetric
    (every pruned weight stays exactly 0), activations quantized at run time, so no calibration data is
    needed to size any export. A run's own ``ticket.int8.onnx`` (static QDQ for Conv graphs) is used instead
    where the export made one (``run_sizes``).
    """
    from compress.export.quantize.int8 import quantize_onnx

    quantize_onnx(Path(onnx_path), Path(out_path), mode="int8-dynamic")
    return Path(out_path)


def _gzip_size(path: Path) -> int:
    return len(gzip.compress(path.read_bytes(), GZIP_LEVEL))


def size_outputs(fp32_onnx: str | Path, workdir: str | Path) -> list[Path]:
    """The files ``size_rows`` (without ``int8_onnx``) writes into ``workdir``."""
    fp32 = Path(fp32_onnx)
    stem = fp32.name[:-len(".onnx")] if fp32.name.endswith(".onnx") else fp32.name
    int8 = Path(workdir) / f"{stem}{INT8_SUFFIX}"
    return [int8, Path(workdir) / f"{stem}{SUFFIX}", Path(workdir) / f"{int8.name[:-len('.onnx')]}{SUFFIX}"]


def size_rows(fp32_onnx: str | Path, workdir: str | Path, *, dense_onnx: str | Path | None = None,
              int8_onnx: str | Path | None = None) -> list[dict]:
    """The size table of one exported ticket; quantized and packed files are written into ``workdir``.

    ``dense_onnx``: the dense model's file (default: the ticket's own size, see the module docstring).
    ``int8_onnx``: an int8 model already made (default: ``quantize_int8`` into ``workdir``).
    """
    fp32 = Path(fp32_onnx)
    if not fp32.is_file():
        raise UserError(f"{fp32}: no such ONNX file")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    stem = fp32.name[:-len(".onnx")] if fp32.name.endswith(".onnx") else fp32.name
    int8 = Path(int8_onnx) if int8_onnx is not None else quantize_int8(fp32, workdir / f"{stem}{INT8_SUFFIX}")
    packed_fp32 = pack_onnx(fp32, workdir / f"{stem}{SUFFIX}")
    packed_int8 = pack_onnx(int8, workdir / f"{int8.name[:-len('.onnx')]}{SUFFIX}")
    dense = Path(dense_onnx).stat().st_size if dense_onnx is not None else fp32.stat().st_size
    dense_note = "dense model's file" if dense_onnx is not None else "same graph with every weight stored"
    entries = [
        ("dense fp32 ONNX", dense, dense_note, None),
        ("fp32 ticket, raw", fp32.stat().st_size, "exported ONNX, zeros stored", str(fp32)),
        ("fp32 ticket, gzip", _gzip_size(fp32), f"gzip -{GZIP_LEVEL}", None),
        ("int8 ticket, raw", int8.stat().st_size, "int8 weights, per channel", str(int8)),
        ("int8 ticket, gzip", _gzip_size(int8), f"gzip -{GZIP_LEVEL}", None),
        ("artifact, fp32 values", packed_fp32["artifact_bytes"], f"mask + values, {CODEC}", packed_fp32["path"]),
        ("artifact, int8 values", packed_int8["artifact_bytes"], f"mask + values, {CODEC}", packed_int8["path"]),
    ]
    return [{"what": what, "bytes": size, "ratio": dense / size, "note": note, "file": file}
            for what, size, note, file in entries]


def _kb(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


def size_table_markdown(rows: list[dict]) -> str:
    """A markdown table of ``size_rows``: what, bytes, kB/MB, × smaller than dense fp32, how."""
    lines = ["| file | bytes | size | × smaller than dense fp32 | how |", "|---|---:|---:|---:|---|"]
    lines += [f"| {row['what']} | {row['bytes']:,} | {_kb(row['bytes'])} | {row['ratio']:.1f}× | {row['note']} |"
              for row in rows]
    return "\n".join(lines)


def _digest(run_dir: Path, onnx_name: str) -> str:
    """sha256 of the exported ticket, and of the export's int8 file when there is one."""
    digest = hashlib.sha256((run_dir / onnx_name).read_bytes())
    if (run_dir / RUN_INT8).is_file():
        digest.update((run_dir / RUN_INT8).read_bytes())
    return digest.hexdigest()


def run_sizes(run_dir: str | Path, onnx_name: str = "ticket.onnx") -> list[dict] | None:
    """The size table of a run's exported ticket, cached in ``<run_dir>/compression.json``; None if not exported.

    Writes ``ticket.cta`` and the int8 artifact beside ``ticket.onnx``: of the export's ``ticket.int8.onnx``
    when there is one, else of ``ticket.int8-dynamic.onnx`` (``quantize_int8``). Reuses the cache while
    ``ticket.onnx`` and the int8 file are unchanged (their sha256).
    """
    run_dir = Path(run_dir)
    source = run_dir / onnx_name
    if not source.is_file():
        return None
    int8 = run_dir / RUN_INT8
    digest = _digest(run_dir, onnx_name)
    cache = run_dir / SIZES_JSON
    if cache.is_file():
        try:
            cached = load_json(cache)
            if cached.get("source_sha256") == digest:
                return cached["rows"]
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # a torn or foreign cache is recomputed
    rows = size_rows(source, run_dir, int8_onnx=int8 if int8.is_file() else None)
    for row in rows:  # paths relative to the run dir, so the cache survives a moved run dir
        if row["file"] is not None:
            row["file"] = Path(row["file"]).name
    save_json({"source": onnx_name, "source_sha256": digest, "rows": rows}, cache)
    return rows


def cached_run_sizes(run_dir: str | Path, onnx_name: str = "ticket.onnx") -> list[dict] | None:
    """The rows ``run_sizes`` cached for the run's current ``ticket.onnx``, without computing anything."""
    run_dir = Path(run_dir)
    cache, source = run_dir / SIZES_JSON, run_dir / onnx_name
    if not (cache.is_file() and source.is_file()):
        return None
    try:
        cached = load_json(cache)
        return cached["rows"] if cached.get("source_sha256") == _digest(run_dir, onnx_name) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def report_sizes(run_dir: str | Path) -> list[dict] | None:
    """After a run's export: its size table (``run_sizes``: computed, or the cache of this very export).

    None when there is no ``ticket.onnx`` or it exceeds ``AUTO_MAX_BYTES``: lzma packs ~1 MB/s here, so a
    45 MB ResNet-18 would add minutes to every run; ``tools/pack_ticket.py --sizes`` measures those on demand.
    Writes no report: the pipeline (``compress.pipeline``) does, with ``size_section`` of these rows.
    """
    source = Path(run_dir) / "ticket.onnx"
    if not source.is_file() or source.stat().st_size > AUTO_MAX_BYTES:
        return None
    return run_sizes(run_dir)


def size_section(rows: list[dict]) -> list[str]:
    """The report's section of the size table (markdown lines)."""
    return ["## Shipping the ticket: compressed size", "",
            "Bytes of the exported ticket; ratios against the dense fp32 ONNX. The artifacts (`ticket.cta`, the "
            "int8 one beside it) restore the ONNX file bit-exact: `python tools/pack_ticket.py --unpack ticket.cta`.",
            "", size_table_markdown(rows), ""]
