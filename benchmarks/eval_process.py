"""Whole-process time of `ovis eval` (start-up, imports, reading, evaluation), as a user runs it.

    python benchmarks/eval_process.py [--protocol coco] [--iou-type segm] [--repeat 3]

Defaults: the real fixture `tests/data/real/cocoapi_val2014_100` (100 val2014 images and
pycocotools' own fake segm results). Last line: ``runs=… min_s=… median_s=… max_s=… torch_imported=…``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "real" / "cocoapi_val2014_100"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", default="coco")
    ap.add_argument("--iou-type", default="segm", choices=("segm", "bbox"))
    ap.add_argument("--gt", type=Path, default=FIXTURE / "instances_val2014_100.json")
    ap.add_argument("--detections", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    dets = args.detections or FIXTURE / f"instances_val2014_fake{args.iou_type}100_results.json"
    cmd = [sys.executable, "-m", "ovis.cli", "eval", "--protocol", args.protocol, "--gt", str(args.gt),
           "--detections", str(dets), "--iou-type", args.iou_type]
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    probe = subprocess.run([sys.executable, "-c", "import sys, ovis.eval.cli; print('torch' in sys.modules)"],
                           check=True, capture_output=True, text=True).stdout.strip()
    print(" ".join(cmd[1:]))
    print(f"runs={len(times)} min_s={min(times):.2f} median_s={statistics.median(times):.2f} "
          f"max_s={max(times):.2f} torch_imported={int(probe == 'True')}")


if __name__ == "__main__":
    main()
