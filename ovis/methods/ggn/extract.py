"""Pseudo masks, part 1 (docs/ggn.md#32-grouping): PA network → grouping → ranked candidate masks per
training image, one shard of the images per process (``pseudo/shards/candidates.<s>-of-<n>.json``),
resumable from its progress file."""

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

from ovis.config import Recipe
from ovis.data.coco import masks_to_rles
from ovis.engine.dist import resolve_device, usable_cpus
from ovis.io import write_json_atomic, write_text_atomic
from ovis.methods.ggn.datasets import pseudo_dataset, pseudo_dir
from ovis.methods.ggn.models import load_model
from ovis.methods.ggn.workers import explain_broken_pool, single_threaded_children, torch_threads
from ovis.pseudo.grouping import Candidate, GroupingParams, group_affinity, gt_iou
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


def shard_path(run_dir: str | Path, shard: int, num_shards: int, partial: bool = False) -> Path:
    """Shard ``shard`` of ``num_shards``: its finished file, or with ``partial`` its progress file."""
    suffix = "partial.jsonl" if partial else "json"
    return pseudo_dir(run_dir) / "shards" / f"candidates.{shard}-of-{num_shards}.{suffix}"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:16]


def _candidates_key(recipe: Recipe, run_dir: Path) -> str:
    """What the stored candidates depend on: the teacher's weights and the grouping parameters."""
    blob = json.dumps({"teacher": _file_digest(RunLayout(run_dir).checkpoint("teacher")),
                       "grouping": dataclasses.asdict(grouping_params(recipe))}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
    final = shard_path(run_dir, shard, num_shards)
    partial = shard_path(run_dir, shard, num_shards, partial=True)
    ds, ids = pseudo_dataset(recipe, run_dir)
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
        with (single_threaded_children() if pool else nullcontext(), pool or nullcontext(), explain_broken_pool(),
              torch_threads(max(1, usable_cpus() - workers)) if pool and device.type == "cpu" else nullcontext()):
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
