"""Pseudo masks, part 1 (docs/ggn.md#32-grouping): PA network → grouping → ranked candidate masks per
training image (by the PA score, or by upstream's OLN ranker with ``pseudo.oln_ranker``), one shard of the
images per process (``pseudo/shards/candidates.<s>-of-<n>.json``), resumable from its progress file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ovis.config import Recipe
from ovis.data.coco import masks_to_rles
from ovis.data.masks import mask_boxes
from ovis.engine.dist import resolve_device, usable_cpus
from ovis.engine.workers import explain_broken_pool, single_threaded_children, torch_threads
from ovis.methods.ggn.datasets import pseudo_dataset, pseudo_dir
from ovis.methods.ggn.models import load_model
from ovis.methods.ggn.ranker import OlnRanker
from ovis.pseudo.grouping import Candidate, Grouping, GroupingParams, build_grouping, gt_iou
from ovis.pseudo.shards import Sharding
from ovis.runs import RunLayout


def grouping_params(recipe: Recipe) -> GroupingParams:
    """GroupingParams from ``recipe.pseudo`` (rank method and γ stay at upstream's extraction values)."""
    p = recipe.pseudo
    return GroupingParams(
        edge_thresh=p.edge_thresh, join_thresh=p.join_thresh, nms_thresh=p.nms_thresh,
        use_orientation=p.use_orientation, globalization=p.globalization, n_eigenvectors=p.n_eigenvectors,
        border_filter_thresh=p.border_filter_thresh, min_component_size=p.min_component_size,
        seed_footprint=p.seed_footprint, top_n=p.top_n,
    )


def sharding(recipe: Recipe, run_dir: str | Path, num_shards: int, image_ids: list[int] | None = None) -> Sharding:
    """The candidate shards of ``num_shards`` (``pseudo/shards/candidates.<s>-of-<n>.json``), keyed by the teacher's
    weights and the grouping parameters; ``image_ids``: the images to extract, when the caller has them."""
    ids = image_ids if image_ids is not None else pseudo_dataset(recipe, Path(run_dir))[1]
    return Sharding(pseudo_dir(run_dir) / "shards", "candidates", num_shards, _candidates_key(recipe, Path(run_dir)), ids)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:16]


def _candidates_key(recipe: Recipe, run_dir: Path) -> str:
    """What the stored candidates depend on: the teacher's weights, the grouping parameters and the OLN
    ranker's weights, if any."""
    key = {"teacher": _file_digest(RunLayout(run_dir).checkpoint("teacher")),
           "grouping": dataclasses.asdict(grouping_params(recipe))}
    ranker = recipe.pseudo.oln_ranker
    if ranker is not None:  # absent otherwise: the key of a run without a ranker is the one it always had
        key["oln_ranker"] = _file_digest(Path(ranker)) if Path(ranker).is_file() else f"missing:{ranker}"
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def at_image_size(cands: list[Candidate], height: int, width: int) -> list[Candidate]:
    """``cands`` of a grouping at the PA network's input size (``model.affinity_input_scale``) resized to the
    image's ``height`` × ``width``: a pixel is in a mask when at least half of its area is, and each box and
    area is recomputed from the resized mask (a mask may become empty). Unchanged at the image's own size."""
    if not cands or cands[0].mask.shape == (height, width):
        return cands
    masks = torch.from_numpy(np.stack([c.mask for c in cands])).float()[:, None]
    small = (F.interpolate(masks, size=(height, width), mode="area")[:, 0] >= 0.5).numpy()
    return [dataclasses.replace(c, mask=m, bbox=box.tolist(), area=int(m.sum()))
            for c, m, box in zip(cands, small, mask_boxes(small))]


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


def _worker_count(recipe: Recipe) -> int:
    w = recipe.pseudo.workers
    if w is None:
        return usable_cpus()
    if w < 0:
        raise ValueError(f"pseudo.workers={w} must be ≥ 0 (0: group in this process)")
    return w


