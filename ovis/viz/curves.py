"""Curves and charts of a run, and the curves stage: training curves, evaluation metrics beside
the papers' numbers (docs/protocols.md#8-reference-numbers), written to ``<run_dir>/curves/``.

Sections: metric plots (per-class and per-split AP50, AR@k vs k), training logs
(`metrics.jsonl` parsing, smoothing, loss/lr curves), the ours-vs-paper table, and the stage
(`write_report`, `run_curves_stage`, `ovis curves`). Each plot draws on a given matplotlib Axes (or
a new `Figure`, not pyplot) and returns the Figure, so notebooks show it and scripts save it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ovis.config import Recipe, RecipeError
from ovis.eval.reference import (
    PAPER_AP50,
    PAPER_AR_BY_PROTOCOL,
    PAPER_AR_CURVES,
    PAPER_AUC,
    PAPER_NOTES,
    SOURCES,
    paper_ap50,
    paper_ar_curves,
)
from ovis.io import atomic_path, write_text_atomic
from ovis.locks import folder_lock
from ovis.methods import load_recipe
from ovis.protocols import get_protocol
from ovis.runs import STAGES, RunLayout, default_run_dir
from ovis.stages import execute

BASE_COLOR = "tab:blue"
NOVEL_COLOR = "tab:orange"
OTHER_COLOR = "tab:gray"


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        # the root Figure, also for an Axes in a SubFigure (which has no tight_layout)
        root = ax.get_figure(root=True)
        if root is None:
            raise ValueError("ax is not on a figure; create it with Figure.subplots or Figure.add_subplot")
        return root, ax
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
    return {int(k[3:]): v for k, v in metrics.items() if k.startswith("AR@") and v is not None}


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


def plot_ap50_splits(
    metrics: Mapping[str, float],
    label: str = "ovis",
    setting: str = "generalized",
    references: Mapping[str, Mapping[str, float]] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Grouped bars of AP50 (in %) per split (base, novel, all), ours (`metrics["AP50_<split>"]`)
    beside the papers' (`PAPER_AP50` unless `references` is given; keys `<setting>_<split>`).
    Splits with no value (missing, null or -1) get no bar."""
    refs = PAPER_AP50 if references is None else references
    splits = ("base", "novel", "all")
    series = [(label, {s: _or_missing(metrics.get(f"AP50_{s}")) for s in splits})]
    series += [(f"{name} (paper)", {s: v.get(f"{setting}_{s}", -1.0) for s in splits}) for name, v in refs.items()]
    fig, ax = _axes(ax, (6.0, 4.0))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j, s in enumerate(splits) if values[s] >= 0]
        ys = [100 * values[s] for s in splits if values[s] >= 0]
        ax.bar(xs, ys, width, label=name, color="black" if i == 0 else None, alpha=1.0 if i == 0 else 0.75)
    top = max([100 * v for _, values in series for v in values.values()] + [1.0])
    ax.set_ylim(0, 1.3 * top)  # headroom for the legend
    ax.set_xticks(range(len(splits)), splits)
    ax.set_ylabel("AP50 (%)")
    ax.set_title(f"AP50 per split ({setting})")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=3, loc="upper center")
    fig.tight_layout()
    return fig


# --- training logs ------------------------------------------------------------------------------

TOTAL_LOSS_KEYS = ("loss", "total_loss")  # the brief's name, and the one ovis.engine.train writes
MEMORY_KEYS = ("memory_mb", "max_mem_mb")
STAGE_ORDER = ("grounding", "teacher", "baseline", "student", "oln", "oln_baseline")
SPEED_LINES = 5  # final losses and speed: mean over this many last logged lines


