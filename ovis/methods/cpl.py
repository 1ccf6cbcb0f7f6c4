"""CPL / XPM (docs/cpl.md): the stage functions the notebooks and ``ovis train`` call.

- grounding → :func:`grounding_task` (``ovis.models.grounding``; caption pretraining, docs/cpl.md#21-caption-pretraining);
- teacher → :func:`teacher_task`, :func:`run_teacher`, :func:`teacher_figures` (docs/cpl.md#22-teacher): R-C4
  embedding Mask R-CNN on base-class masks, initialised from the grounding checkpoint
  (:func:`grounding_to_detector` maps its keys), projection frozen;
- pseudo → :func:`run_pseudo`, :func:`pseudo_figures`, :func:`pseudo_browser` (docs/cpl.md#23-pseudo-labels,
  ``ovis.pseudo.cross_modal``);
- student → :func:`student_task`, :func:`run_student`, :func:`student_figures` (docs/cpl.md#24-robust-student,
  ``ovis.models.student``), initialised from ``teacher/model_final.pth``;
- eval → :func:`load_model`, :func:`run_eval` (docs/cpl.md#25-inference, docs/protocols.md#41-open-vocabulary-ap): generalized, constrained-novel and
  constrained-base runs per model, each with its own vocabulary.

The teacher and student themselves (:func:`build_teacher`, :func:`build_student`, :func:`load_model`,
:func:`class_embeddings`) are built by ``ovis.pseudo.detectors``, which the pseudo-labeler shares.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn
from torchvision.models.detection.roi_heads import RoIHeads

from ovis.config import Recipe
from ovis.data.dataset import CaptionImages, CocoDetection, StudentDataset, collate_fn
from ovis.data.transforms import RandomHorizontalFlip
from ovis.io import copy_atomic, write_json_atomic, write_text_atomic
from ovis.methods import TrainingStage
from ovis.models.detector import set_class_embeddings
from ovis.models.grounding import GroundingModel
from ovis.models.student import RobustStudent
from ovis.models.text import StaticTokenEmbedding, build_text_encoder
from ovis.pseudo.cross_modal import (
    PseudoLabeler,
    pseudo_browser,
    pseudo_figures,
    pseudo_vocabulary,
    run_pseudo,
)
from ovis.pseudo.detectors import (
    build_student,
    build_teacher,
    class_embeddings,
    load_model,
    need_file,
    read_partition,
)
from ovis.runs import STAGES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ovis.engine.train import TrainTask

__all__ = [
    "EVAL_SETTINGS",
    "PIPELINE_STAGES",
    "TRAINING_STAGES",
    "PseudoLabeler",
    "StudentHook",
    "class_embeddings",
    "grounding_task",
    "grounding_to_detector",
    "load_model",
    "pseudo_browser",
    "pseudo_figures",
    "run_eval",
    "run_pseudo",
    "run_student",
    "run_teacher",
    "student_figures",
    "student_task",
    "teacher_figures",
    "teacher_task",
]

# setting name → split file (docs/protocols.md#41-open-vocabulary-ap); "constrained" in the name marks constrained runs
EVAL_SETTINGS = {"generalized": "val.json", "constrained_novel": "val_novel.json", "constrained_base": "val_base.json"}
GROUNDING_CHECKPOINT = "grounding/model_final.pth"
TEACHER_CHECKPOINT = "teacher/model_final.pth"
# grounding (backbone under backbone., projection.) → C4 embedding detector; first match wins
GROUNDING_PREFIXES = (
    ("backbone.layer4.", "roi_heads.res5."),
    ("backbone.", "backbone.body."),
    ("projection.", "roi_heads.box_predictor.projection."),
)


# --------------------------------------------------------------------------------------------
# grounding (caption pretraining) and its hand-over to the teacher


def grounding_task(recipe: Recipe, run_dir: str | Path, stage: str = "grounding") -> TrainTask:
    """The loop's task for caption pretraining: ``<run_dir>/splits/train_base.json`` images with
    ``<run_dir>/splits/captions.json`` captions, images from ``data.train_images`` resized by
    ``model.min_size``/``max_size``; model from ``model.backbone``, ``backbone_weights`` (BN trained
    only when there are none), ``text_encoder``, ``input_format``, ``stride_in_1x1``; optimiser
    settings from ``recipe.<stage>`` (``grounding``), whose ``cache_features`` keeps the frozen backbone's
    maps (:meth:`GroundingModel.cache_backbone`). Batches are grouped by aspect ratio."""
    from ovis.engine.train import TrainTask

    cfg = getattr(recipe, stage, None)
    if cfg is None or not hasattr(cfg, "max_iter"):
        raise ValueError(f"grounding_task: recipe has no training section {stage!r}")
    splits = Path(run_dir) / "splits"
    ann_file, captions_file = splits / "train_base.json", splits / "captions.json"
    for f in (ann_file, captions_file):
        if not f.is_file():
            raise FileNotFoundError(f"grounding: {f} not found; run the splits stage first "
                                    f"(`ovis splits --recipe {recipe.name} --run-dir {run_dir}`) with data.train_captions set")
    captions = json.loads(captions_file.read_text())
    m = recipe.model
    dataset = CaptionImages(ann_file, recipe.data.path(recipe.data.train_images), captions,
                            min_size=m.min_size, max_size=m.max_size, flip_prob=cfg.flip_prob)
    encoder = build_text_encoder(m.text_encoder)
    if not isinstance(encoder, StaticTokenEmbedding):
        raise ValueError(f"model.text_encoder={m.text_encoder!r}: grounding needs static token embeddings; "
                         "use 'minilm' or 'bert-base-uncased'")
    model = GroundingModel(m.backbone, encoder, weights=m.backbone_weights, input_format=m.input_format,
                           stride_in_1x1=m.stride_in_1x1, train_bn=not m.backbone_weights, norm=m.norm)
    if m.embedding_dim is not None and m.embedding_dim != model.embedding_dim:
        raise ValueError(f"model.embedding_dim={m.embedding_dim} but text encoder {m.text_encoder!r} gives "
                         f"{model.embedding_dim}-d token embeddings; set model.embedding_dim: null")
    if getattr(cfg, "cache_features", False):  # a GroundingConfig section
        model.cache_backbone()
    return TrainTask(model, dataset, cfg, aspect_ratios=dataset.aspect_ratios())


def grounding_to_detector(state: dict[str, Tensor], detector: nn.Module) -> dict[str, Tensor]:
    """Grounding checkpoint keys → the C4 detector's: layer4 → ``roi_heads.res5.*``, the stem and
    layer1–3 → ``backbone.body.*`` (the res5 RoI head, as maskrcnn-benchmark's suffix matching
    does), ``projection.*`` → ``roi_heads.box_predictor.projection.*``. BatchNorm
    ``num_batches_tracked`` is dropped (the detector's BN is frozen; GroupNorm has no statistics).
    Every detector tensor under those prefixes must be filled with the same shape; otherwise a
    ValueError says which."""
    ours = detector.state_dict()
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        for src, dst in GROUNDING_PREFIXES:
            if key.startswith(src):
                new = dst + key[len(src):]
                if new not in ours:
                    raise ValueError(f"grounding key {key} → {new}: no such detector tensor "
                                     "(model.arch must be c4 and model.norm the grounding run's)")
                if ours[new].shape != value.shape:
                    raise ValueError(f"grounding key {key} {list(value.shape)} does not fit {new} {list(ours[new].shape)}; "
                                     "model.backbone / text encoder must match the grounding run")
                out[new] = value
                break
    targets = [k for k in ours if any(k.startswith(d) for _, d in GROUNDING_PREFIXES)]
    missing = [k for k in targets if k not in out]
    if missing:
        raise ValueError(f"the grounding checkpoint lacks {len(missing)} detector tensors, e.g. {missing[:4]}")
    return out


def _train_dataset(recipe: Recipe, ann_file: Path, category_ids: Sequence[int] | None, flip_prob: float,
                   caption_only: bool = False) -> CocoDetection:
    """The images of ``ann_file`` with at least one annotation of ``category_ids``, and with ``caption_only`` also
    its caption-only images (docs/cpl.md#27-caption-only-images), which have none."""
    ds = CocoDetection(ann_file, recipe.data.path(recipe.data.train_images), category_ids=category_ids,
                       transforms=RandomHorizontalFlip(flip_prob) if flip_prob > 0 else None,
                       skip_empty=not caption_only)
    if caption_only:
        ds.ids = [i for i in ds.ids if ds._anns[i] or ds._images[i].get("caption_only")]
    ds.check_image_files()  # before the training stage writes anything
    return ds


def _ratios(ds: CocoDetection) -> list[float]:
    return [ds._images[i]["width"] / ds._images[i]["height"] for i in ds.ids]


# --------------------------------------------------------------------------------------------
# teacher


def teacher_task(recipe: Recipe, run_dir: str | Path, stage: str = "teacher") -> TrainTask:
    """Teacher training (docs/cpl.md#22-teacher): ``splits/train_base.json`` base masks (labels 1..K in the
    partition's base order), flip ``teacher.flip_prob``; backbone, res5 and projection from
    ``grounding/model_final.pth``; ``teacher.freeze`` (the projection) kept frozen by the loop."""
    from ovis.engine.train import TrainTask, load_checkpoint

    run_dir = Path(run_dir)
    cfg = recipe.teacher
    base_ids = [c["id"] for c in read_partition(run_dir)["base"]]
    ds = _train_dataset(recipe, need_file(run_dir / "splits" / "train_base.json", "run the splits stage first"),
                        base_ids, cfg.flip_prob)
    model = build_teacher(recipe, run_dir)
    if cfg.init is None:
        ckpt = load_checkpoint(need_file(run_dir / GROUNDING_CHECKPOINT, "run the grounding stage first (run_teacher does)"))
        model.load_state_dict(grounding_to_detector(ckpt["model"], model), strict=False)
    return TrainTask(model, ds, cfg, collate_fn=collate_fn, aspect_ratios=_ratios(ds))


def run_teacher(recipe: Recipe, run_dir: str | Path, launcher: str | None = None, nproc: int | None = None,
                nodes: int | None = None, partition: str | None = None, stream: Callable[[str], None] = print,
                force: bool = False) -> dict:
    """Stage 01 (CPL): caption grounding (``<run_dir>/grounding/``) then the teacher
    (``<run_dir>/teacher/``) through :func:`ovis.methods.train.train_stage`; marks stage "teacher" done.
    Returns ``{"grounding": {...}, "teacher": {...}}`` (checkpoint, iterations, seconds)."""
    from ovis.methods.train import train_stage
    from ovis.runs import inputs_changed, mark_stage_done, stage_done

    run_dir = Path(run_dir)
    force = force or inputs_changed(run_dir, "teacher", recipe)  # redo, do not resume
    if not force and stage_done(run_dir, "teacher", recipe):
        return json.loads((run_dir / "teacher" / "stage.json").read_text())["results"]
    kw: dict[str, Any] = dict(launcher=launcher, nproc=nproc, nodes=nodes, partition=partition)
    results = {stage: train_stage(recipe, stage, run_dir, force, stream, **kw) for stage in ("grounding", "teacher")}
    mark_stage_done(run_dir, "teacher", recipe, ["model_final.pth", "metrics.jsonl"], results=results)
    return results


def _val_images(run_dir: Path, n: int) -> tuple[dict, list[int]]:
    val = json.loads(need_file(run_dir / "splits" / "val.json", "run the splits stage first").read_text())
    novel = {c["id"] for c in read_partition(run_dir)["novel"]}
    with_novel = list(dict.fromkeys(a["image_id"] for a in val["annotations"] if a["category_id"] in novel))
    rest = [im["id"] for im in val["images"] if im["id"] not in set(with_novel)]
    return val, (with_novel + rest)[:n]


def _predict(model: nn.Module, recipe: Recipe, val: dict, ids: Sequence[int], label_to_cat: dict[int, int]) -> list[dict]:
    from ovis.engine.infer import to_results
    from ovis.viz.draw import load_image

    infos = {im["id"]: im for im in val["images"]}
    out = []
    model.eval()
    with torch.no_grad():
        for i in ids:
            img = load_image(recipe.data.path(recipe.data.val_images), infos[i])
            out += to_results(model([torch.from_numpy(img.transpose(2, 0, 1).copy()).float().div_(255)])[0], i, label_to_cat)
    return out


def _vocab_figure(recipe: Recipe, run_dir: str | Path, which: str, n: int, normalize: bool) -> Figure:
    from ovis.viz.draw import image_grid

    run_dir = Path(run_dir)
    model = load_model(recipe, run_dir, which)
    part = read_partition(run_dir)
    val, ids = _val_images(run_dir, n)
    panels = {}
    for split in ("base", "novel"):
        cats = part[split]
        set_class_embeddings(model, class_embeddings(recipe, [c["name"] for c in cats], normalize))
        dets = _predict(model, recipe, val, ids, {k + 1: c["id"] for k, c in enumerate(cats)})
        panels[f"{which} · {split} names"] = [d for d in dets if d["score"] >= 0.3]
    return image_grid(val, recipe.data.path(recipe.data.val_images), ids, cols=3, extra=panels)


def teacher_figures(recipe: Recipe, run_dir: str | Path, n: int = 4) -> list[Figure]:
    """Teacher predictions (score ≥ 0.3) on ``n`` val images (novel objects first), once with the
    base class names and once with the novel names swapped in, beside the GT."""
    return [_vocab_figure(recipe, run_dir, "teacher", n, normalize=False)]


# --------------------------------------------------------------------------------------------
# student


class StudentHook:
    """``TrainTask.after_step``: freezes the σ-head once ``iteration ≥ freeze_after`` (idempotent),
    and appends ``{"iteration", "sigma_mean", "lambda_pl"}`` means to ``log_path`` every
    ``log_period`` iterations, each over the steps that reported it (``log_path`` None: no log; only
    the process with ``is_main``)."""

    def __init__(self, freeze_after: int, log_path: str | Path | None = None, log_period: int = 20,
                 is_main: Callable[[], bool] = lambda: True) -> None:
        self.freeze_after, self.log_period, self.is_main = freeze_after, max(1, log_period), is_main
        self.log_path = Path(log_path) if log_path is not None else None
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._started = False

    def __call__(self, iteration: int, model: nn.Module) -> None:
        model = cast(RobustStudent, getattr(model, "module", model))
        if iteration >= self.freeze_after:
            model.roi_heads.mask_predictor.log_var.requires_grad_(False)
        if self.log_path is None or not self.is_main():
            return
        if not self._started:  # a fresh or resumed run: drop lines past the current iteration
            self._started = True
            keep = []
            if self.log_path.is_file():
                for line in self.log_path.read_text().splitlines():
                    try:
                        if json.loads(line)["iteration"] <= iteration:
                            keep.append(line + "\n")
                    except (ValueError, KeyError, TypeError):
                        continue
            write_text_atomic("".join(keep), self.log_path)
        stats = getattr(model, "last_stats", {})
        for k, v in stats.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
            self._counts[k] = self._counts.get(k, 0) + 1
        if iteration % self.log_period == 0 and self._counts:
            row = {"iteration": iteration, **{k: v / self._counts[k] for k, v in self._sums.items()},
                   "sigma_head_frozen": iteration >= self.freeze_after}
            with open(self.log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            self._sums, self._counts = {}, {}


def student_task(recipe: Recipe, run_dir: str | Path, stage: str = "student") -> TrainTask:
    """Student training (docs/cpl.md#24-robust-student): init from ``teacher/model_final.pth`` (``student.init``
    overrides), ``student.freeze`` (backbone, rpn) frozen; offline pseudo masks from
    ``pseudo/train_pseudo.json``, or (``student.online_pseudo``) the frozen teacher labels every
    batch from the captions of ``splits/train_base.json`` (its caption-only images included). The σ-head freezes after
    ``student.uncertainty_train_iter`` iterations; σ/λ are logged to ``student/robust.jsonl``.
    DDP runs with ``find_unused_parameters`` (the σ-head freezes mid-run, caption-less images skip
    the pseudo branch)."""
    from ovis.engine.dist import is_main_process
    from ovis.engine.train import TrainTask

    run_dir = Path(run_dir)
    s = recipe.student
    init = s.init or TEACHER_CHECKPOINT
    cfg = dataclasses.replace(s, init=init, find_unused_parameters=True)
    need_file(run_dir / init if not Path(init).is_absolute() else Path(init), "train the teacher first")
    base_ids = [c["id"] for c in read_partition(run_dir)["base"]]
    pv = pseudo_vocabulary(recipe, run_dir)
    pseudo_ids = [c["id"] for c in pv.categories]
    if s.online_pseudo:
        ds = _train_dataset(recipe, need_file(run_dir / "splits" / "train_base.json", "run the splits stage first"),
                            base_ids, cfg.flip_prob, caption_only=True)
        caps = {int(k): v for k, v in json.loads((run_dir / "splits" / "captions.json").read_text()).items()}
        data = StudentDataset(ds, base_ids, pseudo_ids, captions=caps)
    else:
        path = need_file(run_dir / "pseudo" / "train_pseudo.json", "run the pseudo stage first (run_pseudo)")
        ds = _train_dataset(recipe, path, None, cfg.flip_prob)
        data = StudentDataset(ds, base_ids, pseudo_ids)
    model = build_student(recipe, run_dir, pv.names)
    if s.online_pseudo:
        from ovis.pseudo.cross_modal import build_labeler

        label = {cid: k + 1 for k, cid in enumerate(pseudo_ids)}
        model.set_online_labeler(build_labeler(recipe, run_dir), {c: label[pv.file_id(c)] for c in pv.vocab.category_names})
    hook = StudentHook(s.uncertainty_train_iter, run_dir / stage / "robust.jsonl", s.log_period, is_main_process)
    return TrainTask(model, data, cfg, collate_fn=collate_fn, aspect_ratios=data.aspect_ratios(), after_step=hook)


def run_student(recipe: Recipe, run_dir: str | Path, launcher: str | None = None, nproc: int | None = None,
                nodes: int | None = None, partition: str | None = None, stream: Callable[[str], None] = print,
                force: bool = False) -> dict:
    """Stage 03 (CPL): train the robust student into ``<run_dir>/student/``; marks it done."""
    from ovis.methods.train import train_stage
    from ovis.runs import inputs_changed, mark_stage_done, stage_done

    run_dir = Path(run_dir)
    force = force or inputs_changed(run_dir, "student", recipe)  # redo, do not resume
    if not force and stage_done(run_dir, "student", recipe):
        return json.loads((run_dir / "student" / "stage.json").read_text())["results"]
    res = train_stage(recipe, "student", run_dir, force, stream, launcher=launcher, nproc=nproc, nodes=nodes,
                        partition=partition)
    mark_stage_done(run_dir, "student", recipe, ["model_final.pth", "metrics.jsonl"], results=res)
    return res


def _without_pretrained(recipe: Recipe) -> Recipe:
    """``recipe`` without the backbone's pretrained weights: a checkpoint fills every tensor."""
    return dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, backbone_weights=None))


def grounding_model(recipe: Recipe, run_dir: Path) -> GroundingModel | None:
    """The caption-grounding network as its checkpoint fills it (the teacher maps its weights), or None
    for a text encoder grounding cannot train with (:func:`grounding_task` says so)."""
    m = _without_pretrained(recipe).model
    encoder = build_text_encoder(m.text_encoder)
    if not isinstance(encoder, StaticTokenEmbedding):
        return None
    return GroundingModel(m.backbone, encoder, weights=None, input_format=m.input_format,
                          stride_in_1x1=m.stride_in_1x1, norm=m.norm)


def teacher_model(recipe: Recipe, run_dir: Path) -> nn.Module:
    """The teacher as its checkpoint fills it (as :func:`load_model` builds it)."""
    return build_teacher(_without_pretrained(recipe), run_dir)


def student_model(recipe: Recipe, run_dir: Path) -> nn.Module:
    """The student as its checkpoint fills it (as :func:`load_model` builds it)."""
    return build_student(_without_pretrained(recipe), run_dir)


PIPELINE_STAGES = STAGES  # all six (ovis.methods: the hooks each one's notebook calls)

# the engine training stages (``<run_dir>/<name>/``), their tasks and models, and the pipeline stage that trains them
TRAINING_STAGES = {
    # caption grounding runs before the teacher and never reads the teacher section
    "grounding": TrainingStage(grounding_task, "teacher", grounding_model, own_sections=("model", "grounding")),
    "teacher": TrainingStage(teacher_task, "teacher", teacher_model),
    "student": TrainingStage(student_task, "student", student_model),
}


def student_figures(recipe: Recipe, run_dir: str | Path, n: int = 4) -> list[Figure]:
    """[student predictions with base / novel names beside the GT; σ and λ over iterations]."""
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    figs = [_vocab_figure(recipe, run_dir, "student", n, normalize=True)]
    log = run_dir / "student" / "robust.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    fig = Figure(figsize=(9, 3), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    if rows:
        it = [r["iteration"] for r in rows]
        ax1.plot(it, [r.get("sigma_mean") for r in rows])
        ax2.plot(it, [r.get("lambda_pl") for r in rows], color="tab:orange")
        ax1.axvline(recipe.student.uncertainty_train_iter, color="gray", ls="--", lw=0.8)
    ax1.set(title="mean σ of pseudo masks (σ-head frozen at dashed line)", xlabel="iteration")
    ax2.set(title="λ = 0.01 / mean σ (pseudo cls/box weight)", xlabel="iteration")
    figs.append(fig)
    return figs


# --------------------------------------------------------------------------------------------
# inference and evaluation


def _subset_gt(gt: dict, ids: Sequence[int]) -> dict:
    keep = set(ids)
    return {**gt, "images": [im for im in gt["images"] if im["id"] in keep],
            "annotations": [a for a in gt["annotations"] if a["image_id"] in keep]}


def _ap50_markdown(side: dict) -> str:
    """The side-by-side ``eval/metrics.json`` object as markdown: teacher / student rows, AP50 base /
    novel / all columns (%) per IoU type; generalized first, then each constrained run."""
    ious = list(side["teacher"])
    header = "| model | " + " | ".join(f"{t} AP50 {k}" for t in ious for k in ("base", "novel", "all")) + " |"
    rule = "|---|" + "---|" * (3 * len(ious))

    def pct(v: float | None) -> str:  # -1: no GT of that split in the run's file
        return "n/a" if v is None or v < 0 else f"{100 * v:.1f}"

    def table(block: dict) -> list[str]:
        return [header, rule] + [
            f"| {w} | " + " | ".join(pct(block[w][t].get(f"AP50_{k}")) for t in ious for k in ("base", "novel", "all"))
            + " |" for w in ("teacher", "student")]

    lines = [f"# {side['protocol']}: teacher vs student (AP50, %)", "",
             "## generalized (val.json, base + novel names)", "", *table(side)]
    for kind, block in side["constrained"].items():
        lines += ["", f"## constrained {kind}-only ({EVAL_SETTINGS['constrained_' + kind]}, {kind} names)", "",
                  *table(block)]
    return "\n".join(lines) + "\n"


def run_eval(recipe: Recipe, run_dir: str | Path, force: bool = False, stream: Callable[[str], None] = print,
             device: str | None = None) -> list[dict]:
    """Stage 04 (CPL): for teacher and student, the generalized (val.json, base + novel names),
    constrained-novel (val_novel.json) and constrained-base (val_base.json) runs, each with the
    classifier swapped to its file's class names (unnormalised for the teacher, L2-normalised
    for the student). Writes ``eval/<which>/<setting>/detections.json`` and
    ``eval/<which>/<setting>/<iou_type>/metrics.{json,md}`` (full ``ovis.eval.evaluate`` results);
    ``eval/metrics.json`` holds them side by side, M being a result's ``metrics`` object:
    ``{"protocol", "teacher": {iou_type: M}, "student": {iou_type: M}, "constrained": {"novel":
    {"teacher": {iou_type: M}, "student": ...}, "base": ...}}`` (generalized at the top level),
    ``eval/metrics.md`` its AP50 table; ``eval/detections.json`` is the student's generalized run;
    ``eval/summary.json`` holds the returned rows ``{model, setting, iou_type, AP50_base,
    AP50_novel, AP50_all, AP}``. ``eval.max_images`` evaluates the first N images of each file
    (GT restricted to them)."""
    from ovis.engine.dist import resolve_device
    from ovis.engine.infer import run_inference
    from ovis.eval import evaluate
    from ovis.eval.report import write_metrics
    from ovis.runs import mark_stage_done, stage_dir, stage_done

    run_dir = Path(run_dir)
    out = stage_dir(run_dir, "eval")
    if not force and stage_done(run_dir, "eval", recipe):
        return json.loads((out / "summary.json").read_text())
    dev = resolve_device(device or recipe.launch.device)
    partition = run_dir / "splits" / "partition.json"
    rows: list[dict] = []
    side: dict[str, Any] = {"protocol": None, "teacher": {}, "student": {},
                            "constrained": {s.removeprefix("constrained_"): {"teacher": {}, "student": {}}
                                            for s in EVAL_SETTINGS if s.startswith("constrained")}}
    for which in ("teacher", "student"):
        model = load_model(recipe, run_dir, which).to(dev)
        cast(RoIHeads, model.roi_heads).detections_per_img = recipe.eval.detections_per_img
        for setting, fname in EVAL_SETTINGS.items():
            gt_path = need_file(run_dir / "splits" / fname, "run the splits stage first")
            ds = CocoDetection(gt_path, recipe.data.path(recipe.data.val_images), with_masks=False, drop_crowd=False)
            names = [c["name"] for c in ds.coco["categories"] if c["id"] in ds.category_ids]
            set_class_embeddings(model, class_embeddings(recipe, names, normalize=which == "student"))
            t0 = time.perf_counter()
            folder = out / which / setting
            dets_path = run_inference(model, ds, folder / "detections.json", ds.label_to_cat_id, dev,
                                      max_images=recipe.eval.max_images)
            gt = _subset_gt(ds.coco, ds.ids[: recipe.eval.max_images or None])
            constrained = setting.startswith("constrained")
            block = side["constrained"][setting.removeprefix("constrained_")] if constrained else side
            for iou in recipe.eval.iou_types:
                res = evaluate(recipe.eval.protocol, gt, dets_path, iou, partition=partition)
                res["setting"] = "constrained" if constrained else "generalized"
                res["model"] = which
                write_metrics(res, folder / iou)
                m = res["metrics"]
                side["protocol"] = res["protocol"]
                block[which][iou] = m
                rows.append({"model": which, "setting": setting, "iou_type": iou, "AP50_base": m.get("AP50_base"),
                             "AP50_novel": m.get("AP50_novel"), "AP50_all": m.get("AP50_all"), "AP": m["stats"][0]})
            stream(f"eval: {which} {setting}: {len(gt['images'])} images in {time.perf_counter() - t0:.1f} s")
    copy_atomic(out / "student" / "generalized" / "detections.json", out / "detections.json")
    write_json_atomic(side, out / "metrics.json")
    table = _ap50_markdown(side)
    write_text_atomic(table, out / "metrics.md")
    write_json_atomic(rows, out / "summary.json")
    recipe.save(out)
    mark_stage_done(run_dir, "eval", recipe, ["detections.json", "metrics.json", "metrics.md", "summary.json"])
    stream(table)
    return rows
