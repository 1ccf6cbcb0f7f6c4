"""Sharded inference: a detector over a COCO image set → COCO results (boxes, scores, RLE masks).

Each rank takes every ``world_size``-th image and writes ``detections.rank<r>.json``; rank 0 merges
the shards into ``detections.json`` (``ovis.eval`` also merges shards it finds).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ovis.data.coco import masks_to_rles
from ovis.data.dataset import CocoDetection
from ovis.engine.dist import all_gather_object, barrier, get_rank, get_world_size
from ovis.io import write_json_atomic


def to_results(output: dict, image_id: int, label_to_cat_id: dict[int, int] | int,
               mask_thresh: float = 0.5) -> list[dict]:
    """One image's torchvision detection output → COCO result entries.

    ``label_to_cat_id`` maps predicted labels to category ids; an int gives every detection that
    category (class-agnostic models evaluated with ``useCats=0``).
    """
    boxes = output["boxes"].detach().float().cpu()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
    scores = output["scores"].detach().float().cpu().tolist()
    labels = output["labels"].cpu().tolist()
    rles = None
    if "masks" in output:
        masks = output["masks"].detach().cpu()
        masks = masks[:, 0] if masks.ndim == 4 else masks
        rles = masks_to_rles((masks > mask_thresh).numpy())
    results = []
    for i, (box, score, label) in enumerate(zip(xywh, scores, labels)):
        cat = label_to_cat_id if isinstance(label_to_cat_id, int) else label_to_cat_id[label]
        entry = {"image_id": image_id, "category_id": cat, "bbox": [round(v, 2) for v in box], "score": score}
        if rles is not None:
            entry["segmentation"] = rles[i]
        results.append(entry)
    return results


@torch.inference_mode()
def predict(model: nn.Module, dataset: CocoDetection, label_to_cat_id: dict[int, int] | int,
            device: torch.device | str = "cpu", batch_size: int = 1, max_images: int | None = None,
            progress: bool = True) -> list[dict]:
    """Run ``model`` on this rank's share of ``dataset`` (images only) and return COCO results."""
    model.eval().to(device)
    ids = dataset.ids[: max_images or None]
    mine = ids[get_rank() :: get_world_size()]
    results: list[dict] = []
    bar = tqdm(total=len(mine), desc="inference", disable=not progress or get_rank() != 0, leave=False)
    for start in range(0, len(mine), batch_size):
        chunk = mine[start : start + batch_size]
        images = [dataset.load_image(i).to(device) for i in chunk]
        for image_id, out in zip(chunk, model(images)):
            results.extend(to_results(out, image_id, label_to_cat_id))
        bar.update(len(chunk))
    bar.close()
    return results


def run_inference(model: nn.Module, dataset: CocoDetection, out_path: str | Path,
                  label_to_cat_id: dict[int, int] | int, device: torch.device | str = "cpu",
                  batch_size: int = 1, max_images: int | None = None, progress: bool = True) -> Path:
    """Predict on every rank, write this rank's shard, and merge all shards into ``out_path`` on rank 0."""
    out_path = Path(out_path)
    results = predict(model, dataset, label_to_cat_id, device, batch_size, max_images, progress)
    world = get_world_size()
    if world == 1:
        return write_json_atomic(results, out_path)
    write_json_atomic(results, out_path.with_name(f"{out_path.stem}.rank{get_rank()}.json"))
    gathered = all_gather_object(len(results))
    barrier()
    if get_rank() == 0:
        from ovis.eval.io import merge_shards, shard_paths

        shards = shard_paths(out_path)
        merged = merge_shards(shards, out_path)
        if len(merged) != sum(gathered):
            raise RuntimeError(f"merged {len(merged)} detections but ranks produced {sum(gathered)}")
        for s in shards:
            s.unlink()
    barrier()
    return out_path
