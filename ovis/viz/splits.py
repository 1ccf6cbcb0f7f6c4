"""Split statistics for people: per-class instance counts, base vs novel coloured."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

BASE_COLOR, NOVEL_COLOR = "#4C72B0", "#DD8452"


def class_counts(coco: dict) -> Counter:
    """Non-crowd instances per category id."""
    return Counter(a["category_id"] for a in coco["annotations"] if not a.get("iscrowd", 0))


def class_count_figure(split_dir: str | Path) -> Figure:
    """Bars of instances per class in ``train_base.json`` and ``val.json``; base (seen) vs novel (unseen)."""
    split_dir = Path(split_dir)
    partition = json.loads((split_dir / "partition.json").read_text())
    train = json.loads((split_dir / "train_base.json").read_text())
    val = json.loads((split_dir / "val.json").read_text())
    cats = partition["base"] + partition["novel"]
    base_ids = {c["id"] for c in partition["base"]}
    seen, unseen = ("seen", "unseen") if partition["kind"] == "open_world" else ("base", "novel")
    fig = Figure(figsize=(max(8, 0.22 * len(cats) + 2), 6))
    axes = fig.subplots(2, 1, sharex=True)
    names = [c["name"] for c in cats]
    colors = [BASE_COLOR if c["id"] in base_ids else NOVEL_COLOR for c in cats]
    for ax, coco, title in ((axes[0], train, "train_base.json"), (axes[1], val, "val.json")):
        n = class_counts(coco)
        ax.bar(range(len(cats)), [n.get(c["id"], 0) for c in cats], color=colors)
        ax.set_ylabel("instances")
        ax.set_title(f"{title}: {len(coco['images'])} images, {len(coco['annotations'])} annotations", fontsize=10)
    axes[1].set_xticks(range(len(cats)), names, rotation=90, fontsize=8)
    handles = [Rectangle((0, 0), 1, 1, color=BASE_COLOR), Rectangle((0, 0), 1, 1, color=NOVEL_COLOR)]
    axes[0].legend(handles, [f"{seen} ({len(partition['base'])})", f"{unseen} ({len(partition['novel'])})"])
    fig.suptitle(f"protocol {partition['protocol']}")
    fig.tight_layout()
    return fig
