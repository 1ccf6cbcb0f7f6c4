"""CPL's recipe sections (docs/README.md#adding-a-method): caption grounding, the teacher's schedule,
cross-modal pseudo-labelling and the robust student, besides the core sections of :mod:`ovis.config`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ovis.config import Rule, TrainConfig, positive_or_none


@dataclass
class GroundingConfig(TrainConfig):
    """CPL caption grounding (docs/cpl.md#21-caption-pretraining)."""

    # keep each training image's backbone output (per flip) in memory after its first use: exact when
    # the backbone is frozen (freeze: [backbone]), and then an epoch costs one forward per image and
    # flip instead of one per visit; memory grows with the dataset (images x 2 x C5 cells x channels)
    cache_features: bool = False


@dataclass
class PseudoConfig:
    """Cross-modal pseudo-labels (docs/cpl.md#23-pseudo-labels)."""

    vocabulary: str = "lvis"  # lvis | dataset
    max_images: int | None = None
    shards: int = 1

    RULES: ClassVar[list[Rule]] = [
        ("vocabulary", ("lvis", "dataset"), ""), ("max_images", positive_or_none, "≥ 1 or null"),
        ("shards", lambda v: v >= 1, "≥ 1"),
    ]


@dataclass
class StudentConfig(TrainConfig):
    """CPL robust student extras (docs/cpl.md#24-robust-student)."""

    uncertainty: bool = True
    uncertainty_train_iter: int = 10000
    lambda_pseudo: float = 0.1
    pseudo_box_loss: bool = True
    online_pseudo: bool = False  # True: the frozen teacher labels every batch (upstream); False: pseudo/train_pseudo.json

    RULES: ClassVar[list[Rule]] = [
        ("uncertainty_train_iter", lambda v: v >= 0, "≥ 0"),
        ("lambda_pseudo", lambda v: math.isfinite(v) and v >= 0, "a finite number ≥ 0"),
    ]


# the recipe sections CPL owns, in recipe order
SECTIONS = {"grounding": GroundingConfig, "teacher": TrainConfig, "pseudo": PseudoConfig, "student": StudentConfig}
