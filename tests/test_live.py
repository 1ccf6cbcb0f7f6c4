"""Live curves redraw from metrics.jsonl while a (simulated) training appends to it."""

from __future__ import annotations

import json
import time

from ovis.viz.live import LiveCurves


def _append(path, it):
    with open(path, "a") as f:
        f.write(json.dumps({"iteration": it, "total_loss": 1.0 / it, "loss_a": 0.5 / it, "lr": 0.01}) + "\n")


def test_live_curves_redraw_while_training_and_once_at_the_end(tmp_path):
    (tmp_path / "teacher").mkdir()
    log = tmp_path / "teacher" / "metrics.jsonl"
    live = LiveCurves(tmp_path, ["teacher"], interval=0.05)
    assert live.draw() is False and live.output.outputs == ()  # nothing logged yet
    with live:
        for it in range(1, 6):
            _append(log, it)
            time.sleep(0.1)
    assert live.draws >= 2  # during the body and once at exit
    (out,) = live.output.outputs
    assert out["data"]["image/png"].startswith("iVBOR")  # base64 PNG
    assert live._thread is not None and not live._thread.is_alive()


def test_disabled_live_curves_display_nothing(tmp_path):
    with LiveCurves(tmp_path, ["teacher"], interval=0.01, enabled=False) as live:
        pass
    assert live.draws == 0 and live._thread is None and live.output.outputs == ()
