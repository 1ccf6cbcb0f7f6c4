"""Whole-process evaluation time: `ovis eval` vs pycocotools and faster-coco-eval (COCO AP), and vs
its own pycocotools-based reference (open-world AR@k).

Data: the 79 real COCO val2017 images of tests/data/real/coco_mini with synthetic detections from
`ovis.eval.synthetic` (perturbed GT masks and boxes, duplicates, wrong classes, false positives,
low-score fill; ties in scores), written to json files first, as a model's results would be.

(a) protocol `coco`, segm and bbox, `--per-image` detections per image: pycocotools' COCOeval
    script, faster-coco-eval 1.8.0's COCOeval_faster script and `ovis eval --protocol coco`, each a
    fresh Python process timed by wall clock; the 12 stats must agree to 1e-12 across all three.
(b) protocol `coco_voc_nonvoc` (class-agnostic AR@k, k <= 1500, seen hits removed from the budget),
    `--ar-per-image` detections per image: `ovis eval` with `--backend fast` (default) and with
    `--backend pycocotools` (the reference); every metric must be identical.

Runs are interleaved (tool order within a run fixed); medians are reported. Last line: key=value.
ovis's bytecode is compiled first: pycocotools and faster-coco-eval run from the .pyc files their
install wrote, and a checkout with PYTHONDONTWRITEBYTECODE=1 would otherwise recompile ovis's
modules in every timed process (30-40 ms).

    .venv/bin/python benchmarks/eval_speed.py [--runs 3] [--per-image 100] [--ar-per-image 1000]
"""

from __future__ import annotations

import argparse
import compileall
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ovis
from ovis.eval.synthetic import class_agnostic, repeat_gt, synthetic_detections

VAL = Path(__file__).resolve().parents[1] / "tests" / "data" / "real" / "coco_mini" / "annotations" / "instances_val2017.json"

# argv: gt, detections, iou type; prints the 12 stats as a JSON list
PYCOCOTOOLS = """
import contextlib, io, json, sys
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(sys.argv[1]); ev = COCOeval(gt, gt.loadRes(sys.argv[2]), sys.argv[3])
    ev.evaluate(); ev.accumulate(); ev.summarize()
print(json.dumps([float(s) for s in ev.stats]))
"""
FASTER_COCO_EVAL = """
import contextlib, io, json, sys
import faster_coco_eval
from faster_coco_eval import COCO, COCOeval_faster
assert faster_coco_eval.__version__ == "1.8.0", faster_coco_eval.__version__
with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(sys.argv[1]); ev = COCOeval_faster(gt, gt.loadRes(sys.argv[2]), sys.argv[3])
    ev.evaluate(); ev.accumulate(); ev.summarize()
print(json.dumps([float(s) for s in ev.stats]))
"""


def run(cmd: list[str]) -> tuple[float, dict | list]:
    """Wall time of one process and the JSON on the last line of its standard output."""
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - t0, json.loads(out.strip().splitlines()[-1])


def ovis_eval(protocol: str, gt: Path, dets: Path, iou_type: str, backend: str = "fast") -> list[str]:
    return [sys.executable, "-m", "ovis.cli", "eval", "--protocol", protocol, "--gt", str(gt),
            "--detections", str(dets), "--iou-type", iou_type, "--backend", backend]


def write_detections(dets: list[dict], iou_type: str, path: Path) -> Path:
    """Results json with the geometry of `iou_type` only (a segm file without boxes sizes by mask area)."""
    keep = ("image_id", "category_id", "score", "segmentation" if iou_type == "segm" else "bbox")
    path.write_text(json.dumps([{k: d[k] for k in keep} for d in dets]))
    return path


def timed(commands: dict[str, list[str]], runs: int) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Run every command `runs` times, interleaved; times per command and the last output of each."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    outputs: dict[str, object] = {}
    for _ in range(runs):
        for name, cmd in commands.items():
            seconds, outputs[name] = run(cmd)
            times[name].append(seconds)
    return times, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed processes per tool (interleaved)")
    parser.add_argument("--per-image", type=int, default=100, help="detections per image, protocol coco")
    parser.add_argument("--ar-per-image", type=int, default=1000, help="detections per image, AR@k")
    parser.add_argument("--ar-repeat", type=int, default=1, help="copies of the 79 images for AR@k")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    compileall.compile_dir(Path(ovis.__file__).parent, quiet=1)
    gt_data = json.loads(VAL.read_text())
    figures: dict[str, object] = {"images": len(gt_data["images"]), "per_image": args.per_image, "runs": args.runs}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        dets = synthetic_detections(gt_data, per_image=args.per_image, seed=args.seed)
        for iou_type in ("segm", "bbox"):
            path = write_detections(dets, iou_type, folder / f"coco_{iou_type}.json")
            commands = {
                "pycocotools": [sys.executable, "-c", PYCOCOTOOLS, str(VAL), str(path), iou_type],
                "faster": [sys.executable, "-c", FASTER_COCO_EVAL, str(VAL), str(path), iou_type],
                "ovis": ovis_eval("coco", VAL, path, iou_type),
            }
            times, out = timed(commands, args.runs)
            stats = {"pycocotools": out["pycocotools"], "faster": out["faster"], "ovis": out["ovis"]["metrics"]["stats"]}
            diff = max(abs(a - b) for name in ("faster", "ovis") for a, b in zip(stats[name], stats["pycocotools"]))
            med = {name: statistics.median(t) for name, t in times.items()}
            for name, t in times.items():
                print(f"coco {iou_type} {name}: " + " ".join(f"{s:.2f}" for s in t), flush=True)
            figures.update({
                f"coco_{iou_type}_pycocotools_s": round(med["pycocotools"], 2),
                f"coco_{iou_type}_faster_s": round(med["faster"], 2),
                f"coco_{iou_type}_ovis_s": round(med["ovis"], 2),
                f"coco_{iou_type}_ovis_vs_faster": round(med["faster"] / med["ovis"], 2),
                f"coco_{iou_type}_max_abs_diff": f"{diff:.1e}",
            })

        ar_gt = repeat_gt(gt_data, args.ar_repeat)
        ar_gt_path = folder / "ar_gt.json"
        ar_gt_path.write_text(json.dumps(ar_gt))
        ar_dets = class_agnostic(synthetic_detections(ar_gt, per_image=args.ar_per_image, seed=args.seed), 1)
        figures.update({"ar_images": len(ar_gt["images"]), "ar_per_image": args.ar_per_image})
        for iou_type in ("segm", "bbox"):
            path = write_detections(ar_dets, iou_type, folder / f"ar_{iou_type}.json")
            commands = {backend: ovis_eval("coco_voc_nonvoc", ar_gt_path, path, iou_type, backend)
                        for backend in ("pycocotools", "fast")}
            times, out = timed(commands, args.runs)
            for name, t in times.items():
                print(f"ar {iou_type} {name}: " + " ".join(f"{s:.2f}" for s in t), flush=True)
            ref, fast = statistics.median(times["pycocotools"]), statistics.median(times["fast"])
            figures.update({
                f"ar_{iou_type}_ref_s": round(ref, 2),
                f"ar_{iou_type}_fast_s": round(fast, 2),
                f"ar_{iou_type}_speedup": round(ref / fast, 1),
                f"ar_{iou_type}_identical": int(out["fast"]["metrics"] == out["pycocotools"]["metrics"]),
            })
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
