"""GGN / OLN on the ovis engine (docs/ggn.md): the stage functions the notebooks and ``ovis`` call.

1. teacher: the pairwise-affinity (PA) network trained on seen-class masks at original resolution.
2. pseudo: PA → grouping → ranked candidate masks per training image, stored per shard
   (``pseudo/shards/candidates.<s>-of-<n>.json``, resumable), then merged into
   ``pseudo/train_pseudo.json`` = base GT + top-k pseudo masks (gt_iou < thresh) and ``stats.json``.
3. student: a class-agnostic Mask R-CNN (``model.heads: standard``) or OLN (``heads: oln``) on base
   GT + pseudo GT, ``baseline``: the same recipe on base GT only (``<run_dir>/baseline/``), and for a
   Mask R-CNN student its OLN variants (``heads: oln``), on base + pseudo GT (``<run_dir>/oln/``) and
   on base GT only (``<run_dir>/oln_baseline/``), so every run reports baseline vs GGN, and OLN with
   and without pseudo GT, side by side.
4. eval: every model on ``splits/val.json`` under the recipe's open-world protocol
   (``eval/<model>/<iou_type>/metrics.json``, side by side in ``eval/metrics.json``).

Pseudo annotations get ``category_id`` = the smallest seen category id of ``train_base.json``
(COCO VOC split: 1, "person", as upstream, docs/ggn.md#6-pitfalls item 19); the student is class-agnostic, so every
label becomes 1 anyway.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from pycocotools import mask as mask_utils
from torch import nn

from ovis.config import Recipe
from ovis.data.coco import (
    ann_to_rle,
    load_coco,
    masks_to_rles,
    save_coco,
)
from ovis.data.dataset import CocoDetection
from ovis.data.transforms import RandomHorizontalFlip
from ovis.engine.dist import resolve_device, usable_cpus
from ovis.engine.train import FINAL, METRICS, CheckpointError, TrainTask, load_checkpoint
from ovis.io import copy_atomic, write_json_atomic, write_text_atomic
from ovis.methods import TrainingStage
from ovis.models.affinity import AffinityNet, affinity_target, palette_from_masks
from ovis.models.detector import build_detector
from ovis.pseudo.grouping import (
    Candidate,
    GroupingParams,
    group_affinity,
    gt_iou,
    select_pseudo,
)
from ovis.runs import STAGES, inputs_changed, mark_stage_done, stage_dir, stage_done

__all__ = [
    "PIPELINE_STAGES",
    "TRAINING_STAGES",
    "baseline_task",
    "comparison_table",
    "extract_shard",
    "grouping_params",
    "load_model",
    "merge_pseudo",
    "pseudo_browser",
    "pseudo_figures",
    "resolve_shards",
    "run_eval",
    "run_pseudo",
    "run_student",
    "run_teacher",
    "student_figures",
    "student_task",
    "teacher_figures",
    "teacher_task",
]

MIN_TRAIN_SIDE = 32  # GGN/OLN drop training images whose shorter side is below this (docs/protocols.md#13-voc-split)
MODELS = ("teacher", "baseline", "student", "oln", "oln_baseline")
OLN_VARIANTS = ("oln", "oln_baseline")  # a Mask R-CNN run's OLN models, with and without pseudo GT
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


# --------------------------------------------------------------------------------------------
# paths and datasets


def _splits(run_dir: str | Path, name: str) -> Path:
    path = Path(run_dir) / "splits" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the splits stage first (ovis.data.splits.run_splits_stage)")
    return path


def _train_images(recipe: Recipe) -> Path:
    return recipe.data.path(recipe.data.train_images)


def _train_dataset(recipe: Recipe, ann_file: Path, flip_prob: float, with_masks: bool = True) -> CocoDetection:
    flip = RandomHorizontalFlip(flip_prob) if flip_prob > 0 else None
    return CocoDetection(ann_file, _train_images(recipe), class_agnostic=True, transforms=flip,
                         with_masks=with_masks, min_size=MIN_TRAIN_SIDE, skip_empty=True)


def _aspect_ratios(ds: CocoDetection) -> list[float]:
    images = {im["id"]: im for im in ds.coco["images"]}
    return [images[i]["width"] / images[i]["height"] for i in ds.ids]


def _pseudo_dir(run_dir: str | Path) -> Path:
    return stage_dir(run_dir, "pseudo")


# --------------------------------------------------------------------------------------------
# training tasks (declared in TRAINING_STAGES below)


def affinity_net(recipe: Recipe, weights: str | None) -> AffinityNet:
    """The recipe's PA network, initialised from ``weights``. Its backbone BatchNorm is frozen when
    the recipe has pretrained weights (their statistics) and trains otherwise."""
    m = recipe.model
    return AffinityNet(m.backbone, weights=weights, channels=m.decoder_channels,
                       norm="frozen_bn" if m.backbone_weights else "bn")


def teacher_task(recipe: Recipe, run_dir: str | Path, stage: str) -> TrainTask:
    """PA network on seen-class masks of ``splits/train_base.json``, original resolution (docs/ggn.md#31-pa-network).

    Flip only if ``recipe.teacher.flip_prob`` > 0 (the paper recipe: 0).
    """
    ds = _train_dataset(recipe, _splits(run_dir, "train_base.json"), recipe.teacher.flip_prob)
    ds.check_image_files()  # before the stage writes anything
    model = affinity_net(recipe, recipe.model.backbone_weights)
    return TrainTask(model, ds, recipe.teacher, aspect_ratios=_aspect_ratios(ds))


def _detector_task(recipe: Recipe, ann_file: Path) -> TrainTask:
    if recipe.model.classifier != "agnostic":
        raise ValueError(f"recipe {recipe.name}: the GGN/OLN student is class-agnostic; set model.classifier=agnostic "
                         f"(got {recipe.model.classifier!r})")
    ds = _train_dataset(recipe, ann_file, recipe.student.flip_prob, with_masks=recipe.model.mask)
    ds.check_image_files()  # before the stage writes anything
    model = build_detector(recipe.model, num_classes=1)
    return TrainTask(model, ds, recipe.student, aspect_ratios=_aspect_ratios(ds))


def student_task(recipe: Recipe, run_dir: str | Path, stage: str) -> TrainTask:
    """Class-agnostic Mask R-CNN / OLN (``recipe.model``) on base GT + pseudo GT (``pseudo/train_pseudo.json``)."""
    path = _pseudo_dir(run_dir) / "train_pseudo.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the pseudo stage first (ovis.methods.ggn.run_pseudo)")
    return _detector_task(recipe, path)


def baseline_task(recipe: Recipe, run_dir: str | Path, stage: str) -> TrainTask:
    """The student's recipe without pseudo GT: base-class GT of ``splits/train_base.json`` only."""
    return _detector_task(recipe, _splits(run_dir, "train_base.json"))


def oln_recipe(recipe: Recipe) -> Recipe:
    """The recipe of the OLN variant: ``recipe`` with ``model.heads: oln`` (masks as the recipe says)."""
    return dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, heads="oln"))


