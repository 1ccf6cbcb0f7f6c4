"""CPL's pseudo stage (docs/cpl.md#23-pseudo-labels): each shard's captioned images labelled by the frozen
teacher (:func:`ovis.pseudo.cross_modal.label_shard`), then the merge once every shard is complete, as one
stage of :func:`ovis.stages.execute`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ovis.config import Recipe
from ovis.engine.dist import barrier, get_rank
from ovis.pseudo.cross_modal import PseudoLabeler, label_shard, merge_pseudo, pseudo_image_ids, pseudo_sharding
from ovis.pseudo.shards import pseudo_stage, resolve_shards
from ovis.stages import Pending


def run_pseudo(recipe: Recipe, run_dir: str | Path, shard: int | None = None, num_shards: int | None = None,
               force: bool = False, stream: Callable[[str], None] = print, device: str | None = None,
               labeler: PseudoLabeler | None = None) -> dict:
    """Stage 02 (CPL): pseudo masks for this shard's train_base images with captions, then — once
    every shard is complete — the idempotent merge into ``pseudo/train_pseudo.json`` and
    ``pseudo/stats.json`` (stage marked done). Returns the stats, or the shard's progress when
    other shards are still missing. A stage of :func:`ovis.stages.execute`: skipped when it
    finished for this recipe (the stats read back), the shard labelled afresh when ``force`` or a
    file it read changed, else resumed.

    Sharding: :func:`ovis.pseudo.shards.resolve_shards` (explicit, torch.distributed, torchrun, Slurm array,
    else one shard); shard ``s`` of ``n`` takes every n-th image. Each shard appends its images' labels to
    its progress file every minute and at the end writes ``pseudo/shards/labels.<s>-of-<n>.json``
    (:func:`pseudo_sharding`); a re-run skips the images already done (for this recipe hash). Under
    torch.distributed, rank 0 merges after a barrier. ``labeler`` replaces the teacher (tests).
    """
    run_dir = Path(run_dir)

    def label_and_merge(afresh: bool) -> dict | Pending[dict]:
        [(s, n)] = resolve_shards(shard, num_shards)
        ids, captions = pseudo_image_ids(recipe, run_dir)
        sharding = pseudo_sharding(recipe, run_dir, n, ids)
        part = sharding.shard(s)
        progress = {"shard": s, "num_shards": n, "images": len(part.image_ids), "merged": False}
        if afresh:
            part.discard()
        if part.finished() is not None:
            stream(f"pseudo: shard {s}/{n}: {part.path.name} is complete, reused")
        else:
            label_shard(recipe, run_dir, part, captions, stream, device, labeler)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            barrier()
            if get_rank() != 0:
                return Pending(progress)
        unfinished = sharding.unfinished()
        if unfinished:
            stream(f"pseudo: {n - len(unfinished)}/{n} shards complete; the last one to finish merges")
            return Pending(progress)
        stats = merge_pseudo(recipe, run_dir, n)
        stream(f"pseudo: {stats['pseudo_masks']} pseudo masks on {stats['images_with_words']} images; "
               f"novel precision@0.5 {stats['novel_precision@0.5']}")
        return stats

    return pseudo_stage(recipe, run_dir, label_and_merge, force=force,
                        record=lambda stats: {"pseudo_masks": stats["pseudo_masks"]})
