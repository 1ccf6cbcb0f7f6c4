"""The named protocols, as data: one :class:`Protocol` per name, with the splits it builds and how it is evaluated.

The one place the protocol names live, looked up one way everywhere (:func:`get_protocol`): the recipe checks
``splits.protocol`` and ``eval.protocol`` against :func:`protocol_names` when it is loaded, ``ovis.data.splits``
builds the splits of a protocol's :class:`SplitSettings` and ``ovis.eval.protocols`` evaluates under its
:class:`EvalSettings`. A protocol that only evaluates (``coco``, ``coco_voc_nonvoc_ldet``) has no split settings.
Plain data (no numpy, no file access), so that the recipe layer can name them without importing the data or
evaluation code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["OPEN_WORLD_BUDGETS", "PROTOCOLS", "EvalSettings", "Protocol", "SplitSettings", "get_protocol",
           "protocol_names"]

Use = Literal["splits", "eval"]  # what a protocol is named for: the recipe section that names it


@dataclass(frozen=True)
class SplitSettings:
    """How ``ovis splits`` divides a dataset's categories (``ovis.data.splits``)."""

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


@dataclass(frozen=True)
class EvalSettings:
    """How ``ovis.eval.protocols`` evaluates under a protocol. `split_resource`: package file in
    ovis/data/resources with the base/novel (or voc/nonvoc = seen/unseen) category lists, used when no
    partition is passed."""

    split_resource: str | None = None
    max_dets: tuple[int, ...] = (1, 10, 100)
    # with split_resource coco_to_synset.json: the GT's vocabulary. "lvis": seen = the GT categories whose
    # synset is a COCO class's, the rest unseen; "coco": COCO's 80 categories, all unseen (nothing ignored)
    synset_gt: str | None = None
    # the GT's categories are all unseen (nothing ignored), whatever they are, and the GT may be a video-format file
    # read frame by frame (UVO's VideoDenseSet / VideoSparseSet, ovis.data.uvo)
    gt_all_unseen: bool = False


@dataclass(frozen=True)
class Protocol:
    """One named protocol: its kind, and the settings of each use it has (None: not named for that use)."""

    name: str
    kind: str  # "coco" | "ovr" | "open_world"
    description: str
    split_settings: SplitSettings | None = None
    eval_settings: EvalSettings | None = None

    @property
    def splits(self) -> SplitSettings:
        """The split settings; KeyError when the protocol builds no splits."""
        if self.split_settings is None:
            raise KeyError(_not_for(self.name, "splits"))
        return self.split_settings

    @property
    def evaluation(self) -> EvalSettings:
        """The evaluation settings; KeyError when the protocol is not evaluated under."""
        if self.eval_settings is None:
            raise KeyError(_not_for(self.name, "eval"))
        return self.eval_settings


OPEN_WORLD_BUDGETS = (10, 20, 30, 50, 100, 300, 500, 1000, 1500)

PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("coco", "coco", "COCO AP/AR, the 12 standard pycocotools stats", eval_settings=EvalSettings()),
        Protocol(
            "coco_ovr_48_17", "ovr",
            "CPL/XPM COCO 48 base / 17 novel: AP50 per split (base, novel, all) + 12 COCO stats",
            SplitSettings("coco_ovr_48_17.json", "base", "novel"), EvalSettings("coco_ovr_48_17.json"),
        ),
        Protocol(
            "ovr_category_split", "ovr",
            "open vocabulary, base/novel as partition.json gives them (the val file's category split fields): AP50 per "
            "split (base, novel, all) + 12 COCO stats",
            SplitSettings("", "base", "novel", category_split=True), EvalSettings(),
        ),
        Protocol(
            "demo_ovr", "ovr", "demo data, open-vocabulary: AP50 per split + 12 COCO stats",
            SplitSettings("demo_ovr.json", "base", "novel"), EvalSettings("demo_ovr.json"),
        ),
        Protocol(
            "coco_voc_nonvoc", "open_world",
            "OLN/GGN VOC -> non-VOC: class-agnostic AR@k (k <= 1500), seen hits removed from the budget, AUC",
            SplitSettings("coco_voc_nonvoc.json", "voc", "nonvoc", min_train_side=32),
            EvalSettings("coco_voc_nonvoc.json", OPEN_WORLD_BUDGETS),
        ),
        Protocol(
            "coco_voc_nonvoc_ldet", "open_world",
            "VOC -> non-VOC with budgets capped at 100 (top-100 list), as LDET-style tables report",
            eval_settings=EvalSettings("coco_voc_nonvoc.json", (10, 20, 30, 50, 100)),
        ),
        Protocol(
            "coco_person_nonperson", "open_world",
            "GGN person -> non-person (COCO): class-agnostic AR@k (k <= 1500), person hits removed from the budget, AUC",
            SplitSettings("coco_person_nonperson.json", "person", "nonperson", min_train_side=32),
            EvalSettings("coco_person_nonperson.json", OPEN_WORLD_BUDGETS),
        ),
        Protocol(
            "coco_lvis_noncoco", "open_world",
            "GGN COCO -> non-COCO (LVIS): class-agnostic AR@k on LVIS categories without a COCO synset; "
            "hits on LVIS categories with one removed from the budget, AUC",
            SplitSettings("coco_to_synset.json", "coco", "noncoco", min_train_side=32, lvis_side="val"),
            EvalSettings("coco_to_synset.json", OPEN_WORLD_BUDGETS, synset_gt="lvis"),
        ),
        Protocol(
            "lvis_noncoco_coco", "open_world",
            "GGN non-COCO (LVIS) -> COCO: class-agnostic AR@k on all COCO instances (no class seen), AUC",
            SplitSettings("coco_to_synset.json", "noncoco", "coco", min_train_side=32, lvis_side="train"),
            EvalSettings("coco_to_synset.json", OPEN_WORLD_BUDGETS, synset_gt="coco"),
        ),
        Protocol(
            "coco_uvo", "open_world",
            "GGN COCO -> UVO: class-agnostic AR@k on every instance of a UVO v1.0 file (FrameSet or video-format "
            "dense/sparse set, frame by frame; no class seen), AUC",
            SplitSettings("coco_to_synset.json", "coco", "uvo", min_train_side=32, val_all_unseen=True),
            EvalSettings(None, OPEN_WORLD_BUDGETS, gt_all_unseen=True),
        ),
        Protocol(
            "demo_open_world", "open_world",
            "demo data, open-world: class-agnostic AR@k with seen hits removed, AUC",
            SplitSettings("demo_open_world.json", "seen", "unseen", min_train_side=32),
            EvalSettings("demo_open_world.json", OPEN_WORLD_BUDGETS),
        ),
    )
}


def protocol_names(use: Use) -> tuple[str, ...]:
    """The names of the protocols with settings for `use` ("splits" or "eval"), in registry order."""
    return tuple(name for name, p in PROTOCOLS.items()
                 if (p.split_settings if use == "splits" else p.eval_settings) is not None)


def _not_for(name: str, use: Use) -> str:
    what, others = ("builds no splits", "those that do") if use == "splits" else ("is not evaluated under", "those that are")
    return f"protocol {name!r} {what}; {others}: {', '.join(protocol_names(use))}"


def get_protocol(name: str) -> Protocol:
    """The protocol called `name`; KeyError listing the known names otherwise. Its :attr:`Protocol.splits` and
    :attr:`Protocol.evaluation` raise KeyError when it has no settings for that use."""
    if name not in PROTOCOLS:
        raise KeyError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
