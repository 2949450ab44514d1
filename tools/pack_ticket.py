#!/usr/bin/env python
"""Pack an exported ticket for shipping, or restore it bit-exact. Never writes over an existing file.

    python tools/pack_ticket.py runs/NAME-HASH/ticket.onnx             # -> runs/NAME-HASH/ticket.cta
    python tools/pack_ticket.py ticket.onnx --out small.cta --sizes     # also the size table (int8 included)
    python tools/pack_ticket.py --unpack ticket.cta --out restored.onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path

from compress.cli import run_cli


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="the ONNX file to pack (or, with --unpack, the artifact to restore)")
    parser.add_argument("--out", metavar="FILE", help="file to write (default: the input with .cta, or with "
                                                      ".onnx for --unpack); never over an existing file")
    parser.add_argument("--unpack", action="store_true", help="restore an artifact to its ONNX file")
    parser.add_argument("--sizes", action="store_true", help="also print the size table: dense, gzip, int8 "
                                                             "(<stem>.int8-dynamic.onnx, <stem>.cta and "
                                                             "<stem>.int8-dynamic.cta next to --out, none of "
                                                             "which may exist yet)")
    args = parser.parse_args()

    from compress.export.artifact.files import pack_onnx, unpack_onnx
    from compress.export.artifact.pack import SUFFIX
    from compress.io import refuse_existing

    source = Path(args.path)
    if args.unpack:
        out = Path(args.out) if args.out else source.with_suffix(".onnx")
        refuse_existing([out], "name the restored file with another --out")
        proto = unpack_onnx(source, out)
        print(f"unpacked {source} -> {out} ({proto.ByteSize():,} bytes, sha256 checked against the packed model)")
        return 0
    out = Path(args.out) if args.out else source.with_suffix(SUFFIX)
    if args.sizes:
        from compress.export.artifact.sizes import size_outputs

        refuse_existing([out, *(p for p in size_outputs(source, out.parent) if p != out)],
                        "remove it, or pass an --out in another folder")
    else:
        refuse_existing([out], "remove it, or name another --out")
    info = pack_onnx(source, out)
    print(f"packed {source} ({info['source_bytes']:,} bytes) -> {out} ({info['artifact_bytes']:,} bytes, "
          f"{info['ratio']:.1f}x smaller; {info['codec']}; restores bit-exact)")
    for tensor in info["tensors"]:
        print(f"  {tensor['name']}: {tensor['nnz']:,}/{tensor['count']:,} kept, {tensor['encoding']}, "
              f"{tensor['stored']:,} bytes")
    if args.sizes:
        from compress.export.artifact.sizes import size_rows, size_table_markdown

        print(size_table_markdown(size_rows(source, out.parent)))
    return 0


if __name__ == "__main__":
    run_cli(main)
