"""The toy method's recipe sections: the teacher's schedule, and ``held_out``, a section of its own (the
images its eval stage scores), declared here as docs/README.md#adding-a-method says."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ovis.config import Rule, TrainConfig


@dataclass
class HeldOutConfig:
    """The held-out images of the eval stage: ``SquareDataset(n, seed)`` (training draws seed 0)."""

    n: int = 8
    seed: int = 1

    RULES: ClassVar[list[Rule]] = [("n", lambda v: v >= 1, "≥ 1")]


SECTIONS = {"teacher": TrainConfig, "held_out": HeldOutConfig}
