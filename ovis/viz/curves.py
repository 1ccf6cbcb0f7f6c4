"""Curves and charts of a run: evaluation metrics beside the papers' numbers.

Sections: metric plots (per-class AP50, AR@k vs k). Each function draws on a given matplotlib
Axes (or a new `Figure`, not pyplot) and returns the Figure, so notebooks show it and scripts save it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ovis.eval.reference import PAPER_AR_CURVES

BASE_COLOR = "tab:blue"
NOVEL_COLOR = "tab:orange"
OTHER_COLOR = "tab:gray"


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize)  # not pyplot: no global figure state, headless-safe
    return fig, fig.subplots()


# --- metric plots -------------------------------------------------------------------------------


def plot_ap50_per_class(
    per_class: Mapping[str, float],
    base_names: Sequence[str],
    novel_names: Sequence[str],
    ax: Axes | None = None,
    title: str = "AP50 per class",
) -> Figure:
    """Bar chart of AP50 (fraction, shown in %) per class, base blue and novel orange; classes
    without GT (AP50 = -1) are left out. Bars are sorted base first, then by value."""
    base, novel = set(base_names), set(novel_names)
    items = [(n, v) for n, v in per_class.items() if v >= 0]
    items.sort(key=lambda nv: (nv[0] not in base, -nv[1]))
    fig, ax = _axes(ax, (max(6.0, 0.22 * len(items) + 2), 4.0))
    colors = [BASE_COLOR if n in base else NOVEL_COLOR if n in novel else OTHER_COLOR for n, _ in items]
    ax.bar(range(len(items)), [100 * v for _, v in items], color=colors)
    ax.set_xticks(range(len(items)), [n for n, _ in items], rotation=90, fontsize=7)
    ax.set_ylabel("AP50 (%)")
    ax.set_title(title)
    ax.legend(handles=[Patch(color=BASE_COLOR, label="base"), Patch(color=NOVEL_COLOR, label="novel")],
              loc="upper right")
    fig.tight_layout()
    return fig


def ar_by_budget(metrics: Mapping[str, float]) -> dict[int, float]:
    """{k: AR@k} from a metrics dict with keys "AR@k" (AR_s/m/l are left out)."""
    return {int(k[3:]): v for k, v in metrics.items() if k.startswith("AR@")}


def plot_ar_vs_k(
    metrics: Mapping[str, float],
    iou_type: str,
    label: str = "ovis",
    references: Mapping[str, Mapping[int, float]] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """AR@k (in %) against the budget k on a log axis, ours beside the papers' points
    (`ovis.eval.reference.PAPER_AR_CURVES[iou_type]` unless `references` is given)."""
    refs = PAPER_AR_CURVES.get(iou_type, {}) if references is None else references
    fig, ax = _axes(ax, (6.0, 4.0))
    ours = sorted(ar_by_budget(metrics).items())
    ax.plot([k for k, _ in ours], [100 * v for _, v in ours], "o-", lw=2, color="black", label=label)
    for name, points in refs.items():
        pts = sorted(points.items())
        style = "s--" if len(pts) > 1 else "D"
        ax.plot([k for k, _ in pts], [100 * v for _, v in pts], style, alpha=0.8, label=f"{name} (paper)")
    ax.set_xscale("log")
    ax.set_xlabel("budget k (detections per image)")
    ax.set_ylabel(f"{'mask' if iou_type == 'segm' else 'box'} AR@k (%)")
    ax.set_title("AR@k, VOC -> non-VOC protocol")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