def trains_oln_variant(recipe: Recipe) -> bool:
    """Whether ``run_student`` also trains the OLN variants (``OLN_VARIANTS``): yes unless the student
    already is OLN (its baseline then is OLN on base GT only)."""
    return recipe.model.heads != "oln"


def oln_task(recipe: Recipe, run_dir: str | Path, stage: str) -> TrainTask:
    """The OLN variant (``oln_recipe``) on base GT + pseudo GT, trained with ``recipe.student``."""
    return student_task(oln_recipe(recipe), run_dir, stage)


def oln_baseline_task(recipe: Recipe, run_dir: str | Path, stage: str) -> TrainTask:
    """The OLN variant on base GT only (``splits/train_base.json``), trained with ``recipe.student``."""
    return baseline_task(oln_recipe(recipe), run_dir, stage)


def _model_of(which: str) -> Callable[[Recipe, Path], nn.Module]:
    """The ``TrainingStage.model`` of ``which``: :func:`bare_model`."""
    return lambda recipe, run_dir: bare_model(recipe, which)


PIPELINE_STAGES = STAGES  # all six (ovis.methods: the hooks each one's notebook calls)

# the engine training stages (``<run_dir>/<name>/``), their tasks and models, and the pipeline stage that trains
# them; the baseline and the OLN variants have no recipe section: they train with recipe.student
TRAINING_STAGES = {
    "teacher": TrainingStage(teacher_task, "teacher", _model_of("teacher")),
    "student": TrainingStage(student_task, "student", _model_of("student")),
    "baseline": TrainingStage(baseline_task, "student", _model_of("baseline"), config="student"),
    "oln": TrainingStage(oln_task, "student", _model_of("oln"), config="student"),
    "oln_baseline": TrainingStage(oln_baseline_task, "student", _model_of("oln_baseline"), config="student"),
}


# --------------------------------------------------------------------------------------------
# models


def bare_model(recipe: Recipe, which: str) -> nn.Module:
    """Model ``which`` (of ``MODELS``) as its checkpoint's weights fill it: the PA network (the recipe's
    weights decide its BatchNorm, frozen or trained) or a class-agnostic detector without the backbone's
    pretrained initialisation (the checkpoint holds every weight)."""
    if which == "teacher":
        return affinity_net(recipe, None)
    cfg = oln_recipe(recipe).model if which in OLN_VARIANTS else recipe.model
    return build_detector(dataclasses.replace(cfg, backbone_weights=None), num_classes=1)


def load_model(recipe: Recipe, run_dir: str | Path, which: str) -> nn.Module:
    """The trained ``which`` ("teacher" = PA network, "baseline", "student", "oln" / "oln_baseline" =
    the OLN variant with / without pseudo GT) from ``<run_dir>/<which>/model_final.pth``, in eval mode on CPU."""
    if which not in MODELS:
        raise ValueError(f"load_model: which={which!r}; use one of {MODELS}")
    path = Path(run_dir) / which / FINAL
    if not path.is_file():
        stage = "teacher" if which == "teacher" else "student"
        raise FileNotFoundError(f"{path} not found; run the {stage} stage first")
    model = bare_model(recipe, which)
    state = load_checkpoint(path, keys=("model",))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit the recipe's model ({recipe.name}): {' '.join(str(e).split())[:300]}; "
                           "was it trained with another recipe? Re-run the stage") from None
    return model.eval()


def run_teacher(recipe: Recipe, run_dir: str | Path, launcher: str | None = None, nproc: int | None = None,
                nodes: int | None = None, partition: str | None = None, stream: Callable[[str], None] = print,
                force: bool = False) -> dict:
    """Train the PA network into ``<run_dir>/teacher/`` (local, torchrun or Slurm; resumes from last.pth).

    Skipped when the stage already finished for this recipe (unless ``force``, which trains from scratch).
    Returns ``{"stage", "final", "iteration", "skipped", "seconds"}``.
    """
    from ovis.methods.train import train_stage

    run_dir = Path(run_dir)
    force = force or inputs_changed(run_dir, "teacher", recipe)  # redo, do not resume
    if not force and stage_done(run_dir, "teacher", recipe):
        info = json.loads((stage_dir(run_dir, "teacher") / "stage.json").read_text())
        return {**info.get("result", {}), "skipped": True}
    result = train_stage(recipe, "teacher", run_dir, force, stream, launcher=launcher, nproc=nproc, nodes=nodes,
                         partition=partition)
    mark_stage_done(run_dir, "teacher", recipe, [FINAL, METRICS], result=result)
    return result