def extract_shard(recipe: Recipe, run_dir: str | Path, shard: int, num_shards: int, force: bool = False,
                  stream: Callable[[str], None] = print) -> Path:
    """Extract candidates for every ``num_shards``-th training image starting at ``shard``; returns the shard file.

    Progress goes to ``candidates.<s>-of-<n>.partial.jsonl`` (:class:`ovis.pseudo.shards.Shard`) every
    ``pseudo.save_every`` images; a rerun continues from it, and a finished shard file for the same teacher,
    parameters and images is reused.
    """
    run_dir = Path(run_dir)
    ds, ids = pseudo_dataset(recipe, run_dir)
    part = sharding(recipe, run_dir, num_shards, ids).shard(shard)
    mine = part.image_ids
    if force:
        part.discard()
    if part.finished() is not None:
        stream(f"shard {shard}/{num_shards}: {part.path.name} is complete, reused")
        return part.path
    done = part.read_progress(stream)
    todo = [i for i in mine if i not in done]
    if todo:  # before the first write: a missing image or an unreadable teacher leaves the pseudo folder as it was
        ds.check_image_files(todo)
        device = resolve_device(recipe.launch.device, int(os.environ.get("LOCAL_RANK", "0")))
        model = load_model(recipe, run_dir, "teacher").to(device)
        ranker = OlnRanker(recipe, recipe.pseudo.oln_ranker, device) if recipe.pseudo.oln_ranker else None
    part.begin(done)
    ranking = f"OLN ranker {recipe.pseudo.oln_ranker}" if recipe.pseudo.oln_ranker else "PA score"
    stream(f"shard {shard}/{num_shards}: {len(mine)} images, {len(done)} done before, {len(todo)} to extract "
           f"(ranked by the {ranking})")

    if todo:
        index = {image_id: k for k, image_id in enumerate(ds.ids)}
        params = grouping_params(recipe)
        workers = _worker_count(recipe)
        buffer: list[dict] = []
        t_start = t_last = time.perf_counter()
        n_new = 0

        def finish(grouping: Grouping | None, image_id: int, image: torch.Tensor, gt_masks: np.ndarray,
                   affinity_s: float) -> None:
            # "seconds": wall time this image added to the shard (with a pool: throughput, not latency)
            nonlocal n_new, t_last
            if grouping is None:
                cands = []
            else:
                cands = at_image_size(grouping.select(params, ranker.scores(image, grouping) if ranker else None),
                                      *gt_masks.shape[1:])
            now = time.perf_counter()
            rec = _record(image_id, cands, gt_masks, affinity_s, now - t_last)
            t_last = now
            done[image_id] = rec
            buffer.append(rec)
            n_new += 1
            if len(buffer) >= max(1, recipe.pseudo.save_every) or n_new == len(todo):
                part.append(buffer)
                buffer.clear()
                rate = (time.perf_counter() - t_start) / n_new
                stream(f"shard {shard}/{num_shards}: {len(done)}/{len(mine)} images ({rate:.2f} s/image)")

        # Workers run build_grouping only (their imports stay light: numpy, scipy, scikit-image); they are
        # spawned, not forked, so that their BLAS pools start single-threaded. The ranking and the NMS happen
        # here, where the OLN ranker's model is.
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) if workers > 0 else None
        pending: deque[tuple[Future, tuple]] = deque()
        died = explain_broken_pool("pseudo: a grouping worker process died", "lower pseudo.workers (0: group in this process)")
        with (single_threaded_children() if pool else nullcontext(), pool or nullcontext(), died,
              torch_threads(max(1, usable_cpus() - workers)) if pool and device.type == "cpu" else nullcontext()):
            for image_id in todo:
                image, target = ds[index[image_id]]
                t0 = time.perf_counter()
                with torch.inference_mode():
                    aff = model([image.to(device)])[0][0].float().cpu().numpy()
                info = (image_id, image, target["masks"].numpy().astype(bool), time.perf_counter() - t0)
                if pool is None:
                    finish(build_grouping(aff, params), *info)
                    continue
                pending.append((pool.submit(build_grouping, aff, params), info))
                while len(pending) > 2 * workers:  # bounded: affinity maps of big images are large
                    future, info = pending.popleft()
                    finish(future.result(), *info)
            while pending:
                future, info = pending.popleft()
                finish(future.result(), *info)

    return part.finish(done)
