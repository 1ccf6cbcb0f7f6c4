"""GGN's (and OLN's) recipe sections (docs/README.md#adding-a-method): the affinity network's schedule
(``teacher``), grouping into pseudo masks (``pseudo``) and the detector's schedule (``student``), besides
the core sections of :mod:`ovis.config`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ovis.config import Rule, TrainConfig, positive_or_none, unit_interval


@dataclass
class PseudoConfig:
    """Grouping the affinity net's output into pseudo masks (docs/ggn.md#32-grouping,
    docs/ggn.md#33-pseudo-gt); upstream extraction values."""

    max_images: int | None = None
    shards: int = 1
    edge_thresh: float = 0.0
    join_thresh: float = 1.0
    nms_thresh: float = 0.2
    use_orientation: bool = True
    globalization: float = 0.5
    n_eigenvectors: int = 16
    border_filter_thresh: float = 0.9
    min_component_size: int = 0
    seed_footprint: int = 20
    top_n: int = 20
    top_k: int = 3
    gt_iou_thresh: float = 0.5
    workers: int | None = None  # grouping processes (None: one per CPU core; 0: in the calling process)
    save_every: int = 20  # append finished images to the shard's progress file every K images
    # upstream's oln_ranker_path: an OLN checkpoint (the recipe's model with OLN heads, trained on base GT)
    # that re-ranks the candidates by pa / 2 + r + r · c before the NMS (ovis.methods.ggn.ranker); null: PA score
    oln_ranker: str | None = None

    RULES: ClassVar[list[Rule]] = [
        ("max_images", positive_or_none, "≥ 1 or null"), ("shards", lambda v: v >= 1, "≥ 1"),
        ("workers", lambda v: v is None or v >= 0, "≥ 0 or null"),
        *[(k, unit_interval, "in [0, 1]") for k in (
            "join_thresh", "nms_thresh", "globalization", "border_filter_thresh", "gt_iou_thresh")],
        ("edge_thresh", lambda v: -1 <= v <= 1, "in [-1, 1]"),
        *[(k, lambda v: v >= 1, "≥ 1") for k in ("n_eigenvectors", "seed_footprint", "top_n", "top_k", "save_every")],
        ("min_component_size", lambda v: v >= 0, "≥ 0"),
        ("oln_ranker", lambda v: v is None or (isinstance(v, str) and v.strip() != ""), "a checkpoint path or null"),
    ]


# the recipe sections GGN and OLN own, in recipe order (both train the detector with a plain schedule)
SECTIONS = {"teacher": TrainConfig, "pseudo": PseudoConfig, "student": TrainConfig}