def run_student(recipe: Recipe, run_dir: str | Path, launcher: str | None = None, nproc: int | None = None,
                nodes: int | None = None, partition: str | None = None, stream: Callable[[str], None] = print,
                force: bool = False) -> dict:
    """Train the base-only ``baseline``, the ``student`` (base + pseudo GT) and, for a Mask R-CNN
    student, its OLN variants (``model.heads: oln``): ``oln`` on base + pseudo GT and ``oln_baseline``
    on base GT only, all with ``recipe.student``.

    Each resumes from its own last.pth if interrupted. Returns ``{"baseline": {...}, "student": {...}
    [, "oln": {...}, "oln_baseline": {...}]}``.
    """
    from ovis.methods.train import train_stage

    run_dir = Path(run_dir)
    force = force or inputs_changed(run_dir, "student", recipe)  # redo, do not resume
    if not force and stage_done(run_dir, "student", recipe):
        info = json.loads((stage_dir(run_dir, "student") / "stage.json").read_text())
        return {k: {**v, "skipped": True} for k, v in info.get("result", {}).items()}
    if not (_pseudo_dir(run_dir) / "train_pseudo.json").is_file():
        raise FileNotFoundError(f"{_pseudo_dir(run_dir) / 'train_pseudo.json'} not found; run the pseudo stage first")
    stages = _detectors(recipe)
    result = {stage: train_stage(recipe, stage, run_dir, force, stream, launcher=launcher, nproc=nproc, nodes=nodes,
                                 partition=partition) for stage in stages}
    outputs = [FINAL, METRICS] + [f"../{st}/{FINAL}" for st in stages if st != "student"]
    mark_stage_done(run_dir, "student", recipe, outputs, result=result)
    return result


# --------------------------------------------------------------------------------------------
# pseudo masks: sharded, resumable extraction


def grouping_params(recipe: Recipe) -> GroupingParams:
    """GroupingParams from ``recipe.pseudo`` (rank method and γ stay at upstream's extraction values)."""
    p = recipe.pseudo
    return GroupingParams(
        edge_thresh=p.edge_thresh, join_thresh=p.join_thresh, nms_thresh=p.nms_thresh,
        use_orientation=p.use_orientation, globalization=p.globalization, n_eigenvectors=p.n_eigenvectors,
        border_filter_thresh=p.border_filter_thresh, min_component_size=p.min_component_size,
        seed_footprint=p.seed_footprint, top_n=p.top_n,
    )


def resolve_shards(shard: int | None, num_shards: int | None, default_shards: int = 1) -> list[tuple[int, int]]:
    """The ``(shard, num_shards)`` pairs this process extracts.

    Explicit arguments first; else torchrun's RANK/WORLD_SIZE; else a Slurm array's
    SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT (minus SLURM_ARRAY_TASK_MIN); else every shard of
    ``default_shards`` in turn (``recipe.pseudo.shards``).
    """
    if (shard is None) != (num_shards is None):
        raise ValueError(f"pass both shard and num_shards or neither (got shard={shard}, num_shards={num_shards})")
    env = os.environ
    if shard is None or num_shards is None:  # both None (checked above)
        if int(env.get("WORLD_SIZE", "1")) > 1 and "RANK" in env:
            shard, num_shards = int(env["RANK"]), int(env["WORLD_SIZE"])
        elif "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            shard = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            num_shards = int(env["SLURM_ARRAY_TASK_COUNT"])
        else:
            if default_shards < 1:
                raise ValueError(f"pseudo.shards={default_shards} must be ≥ 1")
            return [(s, default_shards) for s in range(default_shards)]
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} of {num_shards}: need 0 ≤ shard < num_shards")
    return [(shard, num_shards)]


def _shard_path(run_dir: str | Path, shard: int, num_shards: int, partial: bool = False) -> Path:
    suffix = "partial.jsonl" if partial else "json"
    return _pseudo_dir(run_dir) / "shards" / f"candidates.{shard}-of-{num_shards}.{suffix}"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:16]


