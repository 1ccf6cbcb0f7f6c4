"""Evaluation under named protocols: `coco`, `coco_ovr_48_17` (CPL/XPM AP50 per split) and
`coco_voc_nonvoc` (OLN/GGN class-agnostic AR@k with seen hits removed from the budget).

`evaluate(protocol, gt, detections, iou_type, partition, backend)` is the entry point; the CLI is
`ovis eval` (`ovis.eval.cli`).
"""

from ovis.eval.io import EvalInputError, load_detections, merge_shards
from ovis.eval.protocols import Protocol, evaluate, get_protocol, metrics_markdown

__all__ = [
    "EvalInputError",
    "Protocol",
    "evaluate",
    "get_protocol",
    "load_detections",
    "merge_shards",
    "metrics_markdown",
]