def load_metrics_jsonl(path: str | Path) -> list[dict]:
    """Rows of a training log, iterations strictly increasing.

    A resumed run restarts from its last checkpoint and logs some iterations again: a line whose
    iteration is not above the previous one marks a resume, and the earlier run's lines from that
    iteration on are dropped (so the last line of each iteration wins). A line that is not a JSON
    object with an integer `iteration` (the truncated last line of a crashed run, or a line a
    resume glued onto it) is skipped; a bad line before the end also raises a warning naming it.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    rows: list[dict] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("iteration"), int):
            if i != last:
                warnings.warn(f"{path}:{i + 1}: not a JSON object with an integer 'iteration'; line skipped",
                              stacklevel=2)
            continue
        while rows and rows[-1]["iteration"] >= row["iteration"]:
            rows.pop()
        rows.append(row)
    return rows


def smooth(values: Sequence[float] | np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average: out[i] = mean(values[max(0, i - window + 1) : i + 1]); float64, same length."""
    if window < 1:
        raise ValueError(f"smoothing window must be >= 1, got {window}")
    x = np.asarray(values, dtype=np.float64)
    csum = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(1, len(x) + 1)
    lo = np.maximum(i - window, 0)
    return (csum[i] - csum[lo]) / (i - lo)


def series(rows: Sequence[Mapping], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(iterations, values) of the rows that carry a finite number under `key`."""
    pairs = [(r["iteration"], r[key]) for r in rows
             if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) and math.isfinite(r[key])]
    its, vals = zip(*pairs) if pairs else ((), ())
    return np.asarray(its, dtype=np.int64), np.asarray(vals, dtype=np.float64)


def total_loss_key(rows: Sequence[Mapping]) -> str | None:
    """The key of the total loss in these rows (`loss` or `total_loss`), None when neither is logged."""
    return next((k for k in TOTAL_LOSS_KEYS if any(k in r for r in rows)), None)


def loss_terms(rows: Sequence[Mapping]) -> list[str]:
    """The per-term loss keys (`loss_*`) found in any row, in first-seen order."""
    terms = dict.fromkeys(k for r in rows for k in r if k.startswith("loss_") and k not in TOTAL_LOSS_KEYS)
    return list(terms)


def find_training_logs(run_dir: str | Path, stages: Sequence[str] | None = None) -> dict[str, Path]:
    """{stage: path} of `<run_dir>/<stage>/metrics.jsonl`: the given stages that have one, or every
    folder with one (grounding, teacher, student, baseline first, then the rest by name)."""
    layout = RunLayout(run_dir)
    if stages is None:
        rank = {s: i for i, s in enumerate(STAGE_ORDER)}
        stages = sorted(layout.training_logs(), key=lambda s: (rank.get(s, len(rank)), s))
    return {s: layout.training_log(s) for s in stages if layout.training_log(s).is_file()}


def _log_if_spans_decades(ax: Axes, values: Sequence[np.ndarray]) -> None:
    pos = np.concatenate([v[v > 0] for v in values]) if values else np.empty(0)
    if pos.size and pos.max() >= 10 * pos.min():
        ax.set_yscale("log", nonpositive="mask")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def plot_training(run_dir: str | Path, stages: Sequence[str] | None = None, smooth_window: int = 20) -> Figure:
    """One row per training stage: total loss (black) and each `loss_*` term against the iteration,
    smoothed (trailing mean over `smooth_window` logged lines, capped at a quarter of the lines so
    short runs keep their shape) over the raw values drawn faint, log-y when the values span a
    decade or more; the learning rate in a narrow panel on the right.

    ``stages``: the stages to draw, those without a ``metrics.jsonl`` skipped (a method may not train
    each of them); None: every stage with one (:func:`find_training_logs`). When none has a log the
    figure says so in place of the plots, naming the stages asked for (not an error: a notebook
    drawing before a submitted job has logged carries on)."""
    logs = find_training_logs(run_dir, stages)
    fig = Figure(figsize=(12.0, 3.3 * max(len(logs), 1)), layout="constrained")
    if not logs:
        ax = fig.subplots()
        wanted = "|".join(stages) if stages else "<stage>"
        ax.text(0.5, 0.5, f"no {wanted}/metrics.jsonl under {run_dir}", ha="center", va="center")
        ax.set_axis_off()
        return fig
    axes = fig.subplots(len(logs), 2, width_ratios=[3, 1], squeeze=False)
    for (stage, path), (ax_loss, ax_lr) in zip(logs.items(), axes):
        rows = load_metrics_jsonl(path)
        total = total_loss_key(rows)
        keys = ([total] if total else []) + loss_terms(rows)
        window = max(1, min(smooth_window, len(rows) // 4))
        plotted = []
        for i, key in enumerate(keys):
            its, vals = series(rows, key)
            if not len(its):
                continue
            color = "black" if key == total else f"C{(i - bool(total)) % 10}"
            ax_loss.plot(its, vals, color=color, alpha=0.25, lw=0.8)
            ax_loss.plot(its, smooth(vals, window), color=color, lw=2.0 if key == total else 1.4,
                         label="total" if key == total else key.removeprefix("loss_"))
            plotted.append(vals)
        _log_if_spans_decades(ax_loss, plotted)
        last_it = rows[-1]["iteration"] if rows else 0
        ax_loss.set_title(f"{stage}: losses ({len(rows)} logged lines to iteration {last_it}, "
                          f"smoothed over {window})", fontsize=10)
        ax_loss.set_xlabel("iteration")
        ax_loss.set_ylabel("loss")
        ax_loss.grid(True, alpha=0.3)
        if plotted:
            ax_loss.legend(fontsize=7, ncol=2, loc="upper right")
        its, lr = series(rows, "lr")
        if len(its):
            ax_lr.plot(its, lr, color="tab:purple", lw=1.5)
            _log_if_spans_decades(ax_lr, [lr])
            if ax_lr.get_yscale() == "linear":
                ax_lr.set_ylim(0, 1.1 * max(lr.max(), 1e-12))
        else:
            ax_lr.text(0.5, 0.5, "no lr logged", ha="center", va="center", transform=ax_lr.transAxes)
        ax_lr.set_title(f"{stage}: learning rate", fontsize=10)
        ax_lr.set_xlabel("iteration")
        ax_lr.grid(True, alpha=0.3)
    return fig


def training_summary(rows: Sequence[Mapping], last_lines: int = SPEED_LINES) -> dict[str, float | int | None]:
    """Final losses and speed of one training log: `iteration` (last), `lines`, `total` and each
    `loss_*` term, `images_per_s` and `time_per_iter` (means over the last `last_lines` lines that
    carry them), `lr` (last), `memory_mb` (peak over the log); None where not logged."""
    def tail_mean(key: str | None) -> float | None:
        vals = series(rows, key)[1][-last_lines:] if key else np.empty(0)
        return float(vals.mean()) if vals.size else None

    lr = series(rows, "lr")[1]
    mem = [v for k in MEMORY_KEYS for v in series(rows, k)[1]]
    out: dict[str, float | int | None] = {
        "iteration": rows[-1]["iteration"] if rows else None,
        "lines": len(rows),
        "total": tail_mean(total_loss_key(rows)),
        **{k: tail_mean(k) for k in loss_terms(rows)},
        "images_per_s": tail_mean("images_per_s"),
        "time_per_iter": tail_mean("time_per_iter"),
        "lr": float(lr[-1]) if lr.size else None,
        "memory_mb": max(mem) if mem else None,
    }
    return out


# --- ours beside the papers ---------------------------------------------------------------------

# reference.SOURCES key of each paper entry (PAPER_AP50 entries all come from one table)
PAPER_SOURCE = {"OLN-Box": "OLN-Box", "GGN (Mask R-CNN)": "GGN", "GGN + OLN": "GGN",
                "Mask R-CNN (class-agnostic)": "GGN", "v-CLR": "v-CLR / UDOS", "UDOS": "v-CLR / UDOS"}
_SOURCE_NAMES = {"PAPER_AP50": ", ".join(PAPER_AP50)} | {
    key: ", ".join(p for p, k in PAPER_SOURCE.items() if k == key) for key in set(PAPER_SOURCE.values())}
METHOD_WORDS = {"cpl": "CPL", "ggn": "GGN", "oln": "OLN"}  # recipe.method -> its paper's entries, shown first
OPEN_WORLD_ROWS = ("AR@10", "AR@30", "AR@100", "AR@300", "AR@1000", "AUC")
OVR_ROWS = (("generalized", "base"), ("generalized", "novel"), ("generalized", "all"),
            ("constrained", "base"), ("constrained", "novel"))
IOU_NAMES = {"segm": "mask", "bbox": "box"}


def find_eval_results(run_dir: str | Path) -> list[dict]:
    """Every `<run_dir>/eval/**/metrics.json` (as `ovis.eval.report.write_metrics` writes it), with
    `label` (its folder relative to eval/, e.g. "student/segm"; "eval" for eval/metrics.json) and
    `path` added; sorted by path. Files with a protocol but no iou_type (side-by-side summaries) are skipped."""
    layout = RunLayout(run_dir)
    root = layout.stage("eval")
    out = []
    for path in layout.eval_results():
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); re-run the eval stage that wrote it") from None
        if isinstance(result, dict) and "protocol" in result and "iou_type" not in result:
            continue  # a side-by-side summary of the per-model files (e.g. CPL's eval/metrics.json)
        if not isinstance(result, dict) or not {"protocol", "iou_type", "metrics"} <= set(result):
            raise ValueError(f"{path}: expected the keys protocol, iou_type, metrics of ovis.eval.report.write_metrics")
        rel = path.parent.relative_to(root).as_posix()
        out.append({**result, "label": "eval" if rel == "." else rel, "path": str(path)})
    return out


def protocol_kind(protocol: str) -> str:
    """"ovr", "open_world" or "coco" for a protocol name (unknown names: "coco", no paper numbers)."""
    try:
        return get_protocol(protocol).kind
    except KeyError:
        return "coco"


def eval_setting(result: Mapping) -> str:
    """"constrained" when an ovr result says so (`setting` key, or "constrained" in its label),
    else "generalized" (evaluation on the full val set with every class)."""
    if result.get("setting") in ("generalized", "constrained"):
        return str(result["setting"])
    return "constrained" if "constrained" in str(result.get("label", "")) else "generalized"


def _or_missing(value: float | None) -> float:
    return -1.0 if value is None else value


def _pct(value: float | None) -> str:
    if value is None:
        return "–"
    return "n/a" if value < 0 else f"{100 * value:.1f}"


def _by_method_first(names: Sequence[str], recipe: Recipe) -> list[str]:
    word = METHOD_WORDS.get(recipe.method, "\0")
    return sorted(names, key=lambda n: word not in n)


def _paper_auc(protocol: str, iou_type: str) -> dict[str, float]:
    """{method: AUC} of `PAPER_AUC` entries named "<method> (<iou_type>)": published for the VOC -> non-VOC
    setting only, so none for a protocol with paper numbers of its own (`PAPER_AR_BY_PROTOCOL`)."""
    if PAPER_AR_BY_PROTOCOL.get(protocol, PAPER_AR_CURVES) is not PAPER_AR_CURVES:
        return {}
    out = {}
    for key, value in PAPER_AUC.items():
        name, _, iou = key.rpartition(" (")
        if iou.rstrip(")") == iou_type:
            out[name] = value
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _ovr_table(results: Sequence[Mapping], protocol: str, iou_type: str, recipe: Recipe) -> tuple[list[str], set[str]]:
    table = paper_ap50(protocol)
    papers = _by_method_first(list(table), recipe) if iou_type == "segm" else []
    header = ["AP50 (%)"] + [f"ours: {r['label']}" for r in results] + [f"{p} (paper)" for p in papers]
    rows = []
    for setting, split in OVR_ROWS:
        ours = [_pct(r["metrics"].get(f"AP50_{split}")) if eval_setting(r) == setting else "–" for r in results]
        theirs = [_pct(table[p][f"{setting}_{split}"]) for p in papers]
        if any(v != "–" for v in ours + theirs):
            rows.append([f"{setting} {split}"] + ours + theirs)
    lines = _table(header, rows) + ["", "Generalized: evaluated on the full val set, every class competing; "
                                    "constrained: a result whose `setting` or label says so (val_base / val_novel)."
                                    ] if rows else []
    used = {"PAPER_AP50"} if papers else set()
    if protocol in PAPER_NOTES:
        note, source = PAPER_NOTES[protocol]
        used.add(source)
    elif not table:
        note = f"No published numbers are held for protocol `{protocol}`."
    elif iou_type != "segm":
        note = "The papers report mask AP50 only; no box numbers to compare with."
    else:
        return lines, used
    return lines + [""] * bool(lines) + [note], used


def _open_world_table(results: Sequence[Mapping], protocol: str, iou_type: str, recipe: Recipe) -> tuple[list[str], set[str]]:
    curves = {name: {f"AR@{k}": v for k, v in pts.items()} for name, pts in paper_ar_curves(protocol, iou_type).items()}
    for name, auc in _paper_auc(protocol, iou_type).items():
        curves.setdefault(name, {})["AUC"] = auc
    papers = _by_method_first(list(curves), recipe)
    metric_rows = [m for m in OPEN_WORLD_ROWS
                   if any(m in r["metrics"] for r in results) or any(m in curves[p] for p in papers)]
    header = [f"{IOU_NAMES.get(iou_type, iou_type)} (%)"] + [f"ours: {r['label']}" for r in results]
    header += [f"{p} (paper)" for p in papers]
    rows = [[m] + [_pct(r["metrics"].get(m)) for r in results] + [_pct(curves[p].get(m)) for p in papers]
            for m in metric_rows]
    return _table(header, rows), {PAPER_SOURCE[p] for p in papers if p in PAPER_SOURCE}


def paper_table(results: list[dict], recipe: Recipe) -> str:
    """Markdown: our metrics (percent, one decimal) beside the papers' (docs/protocols.md#8-reference-numbers,
    `ovis.eval.reference`), one table per protocol and IoU type: AP50 base/novel/all
    (generalized and constrained) for ovr protocols, AR@10/30/100/300/1000 and AUC for open-world
    ones, the papers' sources below. `results` are metrics.json dicts (a `label` each, as
    `find_eval_results` adds); with none, the papers' numbers for the recipe's protocol alone. Each
    protocol gets its own setting's numbers only; one without them says what the papers give instead
    (`PAPER_NOTES`) or that none are held. Demo protocols carry a note that the paper numbers are for
    COCO and not comparable."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for i, r in sorted(enumerate(results), key=lambda ir: (ir[1]["protocol"], ir[1]["iou_type"] != "segm", ir[0])):
        groups.setdefault((r["protocol"], r["iou_type"]), []).append({"label": f"result {i}", **r})
    lines: list[str] = []
    if not groups:
        lines += ["No `eval/**/metrics.json` found: run the eval stage; the papers' numbers alone:", ""]
        protocol = recipe.eval.protocol
        groups = {(protocol, t): [] for t in recipe.eval.iou_types}
    sources: set[str] = set()
    for (protocol, iou_type), group in groups.items():
        kind = protocol_kind(protocol)
        lines += [f"### {protocol}, {IOU_NAMES.get(iou_type, iou_type)} ({iou_type})", ""]
        if protocol.startswith("demo"):
            lines += [f"**Not comparable:** `{protocol}` runs on the embedded synthetic demo data with a tiny "
                      "model; the paper numbers are for COCO and are shown only for scale.", ""]
        if kind == "ovr":
            table, used = _ovr_table(group, protocol, iou_type, recipe)
        elif kind == "open_world":
            table, used = _open_world_table(group, protocol, iou_type, recipe)
        else:
            header = ["metric"] + [f"ours: {r['label']}" for r in group]
            names = dict.fromkeys(k for r in group for k in r["metrics"] if k != "stats")
            table = _table(header, [[k] + [_pct(r["metrics"].get(k)) for r in group] for k in names])
            table += ["", f"No published numbers are held for protocol `{protocol}`."]
            used = set()
        lines += table + [""]
        sources |= used
    if sources:
        lines += ["Paper sources:"] + [f"- {_SOURCE_NAMES.get(s, s)}: {SOURCES[s]}" for s in sorted(sources)] + [""]
    return "\n".join(lines)