def _candidates_key(recipe: Recipe, run_dir: Path) -> str:
    """What the stored candidates depend on: the teacher's weights and the grouping parameters."""
    blob = json.dumps({"teacher": _file_digest(run_dir / "teacher" / FINAL),
                       "grouping": dataclasses.asdict(grouping_params(recipe))}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _pseudo_dataset(recipe: Recipe, run_dir: Path) -> tuple[CocoDetection, list[int]]:
    """The training images (as the student sees them, no flip) and the ids to extract (``pseudo.max_images``)."""
    ds = _train_dataset(recipe, _splits(run_dir, "train_base.json"), 0.0)
    return ds, ds.ids[: recipe.pseudo.max_images or None]


def _record(image_id: int, cands: list[Candidate], gt_masks: np.ndarray, affinity_s: float, seconds: float) -> dict:
    """One image's stored record: top-n candidates (RLE, bbox, area, rank, score, gt_iou) and timings."""
    cands = [c for c in cands if c.area > 0]
    masks = np.stack([c.mask for c in cands]) if cands else np.zeros((0, *gt_masks.shape[1:]), bool)
    ious = gt_iou(masks, gt_masks)
    stored = [{"segmentation": rle, "bbox": c.bbox, "area": c.area, "rank": c.rank, "score": round(c.score, 6),
               "gt_iou": round(float(iou), 6)} for c, rle, iou in zip(cands, masks_to_rles(masks), ious)]
    h, w = gt_masks.shape[1:]
    return {"image_id": image_id, "height": h, "width": w, "affinity_s": round(affinity_s, 4),
            "seconds": round(seconds, 4), "candidates": stored}


@contextmanager
def _single_threaded_children() -> Iterator[None]:
    """BLAS/OpenMP pools of 1 thread in processes started inside the block (several threads per
    grouping process make ARPACK several times slower on a busy machine)."""
    old = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _explain_broken_pool(what: str = "pseudo: a grouping worker process died",
                         remedy: str = "lower pseudo.workers (0: group in this process)") -> Iterator[None]:
    try:
        yield
    except BrokenProcessPool as e:
        raise RuntimeError(
            f"{what}. Worker processes are spawned: a script calling ovis's stage functions must keep its "
            f"top-level code under `if __name__ == '__main__':`. Otherwise it ran out of memory; {remedy}"
        ) from e


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """This process's torch CPU threads set to ``n`` inside the block: with the cores busy grouping, more
    threads than free cores make OpenMP spin and slow the affinity inference several-fold."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _worker_count(recipe: Recipe) -> int:
    w = recipe.pseudo.workers
    if w is None:
        return usable_cpus()
    if w < 0:
        raise ValueError(f"pseudo.workers={w} must be ≥ 0 (0: group in this process)")
    return w


def _read_progress(path: Path, key: str, image_ids: list[int]) -> dict[int, dict]:
    """Records of a partial shard written for the same key and image list (a torn last line is dropped)."""
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        return {}
    if header.get("key") != key or header.get("image_ids") != image_ids:
        return {}
    done = {}
    for line in lines[1:]:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break  # cut short by a crash: everything before it is intact
        done[rec["image_id"]] = rec
    return done


def extract_shard(recipe: Recipe, run_dir: str | Path, shard: int, num_shards: int, force: bool = False,
                  stream: Callable[[str], None] = print) -> Path:
    """Extract candidates for every ``num_shards``-th training image starting at ``shard``; returns the shard file.

    Progress goes to ``candidates.<s>-of-<n>.partial.jsonl`` every ``pseudo.save_every`` images; a rerun
    continues from it, and a finished shard file for the same teacher, parameters and images is reused.
    """
    run_dir = Path(run_dir)
    final = _shard_path(run_dir, shard, num_shards)
    partial = _shard_path(run_dir, shard, num_shards, partial=True)
    ds, ids = _pseudo_dataset(recipe, run_dir)
    mine = ids[shard::num_shards]
    key = _candidates_key(recipe, run_dir)
    if force:
        final.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    if final.is_file():
        head = json.loads(final.read_text(encoding="utf-8"))
        if head.get("key") == key and head.get("image_ids") == mine:
            stream(f"shard {shard}/{num_shards}: {final.name} is complete, reused")
            return final
    done = _read_progress(partial, key, mine)
    todo = [i for i in mine if i not in done]
    if todo:  # before the first write: a missing image or an unreadable teacher leaves the pseudo folder as it was
        ds.check_image_files(todo)
        device = resolve_device(recipe.launch.device, int(os.environ.get("LOCAL_RANK", "0")))
        model = load_model(recipe, run_dir, "teacher").to(device)
    # rewrite header + intact records, so appends never follow a torn line
    header = json.dumps({"key": key, "shard": shard, "num_shards": num_shards, "image_ids": mine})
    write_text_atomic("".join([header + "\n"] + [json.dumps(r) + "\n" for r in done.values()]), partial)
    stream(f"shard {shard}/{num_shards}: {len(mine)} images, {len(done)} done before, {len(todo)} to extract")

    if todo:
        index = {image_id: k for k, image_id in enumerate(ds.ids)}
        params = grouping_params(recipe)
        workers = _worker_count(recipe)
        buffer: list[dict] = []
        t_start = t_last = time.perf_counter()
        n_new = 0

        def finish(image_id: int, cands: list[Candidate], gt_masks: np.ndarray, affinity_s: float) -> None:
            # "seconds": wall time this image added to the shard (with a pool: throughput, not latency)
            nonlocal n_new, t_last
            now = time.perf_counter()
            rec = _record(image_id, cands, gt_masks, affinity_s, now - t_last)
            t_last = now
            done[image_id] = rec
            buffer.append(rec)
            n_new += 1
            if len(buffer) >= max(1, recipe.pseudo.save_every) or n_new == len(todo):
                with open(partial, "a", encoding="utf-8") as f:
                    f.writelines(json.dumps(r) + "\n" for r in buffer)
                    f.flush()
                    os.fsync(f.fileno())
                buffer.clear()
                rate = (time.perf_counter() - t_start) / n_new
                stream(f"shard {shard}/{num_shards}: {len(done)}/{len(mine)} images ({rate:.2f} s/image)")

        # Workers run group_affinity only (their imports stay light: numpy, scipy, scikit-image); they are
        # spawned, not forked, so that their BLAS pools start single-threaded.
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) if workers > 0 else None
        pending: deque[tuple[Future, tuple]] = deque()
        with (_single_threaded_children() if pool else nullcontext(), pool or nullcontext(), _explain_broken_pool(),
              _torch_threads(max(1, usable_cpus() - workers)) if pool and device.type == "cpu" else nullcontext()):
            for image_id in todo:
                image, target = ds[index[image_id]]
                t0 = time.perf_counter()
                with torch.inference_mode():
                    aff = model([image.to(device)])[0][0].float().cpu().numpy()
                info = (image_id, target["masks"].numpy().astype(bool), time.perf_counter() - t0)
                if pool is None:
                    finish(info[0], group_affinity(aff, params), *info[1:])
                    continue
                pending.append((pool.submit(group_affinity, aff, params), info))
                while len(pending) > 2 * workers:  # bounded: affinity maps of big images are large
                    future, info = pending.popleft()
                    finish(info[0], future.result(), *info[1:])
            while pending:
                future, info = pending.popleft()
                finish(info[0], future.result(), *info[1:])

    records = [done[i] for i in mine]
    write_json_atomic({"key": key, "shard": shard, "num_shards": num_shards, "image_ids": mine,
                       "records": records}, final)
    partial.unlink(missing_ok=True)
    return final


# --------------------------------------------------------------------------------------------
# pseudo masks: merge


def _rle_bytes(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def _hits(dt: list[dict], gt: list[dict]) -> np.ndarray:
    """IoU matrix [len(dt), len(gt)] of RLE masks (empty when either side is)."""
    if not dt or not gt:
        return np.zeros((len(dt), len(gt)))
    return np.asarray(mask_utils.iou([_rle_bytes(d) for d in dt], gt, [0] * len(gt))).reshape(len(dt), len(gt))


def merge_pseudo(recipe: Recipe, run_dir: str | Path, num_shards: int) -> dict | None:
    """Merge all ``num_shards`` shard files into ``pseudo/train_pseudo.json`` and ``pseudo/stats.json``.

    Returns the stats, or None while a shard file is missing. Idempotent: the same shards always give
    the same files (annotation ids follow train_base.json's image order, then rank).
    """
    run_dir = Path(run_dir)
    paths = [_shard_path(run_dir, s, num_shards) for s in range(num_shards)]
    if not all(p.is_file() for p in paths):
        return None
    shards = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    keys = {s["key"] for s in shards}
    if len(keys) > 1:
        raise RuntimeError(f"{paths[0].parent}: shards come from different teachers or grouping parameters "
                           f"(keys {sorted(keys)}); rerun run_pseudo(force=True) on every shard")
    records = {r["image_id"]: r for s in shards for r in s["records"]}
    base_path = _splits(run_dir, "train_base.json")
    base = load_coco(base_path)
    p = recipe.pseudo
    pseudo_cat = min(c["id"] for c in base["categories"])
    next_id = max((a["id"] for a in base["annotations"]), default=0) + 1
    pseudo_anns: list[dict] = []
    kept_by_image: dict[int, list[dict]] = {}
    n_cand = n_overlap = 0
    for img in base["images"]:
        rec = records.get(img["id"])
        if rec is None:
            continue
        cands = rec["candidates"]
        by_rank = {c["rank"]: c for c in cands}
        # selection reads rank and score only; the masks stay RLE
        objs = [Candidate(np.zeros((0, 0), bool), c["score"], c["rank"], c["bbox"], c["area"]) for c in cands]
        chosen = select_pseudo(objs, [c["gt_iou"] for c in cands], top_k=p.top_k, gt_iou_thresh=p.gt_iou_thresh)
        n_cand += len(cands)
        n_overlap += sum(c["gt_iou"] >= p.gt_iou_thresh for c in cands)
        kept = []
        for c in chosen:
            src = by_rank[c.rank]
            kept.append({"id": next_id, "image_id": img["id"], "category_id": pseudo_cat,
                         "segmentation": src["segmentation"], "area": float(src["area"]), "bbox": src["bbox"],
                         "iscrowd": 0, "pseudo": True, "score": src["score"], "rank": src["rank"],
                         "gt_iou": src["gt_iou"]})
            next_id += 1
        kept_by_image[img["id"]] = kept
        pseudo_anns.extend(kept)
    out = {**base, "annotations": base["annotations"] + pseudo_anns}
    pdir = _pseudo_dir(run_dir)
    save_coco(out, pdir / "train_pseudo.json")

    recs = [records[i] for i in kept_by_image]
    stats = {
        "images": len(recs),
        "candidates": n_cand,
        "candidates_overlapping_seen_gt": int(n_overlap),
        "kept": len(pseudo_anns),
        "kept_per_image": len(pseudo_anns) / max(1, len(recs)),
        "seconds_per_image": float(np.mean([r["seconds"] for r in recs])) if recs else 0.0,
        "affinity_s_per_image": float(np.mean([r["affinity_s"] for r in recs])) if recs else 0.0,
        "top_n": p.top_n, "top_k": p.top_k, "gt_iou_thresh": p.gt_iou_thresh,
        "pseudo_category_id": pseudo_cat, "shards": num_shards,
        **_unseen_stats(recipe, run_dir, records, kept_by_image),
    }
    write_json_atomic(stats, pdir / "stats.json")
    mark_stage_done(run_dir, "pseudo", recipe, ["train_pseudo.json", "stats.json"], stats=stats)
    return stats


def _unseen_gt(recipe: Recipe, run_dir: Path, image_ids: set[int]) -> tuple[dict[int, list[dict]], dict]:
    """Non-crowd GT of the partition's unseen classes on ``image_ids``, from the original training
    instances (held out of train_base.json), and the original file's categories."""
    partition = json.loads(_splits(run_dir, "partition.json").read_text())
    unseen = {c["id"] if isinstance(c, dict) else int(c) for c in partition["novel"]}
    orig = load_coco(recipe.data.path(recipe.data.train_instances))
    by_image: dict[int, list[dict]] = {i: [] for i in image_ids}
    for a in orig["annotations"]:
        if a["image_id"] in by_image and a["category_id"] in unseen and not a.get("iscrowd", 0):
            by_image[a["image_id"]].append(a)
    return by_image, {c["id"]: c for c in orig["categories"]}


def _unseen_stats(recipe: Recipe, run_dir: Path, records: dict[int, dict], kept: dict[int, list[dict]]) -> dict:
    """Recall of unseen GT objects at mask IoU 0.5 by the kept pseudo masks and by all stored candidates,
    and how many kept pseudo masks cover an unseen object."""
    sizes = {i: (records[i]["height"], records[i]["width"]) for i in kept}
    unseen, _ = _unseen_gt(recipe, run_dir, set(kept))
    n_gt = hit_kept = hit_cand = kept_on = 0
    for image_id, anns in unseen.items():
        h, w = sizes[image_id]
        gt = [ann_to_rle(a, h, w) for a in anns]
        n_gt += len(gt)
        k = _hits([a["segmentation"] for a in kept[image_id]], gt)
        c = _hits([c["segmentation"] for c in records[image_id]["candidates"]], gt)
        hit_kept += int((k >= 0.5).any(axis=0).sum()) if k.size else 0
        hit_cand += int((c >= 0.5).any(axis=0).sum()) if c.size else 0
        kept_on += int((k >= 0.5).any(axis=1).sum()) if k.size else 0
    return {"unseen_gt": n_gt,
            "unseen_recall@0.5": hit_kept / n_gt if n_gt else None,
            "unseen_recall@0.5_candidates": hit_cand / n_gt if n_gt else None,
            "kept_on_unseen@0.5": kept_on}


def run_pseudo(recipe: Recipe, run_dir: str | Path, shard: int | None = None, num_shards: int | None = None,
               force: bool = False, stream: Callable[[str], None] = print) -> dict:
    """Stage 02 (docs/ggn.md#32-grouping, docs/ggn.md#33-pseudo-gt): extract this process's shard(s), then merge once every shard exists.

    Sharding: see :func:`resolve_shards`. Returns the merged stats (``pseudo/stats.json``), or
    ``{"merged": False, "num_shards", "missing_shards"}`` while other shards are still running.
    Skipped when the stage already finished for this recipe (unless ``force``, which re-extracts
    this process's shards).
    """
    run_dir = Path(run_dir)
    force = force or inputs_changed(run_dir, "pseudo", recipe)  # redo, do not resume
    if not force and stage_done(run_dir, "pseudo", recipe):
        return json.loads((_pseudo_dir(run_dir) / "stats.json").read_text())
    if not (run_dir / "teacher" / FINAL).is_file():
        raise FileNotFoundError(f"{run_dir / 'teacher' / FINAL} not found; run the teacher stage first")
    plan = resolve_shards(shard, num_shards, recipe.pseudo.shards)
    n = plan[0][1]
    for s, _ in plan:
        extract_shard(recipe, run_dir, s, n, force=force, stream=stream)
    stats = merge_pseudo(recipe, run_dir, n)
    if stats is None:
        missing = [s for s in range(n) if not _shard_path(run_dir, s, n).is_file()]
        stream(f"pseudo: waiting for shard(s) {missing} of {n}; the last shard to finish merges")
        return {"merged": False, "num_shards": n, "missing_shards": missing}
    stream(f"pseudo: {stats['kept']} pseudo masks on {stats['images']} images "
           f"({stats['seconds_per_image']:.2f} s/image); unseen recall@0.5 {stats['unseen_recall@0.5']}")
    return stats


# --------------------------------------------------------------------------------------------
# evaluation


def _detectors(recipe: Recipe) -> tuple[str, ...]:
    """The detector stages a run trains and evaluates, in order."""
    return ("baseline", "student") + (OLN_VARIANTS if trains_oln_variant(recipe) else ())


def side_by_side(results: list[dict], recipe: Recipe) -> dict:
    """``{"protocol", "baseline": {iou: metrics}, <method>: {...}[, "oln": {...}, "oln_baseline": {...}]}`` from ``run_eval`` results;
    the student's key is ``recipe.method`` ("ggn" or "oln"), metrics as ``ovis.eval.evaluate`` gives them."""
    out: dict = {"protocol": recipe.eval.protocol}
    for r in results:
        key = recipe.method if r["model"] == "student" else r["model"]
        out.setdefault(key, {})[r["iou_type"]] = r["metrics"]
    return out


def run_eval(recipe: Recipe, run_dir: str | Path, force: bool = False,
             stream: Callable[[str], None] = print) -> list[dict]:
    """Baseline, student and (for a Mask R-CNN student) the OLN variants on ``splits/val.json`` under
    ``recipe.eval.protocol`` (docs/protocols.md#42-open-world-ar), by :func:`evaluate_models`.

    Writes ``eval/<which>/detections.json``, ``eval/<which>/<iou_type>/metrics.{json,md}``,
    ``eval/detections.json`` (the student's) and ``eval/metrics.json`` (:func:`side_by_side`).
    Returns one result dict per (model, iou type), with ``model`` added. No model has a
    ``segm`` entry when ``model.mask`` is false.
    """
    run_dir = Path(run_dir)
    out = stage_dir(run_dir, "eval")
    if not force and stage_done(run_dir, "eval", recipe):
        return [json.loads((out / w / t / "metrics.json").read_text())
                for w in _detectors(recipe) for t in _iou_types(recipe)]
    if len(_iou_types(recipe)) < len(recipe.eval.iou_types):
        stream("eval: model.mask is false (boxes only): segm skipped")
    results = evaluate_models(recipe, run_dir, _detectors(recipe), out, stream)
    outputs = [f"{w}/detections.json" for w in _detectors(recipe)]
    outputs += [f"{r['model']}/{r['iou_type']}/metrics.json" for r in results]
    copy_atomic(out / "student" / "detections.json", out / "detections.json")
    write_json_atomic(side_by_side(results, recipe), out / "metrics.json")
    mark_stage_done(run_dir, "eval", recipe, outputs + ["detections.json", "metrics.json"])
    stream(comparison_table(results, recipe))
    return results


def _iou_types(recipe: Recipe) -> list[str]:
    return [t for t in recipe.eval.iou_types if t == "bbox" or recipe.model.mask]


def evaluate_models(recipe: Recipe, run_dir: str | Path, models: Sequence[str], out: str | Path,
                    stream: Callable[[str], None] = print) -> list[dict]:
    """Each trained detector of ``models`` (of ``MODELS``, not the teacher) on ``<run_dir>/splits/val.json``:
    ``<out>/<which>/detections.json`` and ``<out>/<which>/<iou_type>/metrics.{json,md}``.
    ``eval.max_images`` evaluates the first N val images (GT restricted to them). Returns one result
    dict per (model, iou type), with ``model`` added."""
    from ovis.eval import evaluate
    from ovis.eval.report import write_metrics

    run_dir, out = Path(run_dir), Path(out)
    val_path = _splits(run_dir, "val.json")
    partition = _splits(run_dir, "partition.json")
    val = load_coco(val_path)
    if not val["categories"]:
        raise ValueError(f"{val_path}: no categories; class-agnostic detections need a category id to carry")
    cat_id = val["categories"][0]["id"]
    ds = CocoDetection(val_path, recipe.data.path(recipe.data.val_images), class_agnostic=True, with_masks=False)
    ids = set(ds.ids[: recipe.eval.max_images or None])
    gt = val if recipe.eval.max_images is None else {
        **val, "images": [im for im in val["images"] if im["id"] in ids],
        "annotations": [a for a in val["annotations"] if a["image_id"] in ids]}
    if "teacher" in models:
        raise ValueError("evaluate_models: the teacher is the PA network, not a detector")
    device = resolve_device(recipe.launch.device)
    workers = min(recipe.eval.workers, len(models)) if device.type == "cpu" else 1
    jobs = [(recipe, run_dir, which, ds, out / which / "detections.json", cat_id, device, workers == 1)
            for which in models]  # no progress bars from worker processes
    if workers > 1:  # spawned with one thread each: the detections equal a one-thread run's, whatever the cores
        with (_single_threaded_children(), ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool,
              _explain_broken_pool("eval: an inference worker process died", "lower eval.workers")):
            done = list(pool.map(_infer, jobs))
    else:
        done = [_infer(job) for job in jobs]
    results = []
    for which, det_path, seconds in done:
        stream(f"eval: {which} inference on {len(ids)} images in {seconds:.1f} s")
        for iou in _iou_types(recipe):
            res = {**evaluate(recipe.eval.protocol, gt, det_path, iou, partition=partition), "model": which,
                   "method": recipe.method}
            write_metrics(res, out / which / iou)
            results.append(res)
    return results


def _infer(job: tuple) -> tuple[str, Path, float]:
    """One detector's inference over the val set (an ``evaluate_models`` job): ``(which, detections path,
    seconds)``."""
    from ovis.engine.infer import run_inference

    recipe, run_dir, which, ds, det_path, cat_id, device, progress = job
    model = load_model(recipe, run_dir, which)
    t0 = time.perf_counter()
    path = run_inference(model, ds, det_path, cat_id, device, max_images=recipe.eval.max_images, progress=progress)
    return which, path, time.perf_counter() - t0


def comparison_table(results: list[dict], recipe: Recipe) -> str:
    """Markdown table of ``run_eval`` results: metric rows, one column per model and IoU type (baseline,
    GGN or OLN, then the OLN variants without and with pseudo GT), in %."""
    name = {"ggn": "GGN", "oln": "OLN"}.get(recipe.method, recipe.method)
    label = {"baseline": "baseline", "student": name, "oln_baseline": "OLN baseline", "oln": "OLN"}
    by = {(r["model"], r["iou_type"]): r["metrics"] for r in results}
    iou_types = list(dict.fromkeys(r["iou_type"] for r in results))
    cols = [(m, t) for t in iou_types for m in label if (m, t) in by]
    header = "| metric | " + " | ".join(f"{label[m]} ({t})" for m, t in cols) + " |"
    keys = [k for k in by[cols[0]] if k != "stats"] if cols else []
    def pct(v: float | None) -> str:  # pycocotools' -1: no GT in that area range
        return "n/a" if v is None or v < 0 else f"{100 * v:.1f}"

    rows = [f"| {k} | " + " | ".join(pct(by[c].get(k)) for c in cols) + " |" for k in keys]
    return "\n".join([header, "|" + "---|" * (len(cols) + 1), *rows])


# --------------------------------------------------------------------------------------------
# figures and browsers


def teacher_figures(recipe: Recipe, run_dir: str | Path, n: int = 4) -> list[Figure]:
    """Val image | affinity target from its GT (all classes, unseen included) | predicted affinity, n rows."""
    model = load_model(recipe, run_dir, "teacher")
    ds = CocoDetection(_splits(run_dir, "val.json"), recipe.data.path(recipe.data.val_images),
                       class_agnostic=True, skip_empty=True)
    rows = min(n, len(ds))
    fig = Figure(figsize=(9, 3 * max(rows, 1)), layout="constrained")
    axes = fig.subplots(max(rows, 1), 3, squeeze=False)
    for r in range(rows):
        image, target = ds[r]
        with torch.inference_mode():
            pred = model([image])[0][0].numpy()
        tgt, _ = affinity_target(palette_from_masks(target["masks"]))
        panels = [(image.permute(1, 2, 0).numpy(), f"val image {target['image_id']}"),
                  (tgt.numpy(), "target from GT (all classes)"), (pred, "predicted affinity")]
        for ax, (img, title) in zip(axes[r], panels):
            ax.imshow(img, cmap=None if img.ndim == 3 else "gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
    return [fig]


def _pseudo_view(recipe: Recipe, run_dir: Path) -> tuple[dict, list[dict], list[dict], list[int]]:
    """(base GT with the original file's categories, kept pseudo annotations, unseen GT, processed image ids)."""
    coco = load_coco(_pseudo_dir(run_dir) / "train_pseudo.json")
    pseudo = [a for a in coco["annotations"] if a.get("pseudo")]
    stats = json.loads((_pseudo_dir(run_dir) / "stats.json").read_text())
    _, ids = _pseudo_dataset(recipe, run_dir)
    ids = ids[: stats["images"]]
    unseen, cats = _unseen_gt(recipe, run_dir, set(ids))
    gt = {**coco, "annotations": [a for a in coco["annotations"] if not a.get("pseudo")],
          "categories": list(cats.values())}
    # drawn as "object": the pseudo category id is only a carrier for the class-agnostic student
    pseudo = [{**a, "category_id": None} for a in pseudo]
    return gt, pseudo, [a for i in ids for a in unseen[i]], ids


def pseudo_figures(recipe: Recipe, run_dir: str | Path, n: int = 4) -> list[Figure]:
    """[base GT | pseudo masks (ranked, dashed) | held-out unseen GT for n images,
    candidate/kept score histogram and what the kept pseudo masks land on]."""
    from ovis.viz.draw import image_grid

    run_dir = Path(run_dir)
    gt, pseudo, unseen, ids = _pseudo_view(recipe, run_dir)
    grid = image_grid(gt, _train_images(recipe), image_ids=ids[:n], cols=3,
                      extra={"pseudo (top-k)": pseudo, "unseen GT (held out)": unseen})
    stats = json.loads((_pseudo_dir(run_dir) / "stats.json").read_text())
    shards = sorted(_pseudo_dir(run_dir).glob(f"shards/candidates.*-of-{stats['shards']}.json"))
    cand_scores = [c["score"] for p in shards for r in json.loads(p.read_text())["records"] for c in r["candidates"]]
    fig = Figure(figsize=(10, 3.5), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    bins = np.linspace(min(cand_scores + [0.0]), max(cand_scores + [1.0]), 30)
    ax1.hist(cand_scores, bins=bins, alpha=0.6, label=f"candidates (top-{stats['top_n']})")
    ax1.hist([a["score"] for a in pseudo], bins=bins, alpha=0.8, label=f"kept (top-{stats['top_k']})")
    ax1.set_xlabel("score = 1 − (mean A on contour − mean A inside)")
    ax1.set_ylabel("masks")
    ax1.legend(fontsize=8)
    on = stats["kept_on_unseen@0.5"]
    ax2.bar(["on an unseen object\n(IoU ≥ 0.5)", "elsewhere"], [on, stats["kept"] - on],
            color=["tab:green", "tab:gray"])
    recall = stats["unseen_recall@0.5"]
    ax2.set_title(f"{stats['kept']} kept pseudo masks; unseen recall@0.5 "
                  + ("n/a" if recall is None else f"{100 * recall:.1f}%"), fontsize=9)
    return [grid, fig]


def pseudo_browser(recipe: Recipe, run_dir: str | Path):
    """ovis.viz.widgets.MaskBrowser over the processed training images: base GT, pseudo masks, unseen GT."""
    from ovis.viz.widgets import MaskBrowser

    gt, pseudo, unseen, ids = _pseudo_view(recipe, Path(run_dir))
    keep = set(ids)
    gt = {**gt, "images": [im for im in gt["images"] if im["id"] in keep],
          "annotations": [a for a in gt["annotations"] if a["image_id"] in keep]}
    return MaskBrowser(gt, _train_images(recipe), panels={"pseudo (top-k)": pseudo, "unseen GT (held out)": unseen})


def student_figures(recipe: Recipe, run_dir: str | Path, n: int = 4, top: int = 10) -> list[Figure]:
    """Val GT | baseline | GGN/OLN: the ``top`` highest-scoring detections on the first n val images."""
    from ovis.engine.infer import to_results
    from ovis.viz.draw import image_grid

    val_path = _splits(run_dir, "val.json")
    val = load_coco(val_path)
    ds = CocoDetection(val_path, recipe.data.path(recipe.data.val_images), class_agnostic=True, with_masks=False)
    ids = ds.ids[:n]
    name = {"ggn": "GGN", "oln": "OLN"}.get(recipe.method, recipe.method)
    cat_id = val["categories"][0]["id"]
    extra = {}
    for which, label in (("baseline", "baseline"), ("student", name)):
        model = load_model(recipe, run_dir, which)
        dets = []
        with torch.inference_mode():
            for image_id in ids:
                out = model([ds.load_image(image_id)])[0]
                keep = out["scores"].argsort(descending=True)[:top]
                dets += [{**d, "category_id": None} for d in
                         to_results({k: v[keep] for k, v in out.items()}, image_id, cat_id)]
        extra[f"{label} (top {top})"] = dets
    return [image_grid(val, recipe.data.path(recipe.data.val_images), image_ids=ids, cols=3, extra=extra)]
