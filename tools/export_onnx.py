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
    parser.add_argument("--preprocess", choices=("metadata", "embed"),
                        help="record the input normalisation in metadata_props, or embed it in the graph "
                             "(then it takes pixel / 255); default: the run recipe's export.preprocess")
    parser.add_argument("--quantize", choices=("none", "int8", "int8-static", "int8-dynamic"),
                        help="also write <stem>.int8.onnx (int8 = dynamic for Linear-only nets, static QDQ "
                             "otherwise); default: the run recipe's export.quantize")
    parser.add_argument("--qat", choices=("auto", "off", "on"),
                        help="quantization-aware fine-tuning before int8 (auto: when int8 loses more than "
                             "export.qat_tolerance); default: the recipe's export.qat")
    parser.add_argument("--no-accuracy", action="store_true",
                        help="skip the full test-set accuracy (torch, and onnxruntime from raw images)")
    args = parser.parse_args()

    from compress.pipeline import export_run, format_report

    result = export_run(args.run, round=args.round, out=args.out, compact=args.compact, opset=args.opset,
                        preprocess=args.preprocess, quantize=args.quantize, qat=args.qat,
                        accuracy=not args.no_accuracy)
    print(format_report(result))
    return 0


if __name__ == "__main__":
    run_cli(main)
