#!/usr/bin/env python
"""Export a run's lottery ticket to verified ONNX: python tools/export_onnx.py --run runs/NAME-HASH [--compact]"""

from __future__ import annotations

import argparse

from compress.cli import run_cli


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", required=True, metavar="DIR", help="run directory written by tools/find_ticket.py")
    parser.add_argument("--round", type=int, metavar="N", help="export round N (final weights) instead of ticket.pt")
    parser.add_argument("--out", metavar="FILE", help="ONNX file to write, or a folder to write ticket.onnx in "
                                                      "(default: the run dir, or round_NN/ with --round)")
    parser.add_argument("--compact", action="store_true", help="also write an exactly compacted model "
                                                               "(dead units removed; nn.Sequential models)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    args = parser.parse_args()

    from compress.export import export_run, format_report

    result = export_run(args.run, round=args.round, out=args.out, compact=args.compact, opset=args.opset)
    print(format_report(result))
    return 0


if __name__ == "__main__":
    run_cli(main)
