"""Live training curves in a notebook: redraw ``metrics.jsonl`` into an ipywidgets Output while training runs."""

from __future__ import annotations

import base64
import threading
from collections.abc import Sequence
from pathlib import Path

import ipywidgets as widgets
from IPython.display import display

from ovis.viz.curves import find_training_logs, plot_training
from ovis.viz.widgets import figure_png


class LiveCurves:
    """Context manager: while the body trains, redraw the stages' loss/lr curves every ``interval`` s.

    The redraw runs in a background thread and only reads ``metrics.jsonl`` (which the engine
    appends line by line), so it works for in-process, torchrun and Slurm training alike.
    """

    def __init__(self, run_dir: str | Path, stages: Sequence[str], interval: float = 10.0, smooth_window: int = 20,
                 enabled: bool = True):
        self.enabled = enabled  # False: a no-op (headless runs, where widget traffic can hang nbclient)
        self.run_dir, self.stages = Path(run_dir), list(stages)
        self.interval, self.smooth_window = interval, smooth_window
        self.output = widgets.Output()
        self.draws = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def draw(self) -> bool:
        """Redraw once; False when no stage has logged yet."""
        if not find_training_logs(self.run_dir, self.stages):
            return False
        png = figure_png(plot_training(self.run_dir, self.stages, self.smooth_window), dpi=80)
        self.output.outputs = ({"output_type": "display_data", "metadata": {},
                                "data": {"image/png": base64.b64encode(png).decode("ascii"),
                                         "text/plain": f"training curves of {', '.join(self.stages)}"}},)
        self.draws += 1
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.draw()
            except (OSError, ValueError):  # a file being replaced mid-read: try again next tick
                continue

    def __enter__(self) -> LiveCurves:
        if not self.enabled:
            return self
        display(self.output)
        self._thread = threading.Thread(target=self._loop, name="ovis-live-curves", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.draw()
