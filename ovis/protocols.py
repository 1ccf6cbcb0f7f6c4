"""The named protocols' settings, as data: the splits each builds and how each is evaluated.

The one place the protocol names live: the recipe checks ``splits.protocol`` and ``eval.protocol``
against these tables when it is loaded, ``ovis.data.splits`` builds the splits of a
:class:`SplitProtocol` and ``ovis.eval.protocols`` evaluates under an :class:`EvalProtocol`. Plain data
(no numpy, no file access), so that the recipe layer can name them without importing the data or
evaluation code.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EVAL_PROTOCOLS", "OPEN_WORLD_BUDGETS", "SPLIT_PROTOCOLS", "EvalProtocol", "SplitProtocol"]


@dataclass(frozen=True)
class SplitProtocol:
    """How ``ovis splits`` divides a dataset's categories (``ovis.data.splits``)."""

    name: str
    kind: str  # "ovr" | "open_world"
    resource: str  # file under ovis/data/resources/
    base_key: str  # key of the trained-on classes in the resource file
    novel_key: str  # key of the held-out classes
    min_train_side: int = 0  # drop training images whose shorter side is below this
    # cross-dataset protocols (COCO <-> LVIS): which input file holds LVIS categories, "train" or "val". Its
    # categories are divided by `synset` into those with a COCO counterpart (key "coco") and the rest
    # ("noncoco") through the resource, the LVIS API's coco_to_synset.json; the other file holds COCO's 80.
    lvis_side: str | None = None
    # cross-dataset protocols whose val file has no class trained on (COCO -> UVO): train on COCO's 80 (the resource
    # lists them), recall every instance of the val file
    val_all_unseen: bool = False
    # open-vocabulary protocols whose classes the val file's categories name in a "split" field (seen/base, unseen/novel),
    # as the CPL authors' Open Images preparation writes it (docs/cpl.md#28-open-images-and-conceptual-captions); no resource
    category_split: bool = False


SPLIT_PROTOCOLS: dict[str, SplitProtocol] = {
    p.name: p
    for p in (
        SplitProtocol("coco_ovr_48_17", "ovr", "coco_ovr_48_17.json", "base", "novel"),
        SplitProtocol("coco_voc_nonvoc", "open_world", "coco_voc_nonvoc.json", "voc", "nonvoc", min_train_side=32),
        SplitProtocol("coco_person_nonperson", "open_world", "coco_person_nonperson.json", "person", "nonperson",
                      min_train_side=32),
        SplitProtocol("coco_lvis_noncoco", "open_world", "coco_to_synset.json", "coco", "noncoco", min_train_side=32,
                      lvis_side="val"),
        SplitProtocol("lvis_noncoco_coco", "open_world", "coco_to_synset.json", "noncoco", "coco", min_train_side=32,
                      lvis_side="train"),
        SplitProtocol("coco_uvo", "open_world", "coco_to_synset.json", "coco", "uvo", min_train_side=32,
                      val_all_unseen=True),
        SplitProtocol("ovr_category_split", "ovr", "", "base", "novel", category_split=True),
        SplitProtocol("demo_ovr", "ovr", "demo_ovr.json", "base", "novel"),
        SplitProtocol("demo_open_world", "open_world", "demo_open_world.json", "seen", "unseen", min_train_side=32),
    )
}


@dataclass(frozen=True)
class EvalProtocol:
    """One named evaluation protocol (``ovis.eval.protocols``). `split_resource`: package file in
    ovis/data/resources with the base/novel (or voc/nonvoc = seen/unseen) category lists, used when no
    partition is passed."""

    name: str
    kind: str  # "coco" | "ovr" | "open_world"
    description: str
    split_resource: str | None = None
    max_dets: tuple[int, ...] = (1, 10, 100)
    # with split_resource coco_to_synset.json: the GT's vocabulary. "lvis": seen = the GT categories whose
    # synset is a COCO class's, the rest unseen; "coco": COCO's 80 categories, all unseen (nothing ignored)
    synset_gt: str | None = None
    # the GT's categories are all unseen (nothing ignored), whatever they are, and the GT may be a video-format file
    # read frame by frame (UVO's VideoDenseSet / VideoSparseSet, ovis.data.uvo)
    gt_all_unseen: bool = False


OPEN_WORLD_BUDGETS = (10, 20, 30, 50, 100, 300, 500, 1000, 1500)

EVAL_PROTOCOLS: dict[str, EvalProtocol] = {
    p.name: p
    for p in (
        EvalProtocol("coco", "coco", "COCO AP/AR, the 12 standard pycocotools stats"),
        EvalProtocol(
            "coco_ovr_48_17", "ovr",
            "CPL/XPM COCO 48 base / 17 novel: AP50 per split (base, novel, all) + 12 COCO stats",
            "coco_ovr_48_17.json",
        ),
        EvalProtocol(
            "ovr_category_split", "ovr",
            "open vocabulary, base/novel as partition.json gives them (the val file's category split fields): AP50 per "
            "split (base, novel, all) + 12 COCO stats",
        ),
        EvalProtocol("demo_ovr", "ovr", "demo data, open-vocabulary: AP50 per split + 12 COCO stats", "demo_ovr.json"),
        EvalProtocol(
            "coco_voc_nonvoc", "open_world",
            "OLN/GGN VOC -> non-VOC: class-agnostic AR@k (k <= 1500), seen hits removed from the budget, AUC",
            "coco_voc_nonvoc.json", OPEN_WORLD_BUDGETS,
        ),
        EvalProtocol(
            "coco_voc_nonvoc_ldet", "open_world",
            "VOC -> non-VOC with budgets capped at 100 (top-100 list), as LDET-style tables report",
            "coco_voc_nonvoc.json", (10, 20, 30, 50, 100),
        ),
        EvalProtocol(
            "coco_person_nonperson", "open_world",
            "GGN person -> non-person (COCO): class-agnostic AR@k (k <= 1500), person hits removed from the budget, AUC",
            "coco_person_nonperson.json", OPEN_WORLD_BUDGETS,
        ),
        EvalProtocol(
            "coco_lvis_noncoco", "open_world",
            "GGN COCO -> non-COCO (LVIS): class-agnostic AR@k on LVIS categories without a COCO synset; "
            "hits on LVIS categories with one removed from the budget, AUC",
            "coco_to_synset.json", OPEN_WORLD_BUDGETS, synset_gt="lvis",
        ),
        EvalProtocol(
            "lvis_noncoco_coco", "open_world",
            "GGN non-COCO (LVIS) -> COCO: class-agnostic AR@k on all COCO instances (no class seen), AUC",
            "coco_to_synset.json", OPEN_WORLD_BUDGETS, synset_gt="coco",
        ),
        EvalProtocol(
            "coco_uvo", "open_world",
            "GGN COCO -> UVO: class-agnostic AR@k on every instance of a UVO v1.0 file (FrameSet or video-format "
            "dense/sparse set, frame by frame; no class seen), AUC",
            None, OPEN_WORLD_BUDGETS, gt_all_unseen=True,
        ),
        EvalProtocol(
            "demo_open_world", "open_world",
            "demo data, open-world: class-agnostic AR@k with seen hits removed, AUC",
            "demo_open_world.json", OPEN_WORLD_BUDGETS,
        ),
    )
}
