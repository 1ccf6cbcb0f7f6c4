"""Pseudo masks, part 2 (docs/ggn.md#33-pseudo-gt): the shards merged into ``pseudo/train_pseudo.json`` =
base GT + the top-k candidates of each image that do not duplicate seen GT (gt_iou < thresh), with
``pseudo/stats.json``; and the pseudo stage, which extracts this process's shards and then merges."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ovis.config import Recipe
from ovis.data.coco import ann_to_rle, load_coco, save_coco
from ovis.data.masks import mask_iou, match_counts
from ovis.io import write_json_atomic
from ovis.methods.ggn.datasets import split_file, unseen_gt
from ovis.methods.ggn.extract import extract_shard, sharding
from ovis.pseudo.grouping import Candidate, select_pseudo
from ovis.pseudo.shards import pseudo_stage, resolve_shards
from ovis.runs import RunLayout
from ovis.stages import Pending


def merge_pseudo(recipe: Recipe, run_dir: str | Path, num_shards: int) -> dict | None:
    """Merge all ``num_shards`` shard files into ``pseudo/train_pseudo.json`` and ``pseudo/stats.json``.

    Returns the stats, or None while a shard is unfinished (its file missing, or written for another teacher,
    grouping parameters or image list). Idempotent: the same shards always give the same files (annotation
    ids follow train_base.json's image order, then rank).
    """
    run_dir = Path(run_dir)
    records = sharding(recipe, run_dir, num_shards).records()
    if records is None:
        return None
    base_path = split_file(run_dir, "train_base.json")
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
    layout = RunLayout(run_dir)
    save_coco(out, layout.pseudo_gt)

    recs = [records[i] for i in kept_by_image]
    stats = {
        "images": len(recs),
        "candidates": n_cand,
        "candidates_overlapping_seen_gt": int(n_overlap),
        "kept": len(pseudo_anns),
        "kept_per_image": len(pseudo_anns) / max(1, len(recs)),
        "seconds_per_image": float(np.mean([r["seconds"] for r in recs])) if recs else 0.0,
        "affinity_s_per_image": float(np.mean([r["affinity_s"] for r in recs])) if recs else 0.0,
        "top_n": p.top_n, "top_k": p.top_k, "gt_iou_thresh": p.gt_iou_thresh, "oln_ranker": p.oln_ranker,
        "pseudo_category_id": pseudo_cat, "shards": num_shards,
        **_unseen_stats(recipe, run_dir, records, kept_by_image),
    }
    write_json_atomic(stats, layout.pseudo_stats)
    return stats


def _unseen_stats(recipe: Recipe, run_dir: Path, records: dict[int, dict], kept: dict[int, list[dict]]) -> dict:
    """Recall of unseen GT objects at mask IoU 0.5 by the kept pseudo masks and by all stored candidates,
    and how many kept pseudo masks cover an unseen object."""
    sizes = {i: (records[i]["height"], records[i]["width"]) for i in kept}
    unseen, _ = unseen_gt(recipe, run_dir, set(kept))
    n_gt = hit_kept = hit_cand = kept_on = 0
    for image_id, anns in unseen.items():
        h, w = sizes[image_id]
        gt = [ann_to_rle(a, h, w) for a in anns]
        n_gt += len(gt)
        covered, on = match_counts(mask_iou([a["segmentation"] for a in kept[image_id]], gt))
        hit_kept += covered
        kept_on += on
        hit_cand += match_counts(mask_iou([c["segmentation"] for c in records[image_id]["candidates"]], gt))[0]
    return {"unseen_gt": n_gt,
            "unseen_recall@0.5": hit_kept / n_gt if n_gt else None,
            "unseen_recall@0.5_candidates": hit_cand / n_gt if n_gt else None,
            "kept_on_unseen@0.5": kept_on}


def run_pseudo(recipe: Recipe, run_dir: str | Path, shard: int | None = None, num_shards: int | None = None,
               force: bool = False, stream: Callable[[str], None] = print) -> dict:
    """Stage 02 (docs/ggn.md#32-grouping, docs/ggn.md#33-pseudo-gt): extract this process's shard(s), then merge once every shard exists.

    Sharding: see :func:`resolve_shards`. Returns the merged stats (``pseudo/stats.json``, also the record's
    ``stats``), or ``{"merged": False, "num_shards", "missing_shards"}`` while other shards are still running.
    A stage of :func:`ovis.stages.execute`: skipped when it finished for this recipe (the stats read
    back), this process's shards re-extracted when ``force`` or a file it read (the PA network, the OLN
    ranker ``pseudo.oln_ranker``) changed, else resumed.
    """
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)

    def extract_and_merge(afresh: bool) -> dict | Pending[dict]:
        if not layout.checkpoint("teacher").is_file():
            raise FileNotFoundError(f"{layout.checkpoint('teacher')} not found; run the teacher stage first")
        plan = resolve_shards(shard, num_shards, recipe.pseudo.shards)
        n = plan[0][1]
        for s, _ in plan:
            extract_shard(recipe, run_dir, s, n, force=afresh, stream=stream)
        stats = merge_pseudo(recipe, run_dir, n)
        if stats is None:
            missing = sharding(recipe, run_dir, n).unfinished()
            stream(f"pseudo: waiting for shard(s) {missing} of {n}; the last shard to finish merges")
            return Pending({"merged": False, "num_shards": n, "missing_shards": missing})
        stream(f"pseudo: {stats['kept']} pseudo masks on {stats['images']} images "
               f"({stats['seconds_per_image']:.2f} s/image); unseen recall@0.5 {stats['unseen_recall@0.5']}")
        return stats

    ranker = recipe.pseudo.oln_ranker
    return pseudo_stage(recipe, run_dir, extract_and_merge, force=force, record=lambda stats: {"stats": stats},
                        inputs=[Path(ranker).resolve()] if ranker else [])
