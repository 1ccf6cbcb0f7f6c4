"""Shared fixtures: paths of the real COCO files carried in tests/data (nothing outside the repository needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

DATA = Path(__file__).parent / "data"
REAL = DATA / "real"
COCO_MINI = REAL / "coco_mini"


@pytest.fixture
def coco_mini() -> Path:
    return COCO_MINI
