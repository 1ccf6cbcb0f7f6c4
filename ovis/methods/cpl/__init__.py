"""CPL / XPM (docs/cpl.md). The recipe sections the method owns (``SECTIONS``, :mod:`.config`) load without torch, since
reading any of its recipes needs them; its stages, tasks and the notebooks' hooks (:mod:`.method`) load on
first use, as attributes of this package (``ovis.methods.cpl.run_eval``)."""

from __future__ import annotations

import importlib
from typing import Any

from ovis.methods.cpl.config import SECTIONS as SECTIONS  # the recipe sections CPL owns


def __getattr__(name: str) -> Any:
    return getattr(importlib.import_module(".method", __name__), name)
