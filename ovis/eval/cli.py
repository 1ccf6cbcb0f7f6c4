"""`ovis eval`: evaluate a detections file under a named protocol.

The last line of standard output is one JSON object {"protocol", "iou_type", "metrics"}; with
--out DIR, DIR/metrics.json (the full result) and DIR/metrics.md (a table) are written too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from ovis.eval.io import EvalInputError
from ovis.eval.protocols import evaluate
from ovis.eval.report import write_metrics
from ovis.locks import folder_lock
from ovis.protocols import protocol_names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ovis eval", description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", required=True, choices=sorted(protocol_names("eval")), help="named protocol")
    parser.add_argument("--gt", required=True, help="COCO instances json (a split's val json)")
    parser.add_argument(
        "--detections", required=True,
        help="COCO results json, or a folder / missing X.json whose rank shards (X.rank*.json) are merged",
    )
    parser.add_argument("--iou-type", default="segm", choices=("segm", "bbox"))
    parser.add_argument("--partition", default=None, help="partition.json with base/novel category lists")
    parser.add_argument("--backend", default="fast", choices=("fast", "pycocotools"),
                        help="evaluator: vectorised (default) or pycocotools' COCOeval, the reference; same numbers")
    parser.add_argument("--segm-area", default="mask", choices=("mask", "box"),
                        help="segm APs/APm/APl size a detection by its mask (detectron2, default) or by its "
                             "bbox (pycocotools on results that carry one)")
    parser.add_argument("--out", default=None, help="folder for metrics.json and metrics.md")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    # --out is locked before the work: two evals into one folder, the second fails at once
    with folder_lock(args.out) if args.out else contextlib.nullcontext():
        try:
            result = evaluate(args.protocol, args.gt, args.detections, args.iou_type, args.partition, args.backend,
                              args.segm_area)
        except (EvalInputError, json.JSONDecodeError) as e:
            print(f"ovis eval: error: {e}", file=sys.stderr)
            return 2
        for note in result["notes"]:
            print(f"ovis eval: note: {note}", file=sys.stderr)
        if args.out:
            write_metrics(result, args.out)
    summary = {"protocol": result["protocol"], "iou_type": result["iou_type"], "segm_area": result["segm_area"],
               "metrics": result["metrics"]}
    print(json.dumps(summary))
    return 0
