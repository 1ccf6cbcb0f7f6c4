"""Instance overlays for people: masks, boxes and labels on images, and COCO image grids.

Everything here is headless-safe: figures are built as ``matplotlib.figure.Figure`` objects
(never through pyplot), so they render under Agg, leave no global figure state behind, and
can be saved, shown inline or embedded in a widget.

Colours are deterministic: one hue per label (a CRC32 of the label text picks it from a fixed
palette), so a category keeps its colour across images and across GT / teacher / pseudo
panels; instances sharing a label get lighter/darker shades of that hue.
"""

from __future__ import annotations

import json
import textwrap
import zlib
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.patches import Rectangle
from PIL import Image, ImageDraw, ImageFont
from pycocotools import mask as mask_utils

from ovis.data.masks import mask_boxes, segmentation_to_rle

__all__ = [
    "PALETTE",
    "decode_segmentations",
    "draw_instances",
    "image_grid",
    "instance_colors",
    "label_color",
    "load_image",
    "overlay_masks",
    "panel_grid",
]

# Well separated, saturated colours (uint8 RGB) that stay readable under 50 % blending.
PALETTE = np.array(
    [
        [230, 25, 75], [60, 180, 75], [255, 200, 25], [0, 130, 200], [245, 130, 48],
        [145, 30, 180], [70, 220, 220], [240, 50, 230], [170, 210, 60], [250, 150, 190],
        [0, 128, 128], [160, 110, 255], [170, 110, 40], [128, 0, 0], [100, 230, 150],
        [128, 128, 0], [255, 120, 100], [0, 0, 160], [200, 200, 200], [30, 90, 60],
    ],
    dtype=np.float32,
)
# Shade offsets for the k-th instance of one label: >0 mixes with white, <0 with black.
_SHADES = (0.0, 0.35, -0.35, 0.6, -0.55, 0.2, -0.2)


def label_color(label: str) -> np.ndarray:
    """The palette colour (float32 RGB in [0, 255]) of a label; stable across runs and processes."""
    return PALETTE[zlib.crc32(label.encode("utf-8")) % len(PALETTE)].copy()


def _shade(color: np.ndarray, k: int) -> np.ndarray:
    f = _SHADES[k % len(_SHADES)]
    return color + (255.0 - color) * f if f >= 0 else color * (1.0 + f)


def instance_colors(n: int, labels: Sequence[str] | None = None) -> np.ndarray:
    """Colours float32[n, 3] in [0, 255]: by label (shaded per repeat) or, without labels, by index."""
    if labels is None:
        return PALETTE[np.arange(n) % len(PALETTE)].copy()
    if len(labels) != n:
        raise ValueError(f"instance_colors: got {len(labels)} labels for {n} instances")
    seen: dict[str, int] = defaultdict(int)
    out = np.empty((n, 3), np.float32)
    for i, lab in enumerate(labels):
        out[i] = _shade(label_color(lab), seen[lab])
        seen[lab] += 1
    return out


# --------------------------------------------------------------------------------------------
# decoding


def decode_segmentations(
    segms: Sequence[Any], height: int, width: int, where: Sequence[str] | None = None
) -> np.ndarray:
    """Decode COCO segmentations (polygons, uncompressed or compressed RLE) to bool[N, H, W].

    ``None`` and ``[]`` entries (box-only annotations) give empty masks. ``where`` names each
    entry in error messages (e.g. ``"image 139, annotation 42"``).
    """
    out = np.zeros((len(segms), height, width), dtype=bool)
    idx, rles = [], []
    for i, segm in enumerate(segms):
        if segm is not None and segm != []:
            idx.append(i)
            rles.append(segmentation_to_rle(segm, height, width, where[i] if where else f"segmentation {i}"))
    if rles:
        # one pycocotools call decodes the whole stack as uint8[H, W, N]
        out[idx] = mask_utils.decode(rles).transpose(2, 0, 1).astype(bool)
    return out


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"image must be [H, W, 3] (or [H, W] / [H, W, 4]), got shape {image.shape}")
    image = image[:, :, :3]
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and image.max(initial=0) <= 1.0:
            image = image * 255.0
        image = np.clip(image, 0, 255).astype(np.uint8)
    return image


# --------------------------------------------------------------------------------------------
# pixel-space overlay


def _edges(masks: np.ndarray, thickness: int) -> np.ndarray:
    """Inner boundary bool[N, H, W] of each mask, ``thickness`` pixels wide (4-neighbour erosion)."""
    inner = masks.copy()
    for _ in range(thickness):
        p = np.pad(inner, ((0, 0), (1, 1), (1, 1)), constant_values=False)
        inner = p[:, 1:-1, 1:-1] & p[:, :-2, 1:-1] & p[:, 2:, 1:-1] & p[:, 1:-1, :-2] & p[:, 1:-1, 2:]
    return masks & ~inner


