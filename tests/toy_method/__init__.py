"""toy: a third method, added as docs/README.md#adding-a-method says (this folder plus one registry line),
for tests/test_third_method.py.

Two pipeline stages. ``teacher`` trains SquareNet (tests/toy_task.py: find a bright square in noise)
with the engine into ``<run_dir>/teacher/``. ``eval`` runs the trained net on held-out images and scores
its boxes under the recipe's ``eval.protocol`` (plain COCO AP): ``eval/gt.json``, ``eval/detections.json``
and ``eval/metrics.json`` / ``metrics.md`` as ``ovis.eval.report.write_metrics`` writes them (what the
eval notebook shows).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from toy_task import SquareDataset, SquareNet, toy_task

from ovis.config import Recipe
from ovis.engine.train import load_checkpoint
from ovis.eval import evaluate
from ovis.eval.report import write_metrics
from ovis.io import write_json_atomic
from ovis.methods import TrainingStage
from ovis.methods.train import run_training
from ovis.runs import RunLayout, stage_dir
from ovis.stages import execute

from .config import SECTIONS as SECTIONS  # the recipe sections the toy owns: teacher, held_out
from .config import HeldOutConfig

PIPELINE_STAGES = ("teacher", "eval")
CATEGORIES = [{"id": 1, "name": "left"}, {"id": 2, "name": "right"}]  # SquareNet's classes 0 and 1


def square_net(recipe: Recipe, run_dir: Path) -> SquareNet:
    """The model ``teacher/model_final.pth`` fills."""
    return SquareNet()


TRAINING_STAGES = {"teacher": TrainingStage(toy_task, "teacher", square_net)}


def run_teacher(recipe: Recipe, run_dir: str | Path, launcher: str | None = None, nproc: int | None = None,
                nodes: int | None = None, partition: str | None = None, stream: Callable[[str], None] = print,
                force: bool = False) -> dict:
    """Train SquareNet into ``<run_dir>/teacher/`` (resuming from ``last.pth``); marks the stage done."""
    return run_training(recipe, "teacher", run_dir, force, stream, launcher=launcher, nproc=nproc, nodes=nodes,
                        partition=partition)["teacher"]


def predict(run_dir: str | Path, held_out: HeldOutConfig) -> tuple[list[torch.Tensor], list[torch.Tensor],
                                                                   torch.Tensor, torch.Tensor]:
    """The held-out images (the recipe's ``held_out`` section), their true boxes, and the trained net's boxes
    (pixels, x1 y1 x2 y2) and class probabilities."""
    net = SquareNet()
    net.load_state_dict(load_checkpoint(RunLayout(run_dir).checkpoint("teacher"), keys=("model",))["model"])
    net.eval()
    images, boxes = zip(*SquareDataset(n=held_out.n, seed=held_out.seed).items, strict=True)
    with torch.no_grad():
        out = net.head(torch.cat([net.pool(net.backbone(im[None])) for im in images]))
    sizes = torch.tensor([[im.shape[2], im.shape[1]] * 2 for im in images], dtype=torch.float32)
    return list(images), list(boxes), out[:, :4] * sizes, out[:, 4:].softmax(1)


def teacher_figures(recipe: Recipe, run_dir: str | Path, n: int = 4) -> list[Figure]:
    """[the first ``n`` held-out images with the true box (green) and the predicted one (red)]."""
    images, boxes, pred, _ = predict(run_dir, recipe.held_out)
    fig = Figure(figsize=(2.5 * n, 2.5))
    for ax, img, box, p in zip(fig.subplots(1, n, squeeze=False)[0], images, boxes, pred, strict=False):
        ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
        for (x1, y1, x2, y2), color in ((box.tolist(), "tab:green"), (p.tolist(), "tab:red")):
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.5))
        ax.set_axis_off()
    return [fig]


def xywh(box: torch.Tensor) -> list[float]:
    """COCO's [x, y, width, height] of a box given by two opposite corners."""
    lo, hi = torch.minimum(box[:2], box[2:]), torch.maximum(box[:2], box[2:])
    return [*lo.tolist(), *(hi - lo).tolist()]


def run_eval(recipe: Recipe, run_dir: str | Path, force: bool = False, stream: Callable[[str], None] = print) -> dict:
    """Box AP of the trained net on the held-out images under ``recipe.eval.protocol``, a stage of
    :func:`ovis.stages.execute` (when done, its metrics read back)."""
    out = stage_dir(run_dir, "eval")
    return execute(recipe, "eval", run_dir, lambda afresh: _evaluate(run_dir, out, recipe, stream),
                   outputs=["gt.json", "detections.json", "metrics.json", "metrics.md"], force=force,
                   read=lambda record: json.loads((out / "metrics.json").read_text()))


def _evaluate(run_dir: str | Path, out: Path, recipe: Recipe, stream: Callable[[str], None]) -> dict:
    """The eval stage's work (:func:`run_eval`): ground truth, detections and metrics in ``out``."""
    images, boxes, pred, probs = predict(run_dir, recipe.held_out)
    gt = {"images": [{"id": i, "width": im.shape[2], "height": im.shape[1], "file_name": f"{i}.png"}
                     for i, im in enumerate(images, 1)],
          "annotations": [{"id": i, "image_id": i, "category_id": 1 + int((b[0] + b[2]) / 2 >= im.shape[2] / 2),
                           "bbox": xywh(b), "area": float((b[2:] - b[:2]).prod()),
                           "iscrowd": 0} for i, (im, b) in enumerate(zip(images, boxes, strict=True), 1)],
          "categories": CATEGORIES}
    detections = [{"image_id": i, "category_id": 1 + int(p.argmax()), "score": float(p.max()),
                   "bbox": xywh(b)}
                  for i, (b, p) in enumerate(zip(pred, probs, strict=True), 1)]
    write_json_atomic(gt, out / "gt.json")
    write_json_atomic(detections, out / "detections.json")
    result = evaluate(recipe.eval.protocol, out / "gt.json", out / "detections.json", "bbox")
    write_metrics(result, out)
    stream(f"eval: box AP {result['metrics']['stats'][0]:.3f} on {len(images)} held-out images")
    return result
