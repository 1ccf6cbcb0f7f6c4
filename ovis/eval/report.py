"""Evaluate a run folder and write its metrics files (what `ovis eval --out` and notebook 04 do)."""

from __future__ import annotations

from pathlib import Path

from ovis.eval.io import EvalInputError
from ovis.eval.protocols import evaluate, jsonable, metrics_markdown, read_partition
from ovis.io import write_json_atomic, write_text_atomic
from ovis.runs import EVAL_METRICS, RunLayout


def write_metrics(result: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write `out_dir/metrics.json` (the full result, protocol named) and `out_dir/metrics.md`."""
    out = Path(out_dir)
    json_path = write_json_atomic(jsonable(result), out / EVAL_METRICS)
    md_path = write_text_atomic(metrics_markdown(result), out / "metrics.md")
    return json_path, md_path


def evaluate_run(
    run_dir: str | Path,
    detections: str | Path = "",
    protocol: str = "",
    iou_type: str = "segm",
    backend: str = "fast",
) -> dict:
    """Evaluate a run: GT `run_dir/splits/val.json`, partition `run_dir/splits/partition.json`,
    detections `run_dir/eval/detections.json` (or its rank shards) unless given; the protocol
    defaults to the partition's `protocol`. Writes `run_dir/eval/metrics.{json,md}`."""
    layout = RunLayout(run_dir)
    part_path = layout.split("partition.json")
    partition = read_partition(part_path) if part_path.is_file() else None
    if not protocol:
        if not partition or "protocol" not in partition:
            raise EvalInputError(f"no protocol given and {part_path} names none; pass protocol=")
        protocol = partition["protocol"]
    result = evaluate(protocol, layout.split("val.json"), detections or layout.detections(), iou_type, partition, backend)
    write_metrics(result, layout.stage("eval"))
    return result