# --- figures of the evaluation results ----------------------------------------------------------


def file_label(label: str) -> str:
    """A result label as a file-name part ("student/segm" -> "student_segm")."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "eval"


def metric_figures(results: Sequence[Mapping]) -> dict[str, Figure]:
    """{file stem: Figure}: `ar_vs_k_<label>` for open-world results, `ap50_<label>` (per-split bars
    beside the papers', plus per-class bars when stored) for ovr results; none for other protocols."""
    figs: dict[str, Figure] = {}
    for r in results:
        label, kind = r["label"], protocol_kind(r["protocol"])
        if kind == "open_world":
            fig = plot_ar_vs_k(r["metrics"], r["iou_type"], label=f"ovis {label}",
                               references=paper_ar_curves(r["protocol"], r["iou_type"]))
            fig.axes[0].set_title(f"AR@k, {r['protocol']} ({label})")
            figs[f"ar_vs_k_{file_label(label)}"] = fig
        elif kind == "ovr":
            base, novel = r.get("base_names", []), r.get("novel_names", [])
            split_names = set(base) | set(novel)
            per_class = {k: v for k, v in r.get("per_class_AP50", {}).items()
                         if v >= 0 and (k in split_names or not split_names)}
            refs = paper_ap50(r["protocol"]) if r["iou_type"] == "segm" else {}
            iou = IOU_NAMES.get(r["iou_type"], r["iou_type"])
            fig = Figure(figsize=(max(8.0, 0.2 * len(per_class) + 1.5), 8.5 if per_class else 4.0))
            ax_split, ax_cls = fig.subplots(2, 1, height_ratios=[1.0, 1.2]) if per_class else (fig.subplots(), None)
            plot_ap50_splits(r["metrics"], f"ovis {label}", eval_setting(r), refs, ax=ax_split)
            ax_split.set_title(f"{iou} AP50 per split ({eval_setting(r)}), {r['protocol']} ({label})")
            if ax_cls is not None:
                plot_ap50_per_class(per_class, base, novel, ax=ax_cls, title=f"{iou} AP50 per class ({label})")
            figs[f"ap50_{file_label(label)}"] = fig
    return figs


# --- the curves stage ---------------------------------------------------------------------------


def _save_png_atomic(fig: Figure, path: Path, dpi: int = 110) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def _report_inputs(run_dir: Path) -> list[Path]:
    """Every file the report reads, plus the other stages' markers (a stage finishing later, e.g.
    eval, makes the report stale); paths relative to the run dir."""
    layout = RunLayout(run_dir)
    files = [*layout.training_logs().values(), *layout.eval_results(), layout.split("partition.json")]
    markers = [layout.marker(s) for s in STAGES if s != "curves"]
    return [p.relative_to(run_dir) for p in [*(f for f in files if f.is_file()), *markers]]


def _fmt(value: float | int | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _training_table(summaries: Mapping[str, Mapping]) -> list[str]:
    header = ["stage", "last iteration", "total loss", "loss terms", "lr", "images/s", "s/iter", "peak memory (MB)"]
    rows = []
    for stage, s in summaries.items():
        terms = ", ".join(f"{k.removeprefix('loss_')} {v:.4f}" for k, v in s.items()
                          if k.startswith("loss_") and v is not None)
        rows.append([stage, _fmt(s["iteration"], "d"), _fmt(s["total"], ".4f"), terms or "–", _fmt(s["lr"], ".3g"),
                     _fmt(s["images_per_s"], ".2f"), _fmt(s["time_per_iter"], ".3f"), _fmt(s["memory_mb"], ".0f")])
    return _table(header, rows)


def write_report(run_dir: str | Path, recipe: Recipe, smooth_window: int = 20) -> list[str]:
    """Write `<run_dir>/curves/`: `training.png` (when a stage logged metrics), `ar_vs_k_<label>.png`
    / `ap50_<label>.png` per evaluation result and `report.md` (recipe and hash, stages, final losses
    and speed, ours-vs-paper table, links to the PNGs), all atomically. Returns the files written,
    `report.md` first (the stage's outputs; `run_curves_stage` marks it done)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run dir {run} does not exist; run the earlier stages first or pass the right run_dir")
    layout = RunLayout(run)
    out = layout.stage("curves")
    out.mkdir(parents=True, exist_ok=True)
    logs = find_training_logs(run)
    results = find_eval_results(run)
    pngs: list[str] = []
    if logs:
        _save_png_atomic(plot_training(run, smooth_window=smooth_window), out / "training.png")
        pngs.append("training.png")
    for stem, fig in metric_figures(results).items():
        pngs.append(_save_png_atomic(fig, out / f"{stem}.png").name)

    part_path = layout.split("partition.json")
    partition = json.loads(part_path.read_text(encoding="utf-8")) if part_path.is_file() else {}
    protocol = partition.get("protocol", recipe.splits.protocol)
    lines = [f"# Curves report: {recipe.name}", "",
             f"Recipe `{recipe.name}` (method {recipe.method}), hash `{recipe.hash()}`; run dir `{run}`; "
             f"split protocol `{protocol}`"
             + (f" ({len(partition.get('base', []))} base/seen, {len(partition.get('novel', []))} novel/unseen "
                "classes)." if partition else " (no splits/partition.json)."), "",
             "## Training", ""]
    if logs:
        summaries = {s: training_summary(load_metrics_jsonl(p)) for s, p in logs.items()}
        lines += [f"Stages found: {', '.join(logs)}. Losses, images/s and s/iter are means over the last "
                  f"{SPEED_LINES} logged lines; lr is the last logged value.", ""]
        lines += _training_table(summaries) + [""]
    else:
        lines += ["No training stage has logged `metrics.jsonl` yet.", ""]
    lines += ["## Ours beside the papers (docs/protocols.md#8-reference-numbers)", ""]
    if results:
        lines += ["Results: " + ", ".join(f"`{r['label']}` ({r['protocol']}, {r['iou_type']})" for r in results)
                  + ".", ""]
    lines += [paper_table(results, recipe), "## Figures", ""]
    lines += [f"- [{name}]({name})" for name in pngs] or ["No figures: nothing logged or evaluated yet."]
    write_text_atomic("\n".join(lines) + "\n", layout.report)
    recipe.save(out)
    return [layout.report.name, *pngs]


def run_curves_stage(recipe: Recipe, run_dir: str | Path, force: bool = False, smooth_window: int = 20) -> Path:
    """Stage 05: write the curves report (see `write_report`) and return its path. A stage of
    `ovis.stages.execute` whose inputs are the training logs, evaluation results and the other stages'
    markers: skipped when it finished for this recipe hash and none of them changed since (unless `force`)."""
    run = Path(run_dir)
    execute(recipe, "curves", run, lambda afresh: write_report(run, recipe, smooth_window), force=force,
            outputs=lambda files: files, inputs=_report_inputs(run), read=lambda record: record["outputs"])
    return RunLayout(run).report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ovis curves", description="draw training curves and the ours-vs-paper report")
    ap.add_argument("--recipe", required=True, help="packaged recipe name or YAML path")
    ap.add_argument("--run-dir", default="", help="run folder (default runs/RECIPE)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted recipe override, e.g. eval.protocol=demo_ovr (repeatable)")
    ap.add_argument("--smooth", type=int, default=20, help="smoothing window in logged lines (default 20)")
    ap.add_argument("--force", action="store_true", help="redo the report even if it is up to date")
    args = ap.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        if args.smooth < 1:
            raise ValueError(f"--smooth must be >= 1, got {args.smooth}")
        run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(recipe)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"run dir {run_dir} does not exist; run the earlier stages or pass --run-dir")
        with folder_lock(run_dir):  # not while a reproduce (or another curves) writes the run
            report = run_curves_stage(recipe, run_dir, args.force, args.smooth)
    except (RecipeError, ValueError, FileNotFoundError) as e:
        print(f"ovis curves: error: {e}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
