"""Time open-world AR@k (coco_voc_nonvoc, 1500 detections per image) fast path vs pycocotools.

GT: the 79 real COCO val2017 images of tests/data/real/coco_mini repeated (renumbered) to
>= 200 images of their real sizes; detections: `ovis.eval.synthetic` (perturbed GT masks,
duplicates, false positives, low-score fill to 1500 per image, seen-class hits). Both backends
run through `ovis.eval.evaluate` on the same in-memory detections; `identical=1` means the
recall arrays are bit-identical. Last line: key=value pairs.

    .venv/bin/python benchmarks/eval_speed.py [--repeat 3] [--per-image 1500]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ovis.eval import evaluate
from ovis.eval.synthetic import class_agnostic, repeat_gt, synthetic_detections

VAL = Path(__file__).resolve().parents[1] / "tests" / "data" / "real" / "coco_mini" / "annotations" / "instances_val2017.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="copies of the 79 images (3 -> 237)")
    parser.add_argument("--per-image", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    gt = repeat_gt(json.loads(VAL.read_text()), args.repeat)
    t0 = time.perf_counter()
    dets = class_agnostic(synthetic_detections(gt, per_image=args.per_image, seed=args.seed), 1)
    gen_s = time.perf_counter() - t0
    figures: dict[str, float | int] = {"images": len(gt["images"]), "dets": len(dets), "gen_s": round(gen_s, 1)}
    for iou_type in ("segm", "bbox"):
        timings, results = {}, {}
        for backend in ("pycocotools", "fast"):
            t0 = time.perf_counter()
            results[backend] = evaluate("coco_voc_nonvoc", gt, dets, iou_type, backend=backend)
            timings[backend] = time.perf_counter() - t0
        same = np.array_equal(results["fast"]["recall"], results["pycocotools"]["recall"]) and (
            results["fast"]["metrics"] == results["pycocotools"]["metrics"]
        )
        m = results["fast"]["metrics"]
        print(f"{iou_type}: ref {timings['pycocotools']:.1f}s fast {timings['fast']:.1f}s "
              f"AR@100={m['AR@100']:.4f} AR@1000={m['AR@1000']:.4f} AUC={m['AUC']:.4f}", flush=True)
        figures.update({
            f"{iou_type}_ref_s": round(timings["pycocotools"], 2),
            f"{iou_type}_fast_s": round(timings["fast"], 2),
            f"{iou_type}_speedup": round(timings["pycocotools"] / timings["fast"], 1),
            f"{iou_type}_identical": int(same),
        })
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