def _top_index(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: whether any layer covers it, and the index of the last (topmost) covering layer."""
    top = np.full(stack.shape[1:], -1, dtype=np.int32)
    for k, layer in enumerate(stack):  # one vectorised write per instance, later layers win
        top[layer] = k
    return top >= 0, top


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:
        return ImageFont.load_default()


def _text_color(rgb: np.ndarray) -> tuple[int, int, int]:
    """Black on light backgrounds, white on dark ones (ITU-R BT.601 luma)."""
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luma > 150 else (255, 255, 255)


def overlay_masks(
    image: np.ndarray,
    masks: np.ndarray | Sequence[Any] | None,
    boxes: np.ndarray | Sequence[Sequence[float]] | None = None,
    labels: Sequence[str] | None = None,
    scores: Sequence[float] | None = None,
    alpha: float = 0.5,
    colors: np.ndarray | Sequence[Sequence[float]] | None = None,
    *,
    dashed: Sequence[bool] | None = None,
    outline: bool = True,
) -> np.ndarray:
    """Blend instance masks (and optional boxes and label text) into an image.

    image: uint8[H, W, 3] (grayscale and RGBA are converted). masks: bool[N, H, W], or a list of
    N COCO segmentations (polygons / RLE; ``None`` for box-only instances). boxes: XYWH pixels
    [N, 4]. labels / scores: N strings / floats drawn at each box's top-left corner.
    alpha: mask fill opacity in [0, 1]. colors: RGB [N, 3] in [0, 255] (default: by label,
    else by index). dashed: per instance, draw the outline dashed (pseudo masks).
    Larger masks are painted first so small ones stay visible. Returns uint8[H, W, 3].
    """
    img = _as_rgb_uint8(image)
    h, w = img.shape[:2]
    if masks is None:
        n = 0 if boxes is None else len(boxes)
        stack = np.zeros((n, h, w), bool)
    elif isinstance(masks, np.ndarray):
        stack = masks.astype(bool, copy=False)
        if stack.ndim == 2:
            stack = stack[None]
        if stack.shape[1:] != (h, w):
            raise ValueError(f"masks have shape {stack.shape}, expected [N, {h}, {w}] for this image")
    else:
        stack = decode_segmentations(list(masks), h, w)
    n = stack.shape[0]
    for name, seq in (("boxes", boxes), ("labels", labels), ("scores", scores), ("colors", colors), ("dashed", dashed)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"overlay_masks: {len(seq)} {name} for {n} masks")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay_masks: alpha must be in [0, 1], got {alpha}")
    cols = np.asarray(colors, np.float32) if colors is not None else instance_colors(n, labels)
    if n == 0:
        return img.copy()

    out = img.astype(np.float32)
    areas = stack.reshape(n, -1).sum(axis=1)
    order = np.argsort(-areas, kind="stable")  # big first, small on top
    layers = stack[order]
    covered, top = _top_index(layers)
    if alpha > 0:
        out[covered] = (1.0 - alpha) * out[covered] + alpha * cols[order][top[covered]]
    if outline:
        thickness = max(1, round(max(h, w) / 320))
        edges = _edges(layers, thickness)
        if dashed is not None and any(dashed):
            yy, xx = np.mgrid[0:h, 0:w]
            on = ((xx + yy) // (4 * thickness)) % 2 == 0  # diagonal stripes read as a dashed line
            dash = np.asarray(dashed, bool)[order]
            edges[dash] &= on
        e_any, e_top = _top_index(edges)
        out[e_any] = cols[order][e_top[e_any]]

    if boxes is None and labels is None and scores is None:
        return out.round().astype(np.uint8)

    pil = Image.fromarray(out.round().astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    xywh = np.asarray(boxes, np.float32).reshape(n, 4) if boxes is not None else mask_boxes(stack)
    lw = max(1, round(max(h, w) / 320))
    font = _font(max(10, round(max(h, w) / 48)))
    for i in range(n):
        x, y, bw, bh = (float(v) for v in xywh[i])
        c = tuple(int(v) for v in cols[i].round())
        if boxes is not None:
            draw.rectangle([x, y, x + bw, y + bh], outline=c, width=lw)
        parts = [labels[i]] if labels is not None else []
        if scores is not None and scores[i] is not None:
            parts.append(f"{float(scores[i]):.2f}")
        if parts and (bw > 0 or bh > 0):
            text = " ".join(parts)
            l, t, r, b = draw.textbbox((0, 0), text, font=font)
            tx = min(max(0.0, x), max(0.0, w - (r - l) - 4))
            ty = y - (b - t) - 4 if y - (b - t) - 4 >= 0 else y
            draw.rectangle([tx, ty, tx + (r - l) + 4, ty + (b - t) + 4], fill=c)
            draw.text((tx + 2 - l, ty + 2 - t), text, fill=_text_color(cols[i]), font=font)
    return np.asarray(pil)


# --------------------------------------------------------------------------------------------
# matplotlib panels


def _ann_where(ann: dict, image_id: Any) -> str:
    return f"image {ann.get('image_id', image_id)}, annotation {ann.get('id', '?')}"


def draw_instances(
    ax: Axes,
    image: np.ndarray,
    anns: Sequence[dict],
    categories: Mapping[int, str],
    title: str | None = None,
    alpha: float = 0.5,
    show_scores: bool = True,
) -> int:
    """Draw one image with its COCO annotations on ``ax``; returns the number of instances drawn.

    anns: COCO annotations or results (``segmentation`` polygon / RLE with str or list counts,
    optional ``bbox`` XYWH, ``category_id``, ``score``, ``pseudo``, ``iscrowd``). Masks are
    blended at opacity ``alpha`` with solid outlines; every instance gets a box patch and a
    label ``name [score]``. Pseudo annotations get dashed boxes and outlines. The axes keep
    image pixel coordinates and lose their ticks.
    """
    img = _as_rgb_uint8(image)
    h, w = img.shape[:2]
    anns = list(anns)
    labels = [
        categories.get(a["category_id"], str(a["category_id"])) if a.get("category_id") is not None else "object"
        for a in anns
    ]
    masks = decode_segmentations(
        [a.get("segmentation") for a in anns], h, w, [_ann_where(a, "?") for a in anns]
    )
    pseudo = [bool(a.get("pseudo", False)) for a in anns]
    cols = instance_colors(len(anns), labels)
    ax.imshow(overlay_masks(img, masks, alpha=alpha, colors=cols, dashed=pseudo), interpolation="antialiased")

    extents = mask_boxes(masks)
    fontsize = 7
    for i, a in enumerate(anns):
        box = a.get("bbox")
        x, y, bw, bh = (float(v) for v in box) if box is not None else extents[i]
        c = cols[i] / 255.0
        ax.add_patch(
            Rectangle((x - 0.5, y - 0.5), bw, bh, fill=False, edgecolor=c, linewidth=1.2,
                      linestyle="--" if pseudo[i] else "-")
        )
        text = labels[i]
        if a.get("iscrowd"):
            text += " (crowd)"
        if show_scores and a.get("score") is not None:
            text += f" {float(a['score']):.2f}"
        ax.text(
            max(x, 0.0), max(y, 0.0), text, fontsize=fontsize, va="bottom" if y > 0.04 * h else "top", ha="left",
            color=np.asarray(_text_color(cols[i])) / 255.0, clip_on=True,
            bbox={"boxstyle": "square,pad=0.15", "facecolor": c, "edgecolor": "none", "alpha": 0.8},
        )
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title is not None:
        ax.set_title(title, fontsize=9)
    return len(anns)


def load_image(image_root: str | Path, info: dict) -> np.ndarray:
    """Read ``image_root / info["file_name"]`` as uint8[H, W, 3], checking the size the JSON gives."""
    path = Path(image_root) / info["file_name"]
    try:
        with Image.open(path) as im:
            img = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"image {info.get('id')}: {path} not found; pass the folder holding the COCO images as image_root"
        ) from None
    if "height" in info and "width" in info and img.shape[:2] != (info["height"], info["width"]):
        raise ValueError(
            f"image {info.get('id')}: {path} is {img.shape[1]}x{img.shape[0]} but the JSON says "
            f"{info['width']}x{info['height']}; use the original (unresized) images"
        )
    return img


def _caption_text(caps: Sequence[str], n_captions: int, max_chars: int, width: int) -> str:
    lines = []
    for cap in list(caps)[:n_captions]:
        cap = " ".join(str(cap).split())
        if len(cap) > max_chars:
            cap = cap[: max_chars - 1].rstrip() + "…"
        lines.append(textwrap.fill(cap, width=width))
    return "\n".join(lines)


def image_grid(
    coco: dict | str | Path,
    image_root: str | Path,
    image_ids: Sequence[int] | None = None,
    n: int = 6,
    cols: int = 3,
    captions: Mapping[int, Sequence[str]] | None = None,
    extra: Mapping[str, Sequence[dict]] | None = None,
    max_caption_chars: int = 60,
    figsize: tuple[float, float] | None = None,
    *,
    alpha: float = 0.5,
    n_captions: int = 1,
    show_scores: bool = True,
) -> Figure:
    """A figure of images with their annotations drawn and captions underneath.

    coco: COCO instances dict (or JSON path). image_ids: images to show, in order (default: the
    first ``n`` in the file). cols: panel columns per figure row. extra: panel name → COCO
    results / pseudo annotations (with ``image_id``), drawn beside each image's GT panel as
    GT | name1 | name2 ...; an image and its panels always share one row. captions: image id →
    captions; the first ``n_captions`` (cut to ``max_caption_chars``) go under the GT panel.
    figsize: inches (default: 3.6 in per panel column, rows as tall as their images).
    """
    if not isinstance(coco, dict):
        with open(coco, encoding="utf-8") as f:
            coco = cast(dict, json.load(f))
    images = {img["id"]: img for img in coco.get("images", [])}
    ids = list(image_ids) if image_ids is not None else [img["id"] for img in coco.get("images", [])][:n]
    missing = [i for i in ids if i not in images]
    if missing:
        raise KeyError(f"image_grid: image ids {missing[:5]} are not in the COCO 'images' list")
    categories = {c["id"]: c["name"] for c in coco.get("categories", [])}
    panels: dict[str, dict[Any, list[dict]]] = {"GT": defaultdict(list)}
    for a in coco.get("annotations", []):
        panels["GT"][a["image_id"]].append(a)
    for name, anns in (extra or {}).items():
        by_image: dict[Any, list[dict]] = defaultdict(list)
        for a in anns:
            by_image[a["image_id"]].append(a)
        panels[name] = by_image

    rows = [(images[i], {name: list(by_image.get(i, [])) for name, by_image in panels.items()}) for i in ids]
    return panel_grid(
        rows, lambda info: load_image(image_root, info), categories, cols=cols, captions=captions,
        max_caption_chars=max_caption_chars, n_captions=n_captions, figsize=figsize, alpha=alpha,
        show_scores=show_scores,
    )


def panel_grid(
    rows: Sequence[tuple[dict, Mapping[str, Sequence[dict]]]],
    load: Callable[[dict], np.ndarray],
    categories: Mapping[int, str],
    cols: int = 3,
    captions: Mapping[int, Sequence[str]] | None = None,
    max_caption_chars: int = 60,
    n_captions: int = 1,
    figsize: tuple[float, float] | None = None,
    alpha: float = 0.5,
    show_scores: bool = True,
    panel_size: float = 3.6,
) -> Figure:
    """The figure behind ``image_grid``, from annotations already grouped per image.

    rows: (COCO image entry, {panel name: annotations}) per image; every image must have the
    same panel names, the first being the image's GT. load: image entry → uint8[H, W, 3].
    panel_size: inches per panel column.
    """
    names = list(rows[0][1]) if rows else ["GT"]
    per_image = len(names)
    images_per_row = max(1, cols // per_image)
    ncols = images_per_row * per_image
    nrows = max(1, -(-len(rows) // images_per_row))
    # each figure row is as tall as its tallest image, plus room for the captions under it
    wrap = max(20, int(panel_size * 72 / 4.7))  # characters per line of 8 pt DejaVu Sans
    cap_in = 0.14 * n_captions * (1 + max_caption_chars // wrap) if captions else 0.0
    heights = []
    for r in range(nrows):
        infos = [info for info, _ in rows[r * images_per_row : (r + 1) * images_per_row]]
        aspect = max((info["height"] / info["width"] for info in infos), default=0.75)
        heights.append(panel_size * aspect + 0.3 + cap_in)
    if figsize is None:
        figsize = (panel_size * ncols, sum(heights))
    fig = Figure(figsize=figsize, layout=ConstrainedLayoutEngine(h_pad=0.02, w_pad=0.02, hspace=0.0, wspace=0.0))
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax in axes.flat:
        ax.set_visible(False)
    for k, (info, panels) in enumerate(rows):
        if list(panels) != names:
            raise ValueError(f"panel_grid: image {info.get('id')} has panels {list(panels)}, expected {names}")
        img = load(info)
        r, c0 = divmod(k, images_per_row)
        image_id = info["id"]
        for j, name in enumerate(names):
            ax = axes[r, c0 * per_image + j]
            ax.set_visible(True)
            anns = panels[name]
            title = f"{name} · {len(anns)}" if j else f"#{image_id} · {name} · {len(anns)}"
            draw_instances(ax, img, anns, categories, title=title, alpha=alpha, show_scores=show_scores)
            if j == 0 and captions:
                caps = captions.get(image_id) or captions.get(str(image_id)) or []  # type: ignore[call-overload]
                ax.set_xlabel(_caption_text(caps, n_captions, max_caption_chars, wrap), fontsize=8, loc="left")
    return fig
