"""The embedded demo dataset: procedural, captioned instance segmentation, deterministic from a seed.

Sixteen categories named by real English nouns (ball, donut, kite, ...) are drawn as distinctive
procedural silhouettes with random colour, texture, scale, rotation and aspect, 2–6 per image, over
cluttered backgrounds (gradients, smooth noise, unannotated lines and textured blobs). Later objects
partially occlude earlier ones; every mask is the VISIBLE part (compressed RLE), ``area`` is its
pixel count and ``bbox`` its tight box. About one image in fifty also holds a crowd region
(``iscrowd: 1``) covering a cluster of tiny objects of one class. Each image gets five captions
that name its objects with synonyms, plurals, counts and distractor nouns, and that sometimes omit
an object. The partitions ``demo_ovr`` (base/novel/excluded) and ``demo_open_world`` (seen/unseen)
are declared here and committed as package data (``write_partition_files``).

Layout under ``root``::

    train/NNNNNN.png  val/NNNNNN.png
    annotations/instances_{train,val}.json  annotations/captions_{train,val}.json
    manifest.json     (parameters, counts, generator version; written last)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage

from ovis.config import DataConfig
from ovis.io import write_json_atomic, write_text_atomic
from ovis.locks import folder_lock

GENERATOR_VERSION = 1
"""Bump when the drawing or captioning changes, so existing demo folders are regenerated."""

RESOURCES = Path(__file__).resolve().parent / "resources"

# id, name, supercategory, synonyms (real nouns used by the captions; none is another category's word)
CATEGORIES: tuple[dict, ...] = (
    {"id": 1, "name": "ball", "supercategory": "toy", "synonyms": ["sphere", "orb"]},
    {"id": 2, "name": "donut", "supercategory": "food", "synonyms": ["doughnut", "bagel"]},
    {"id": 3, "name": "kite", "supercategory": "toy", "synonyms": []},
    {"id": 4, "name": "star", "supercategory": "sky", "synonyms": []},
    {"id": 5, "name": "heart", "supercategory": "symbol", "synonyms": ["valentine"]},
    {"id": 6, "name": "moon", "supercategory": "sky", "synonyms": ["crescent"]},
    {"id": 7, "name": "tent", "supercategory": "building", "synonyms": ["teepee"]},
    {"id": 8, "name": "cross", "supercategory": "symbol", "synonyms": ["crucifix"]},
    {"id": 9, "name": "arrow", "supercategory": "symbol", "synonyms": ["pointer"]},
    {"id": 10, "name": "box", "supercategory": "container", "synonyms": ["crate", "cube"]},
    {"id": 11, "name": "egg", "supercategory": "food", "synonyms": []},
    {"id": 12, "name": "leaf", "supercategory": "plant", "synonyms": []},
    {"id": 13, "name": "umbrella", "supercategory": "accessory", "synonyms": ["parasol"]},
    {"id": 14, "name": "fish", "supercategory": "animal", "synonyms": []},
    {"id": 15, "name": "mushroom", "supercategory": "food", "synonyms": ["toadstool"]},
    {"id": 16, "name": "house", "supercategory": "building", "synonyms": ["hut", "cottage"]},
)

# partitions by category id, declared like the COCO ones (resources/coco_ovr_48_17.json, coco_voc_nonvoc.json)
OVR_PARTITION: dict[str, tuple[int, ...]] = {
    "base": (1, 2, 3, 4, 6, 7, 10, 11, 15, 16),
    "novel": (5, 9, 12, 13, 14),
    "excluded": (8,),
}
OPEN_WORLD_PARTITION: dict[str, tuple[int, ...]] = {
    "seen": (1, 3, 6, 7, 10, 12, 14),
    "unseen": (2, 4, 5, 8, 9, 11, 13, 15, 16),
}
PARTITION_FILES: dict[str, tuple[str, dict[str, tuple[int, ...]]]] = {
    "demo_ovr": ("demo_ovr.json", OVR_PARTITION),
    "demo_open_world": ("demo_open_world.json", OPEN_WORLD_PARTITION),
}

PLURALS: dict[str, str] = {  # every caption noun -> its plural (irregular ones on purpose)
    "ball": "balls", "sphere": "spheres", "orb": "orbs", "donut": "donuts", "doughnut": "doughnuts",
    "bagel": "bagels", "kite": "kites", "star": "stars", "heart": "hearts", "valentine": "valentines",
    "moon": "moons", "crescent": "crescents", "tent": "tents", "teepee": "teepees", "cross": "crosses",
    "crucifix": "crucifixes", "arrow": "arrows", "pointer": "pointers", "box": "boxes",
    "crate": "crates", "cube": "cubes", "egg": "eggs", "leaf": "leaves", "umbrella": "umbrellas",
    "parasol": "parasols", "fish": "fish", "mushroom": "mushrooms", "toadstool": "toadstools",
    "house": "houses", "hut": "huts", "cottage": "cottages",
}

# named object colours (RGB 0-255); captions use the names
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 35), "green": (40, 165, 55), "blue": (40, 75, 210), "yellow": (235, 215, 40),
    "orange": (245, 140, 25), "purple": (135, 55, 175), "pink": (245, 135, 185),
    "brown": (125, 75, 35), "white": (242, 242, 242), "black": (22, 22, 22), "gray": (128, 128, 128),
}
TEXTURES = ("solid", "stripes", "dots", "noise")
TEXTURE_WORDS = {"solid": ("plain",), "stripes": ("striped",), "dots": ("dotted", "spotted"),
                 "noise": ("speckled", "grainy")}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
# distractor nouns: none is a category name or synonym
SURFACES = ("noisy background", "cluttered table", "patterned wall", "messy floor", "textured surface",
            "busy background", "colourful canvas", "scribbled paper", "grey board")
PICTURES = ("picture", "photo", "drawing", "image", "sketch", "painting")
CROWD_EVERY = 50  # image index % CROWD_EVERY == CROWD_OFFSET holds a crowd region (~2 %)
CROWD_OFFSET = 3
CROWD_CATEGORIES = (1, 4, 5, 11, 12)
SECONDARY = ("white", "brown", "gray", "black", "yellow")  # colours of umbrella handles, roofs, stems
MIN_AREA = 30  # px; smaller visible parts are never annotated (placements that make them are rejected)
MIN_VISIBLE_FRACTION = 0.35  # an occluded object keeps at least this share of its in-image pixels
IMAGE_SPLITS = ("train", "val")


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo dataset lives; all absolute."""

    root: Path
    train_images: Path
    val_images: Path
    train_instances: Path
    val_instances: Path
    train_captions: Path
    val_captions: Path
    manifest: Path

    @classmethod
    def under(cls, root: str | Path) -> DemoPaths:
        root = Path(root).resolve()
        ann = root / "annotations"
        return cls(root, root / "train", root / "val", ann / "instances_train.json",
                   ann / "instances_val.json", ann / "captions_train.json", ann / "captions_val.json",
                   root / "manifest.json")


# ----------------------------------------------------------------------------------------------
# silhouettes: f(u, v) -> (mask, part) on unit coordinates u, v in [-1, 1] (v points down).
# part: 0 main texture, 1 secondary solid colour, 2/3 main texture shaded darker.


def _poly(u: np.ndarray, v: np.ndarray, pts: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd point-in-polygon, vectorised over pixels (loops over the few edges only)."""
    inside = np.zeros(u.shape, bool)
    for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1]):
        if y1 == y2:
            continue
        crosses = (y1 > v) != (y2 > v)
        x_at = x1 + (x2 - x1) * (v - y1) / (y2 - y1)
        inside ^= crosses & (u < x_at)
    return inside


def _disc(u: np.ndarray, v: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    return (u - cx) ** 2 + (v - cy) ** 2 <= r * r


def _plain(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return mask, np.zeros(mask.shape, np.uint8)


def _ball(u, v):
    return _plain(_disc(u, v, 0, 0, 1))


def _donut(u, v):
    r2 = u * u + v * v
    return _plain((r2 <= 1) & (r2 >= 0.45**2))


def _kite(u, v):
    return _plain(_poly(u, v, [(0, -1), (0.7, -0.3), (0, 1), (-0.7, -0.3)]))


_STAR_PTS = [(float(r * np.sin(a)), float(-r * np.cos(a)))
             for k in range(10) for r, a in [((1.0, 0.42)[k % 2], k * np.pi / 5)]]


def _star(u, v):
    return _plain(_poly(u, v, _STAR_PTS))


def _heart(u, v):
    x, y = u * 1.14, -v * 1.12 + 0.12
    return _plain((x * x + y * y - 1) ** 3 - x * x * y**3 <= 0)


def _moon(u, v):
    return _plain(_disc(u, v, 0, 0, 1) & ~_disc(u, v, 0.45, -0.15, 0.85))


def _tent(u, v):
    body = _poly(u, v, [(0, -1), (1, 0.9), (-1, 0.9)])
    door = _poly(u, v, [(0, 0.15), (0.28, 0.9), (-0.28, 0.9)])
    return _plain(body & ~door)


def _cross(u, v):
    return _plain(((np.abs(u) <= 0.2) & (np.abs(v) <= 1)) | ((np.abs(v + 0.35) <= 0.2) & (np.abs(u) <= 0.65)))


def _arrow(u, v):
    shaft = (u >= -1) & (u <= 0.25) & (np.abs(v) <= 0.15)
    return _plain(shaft | _poly(u, v, [(0.15, -0.55), (1, 0), (0.15, 0.55)]))


def _box(u, v):  # isometric cube: hexagon with a light top face and two shaded side faces
    c, s = 0.866, 0.5
    mask = _poly(u, v, [(0, -1), (c, -s), (c, s), (0, 1), (-c, s), (-c, -s)])
    top = _poly(u, v, [(0, -1), (c, -s), (0, 0), (-c, -s)])
    part = np.where(top, 0, np.where(u < 0, 2, 3)).astype(np.uint8)
    return mask, part


def _egg(u, v):
    w = 0.7 * (1 + 0.18 * v)  # wider at the bottom
    return _plain((u / w) ** 2 + v * v <= 1)


def _leaf(u, v):
    blade = _disc(u, v, 0.5, -0.12, 0.95) & _disc(u, v, -0.5, -0.12, 0.95)
    stem = (np.abs(u) <= 0.06) & (v >= 0.5) & (v <= 1.0)
    return _plain(blade | stem)


def _umbrella(u, v):
    canopy = _disc(u, v, 0, 0.1, 1) & (v <= 0.1)
    for x in (-0.66, 0.0, 0.66):  # scalloped rim
        canopy &= ~_disc(u, v, x, 0.1, 0.33)
    shaft = (np.abs(u) <= 0.06) & (v >= -0.3) & (v <= 0.85)
    r2 = (u + 0.16) ** 2 + (v - 0.85) ** 2
    hook = (r2 <= 0.22**2) & (r2 >= 0.1**2) & (v >= 0.85)
    handle = (shaft | hook) & ~canopy
    return canopy | handle, handle.astype(np.uint8)


def _fish(u, v):
    body = ((u + 0.15) / 0.72) ** 2 + (v / 0.45) ** 2 <= 1
    tail = _poly(u, v, [(0.45, 0), (1, -0.5), (1, 0.5)])
    eye = _disc(u, v, -0.5, -0.1, 0.08)
    return _plain((body | tail) & ~eye)


def _mushroom(u, v):
    cap = ((u / 1.0) ** 2 + ((v + 0.05) / 0.8) ** 2 <= 1) & (v <= -0.05)
    stem = (np.abs(u) <= 0.24 + 0.06 * v) & (v > -0.05) & (v <= 0.9)
    return cap | stem, stem.astype(np.uint8)


def _house(u, v):
    roof = _poly(u, v, [(0, -0.95), (0.95, -0.15), (-0.95, -0.15)])
    body = (np.abs(u) <= 0.68) & (v > -0.15) & (v <= 0.9)
    door = (np.abs(u - 0.2) <= 0.14) & (v >= 0.42)
    window = (np.abs(u + 0.32) <= 0.14) & (np.abs(v - 0.25) <= 0.13)
    return roof | (body & ~door & ~window), roof.astype(np.uint8)


Shape = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
# category id -> (silhouette, max |rotation| in degrees, may be mirrored)
SHAPES: dict[int, tuple[Shape, float, bool]] = {
    1: (_ball, 0, False), 2: (_donut, 0, False), 3: (_kite, 40, False), 4: (_star, 180, False),
    5: (_heart, 25, False), 6: (_moon, 180, True), 7: (_tent, 12, False), 8: (_cross, 20, False),
    9: (_arrow, 180, False), 10: (_box, 10, False), 11: (_egg, 180, False), 12: (_leaf, 180, True),
    13: (_umbrella, 20, True), 14: (_fish, 30, True), 15: (_mushroom, 15, True), 16: (_house, 10, True),
}


# ----------------------------------------------------------------------------------------------
# drawing


@dataclass
class _Object:
    """One drawn object (or crowd region) and what the captions may say about it."""

    category_id: int
    colour: str
    texture: str
    size: float  # px, side of the unit square
    mask: np.ndarray  # bool (H, W): unoccluded in-image part while drawing, visible part once done
    is_crowd: bool = False
    covered_by: set[int] = field(default_factory=set)  # indices of later objects drawn over it


@functools.lru_cache(maxsize=16)
def _upsampler(size: int, cells: int) -> np.ndarray:
    """(size, cells) matrix interpolating `cells` samples to `size` with cosine (C1) weights."""
    t = np.linspace(0, cells - 1, size)
    lo = np.minimum(t.astype(np.int64), cells - 2)
    w = (1 - np.cos(np.pi * (t - lo))) / 2
    m = np.zeros((size, cells))
    m[np.arange(size), lo] = 1 - w
    m[np.arange(size), lo + 1] = w
    return m


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(size, size) smooth noise in [0, 1]: a random (cells, cells) grid, interpolated."""
    m = _upsampler(size, cells)
    return m @ rng.random((cells, cells)) @ m.T


def _texture(rng: np.random.Generator, kind: str, colour: np.ndarray, yy: np.ndarray,
             xx: np.ndarray) -> np.ndarray:
    """(h, w, 3) float RGB texture at pixel coordinates yy, xx."""
    base = np.broadcast_to(colour, yy.shape + (3,)).astype(np.float64)
    if kind == "solid":
        return base.copy()
    if kind == "noise":
        return base * rng.uniform(0.65, 1.25, yy.shape)[..., None]
    other = np.array(rng.choice(list(PALETTE.values())), np.float64) if rng.random() < 0.6 else colour * 0.45
    if kind == "stripes":
        theta, period = rng.uniform(0, np.pi), rng.uniform(3, 8)
        on = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period) > 0
    else:  # dots
        period = rng.uniform(4, 8)
        ox, oy = rng.uniform(0, period, 2)
        dy, dx = (yy + oy) % period - period / 2, (xx + ox) % period - period / 2
        on = dy * dy + dx * dx <= (0.3 * period) ** 2
    return np.where(on[..., None], other, base)


def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, n, 3) float cluttered background: gradient, smooth noise, lines and textured blobs."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    c0, c1 = rng.uniform(40, 215, (2, 3))
    theta = rng.uniform(0, 2 * np.pi)
    t = ((xx * np.cos(theta) + yy * np.sin(theta)) / n + 1) / 2
    img = c0 + (c1 - c0) * t[..., None]
    img += (_smooth_noise(rng, n, int(rng.integers(3, 7))) - 0.5)[..., None] * rng.uniform(30, 80, 3)
    for _ in range(int(rng.integers(1, 4))):  # blobs of background texture (not objects)
        blob = _smooth_noise(rng, n, int(rng.integers(4, 8))) > rng.uniform(0.72, 0.85)
        colour = rng.uniform(30, 225, 3)
        kind = ("solid", "stripes", "noise")[int(rng.integers(3))]
        img[blob] = 0.5 * img[blob] + 0.5 * _texture(rng, kind, colour, yy[blob], xx[blob])
    for _ in range(int(rng.integers(2, 8))):  # straight strokes
        (x0, y0), (x1, y1) = rng.uniform(-0.2 * n, 1.2 * n, (2, 2))
        length = max(np.hypot(x1 - x0, y1 - y0), 1e-6)
        dist = np.abs((x1 - x0) * (y0 - yy) - (x0 - xx) * (y1 - y0)) / length
        img[dist <= rng.uniform(0.5, 2.0)] = rng.uniform(0, 255, 3)
    return img


def _silhouette(rng: np.random.Generator, category_id: int, size: float, cx: float, cy: float,
                n: int) -> tuple[np.ndarray, np.ndarray, tuple[slice, slice], np.ndarray, np.ndarray]:
    """Rasterise one object: (local mask, local part, image slices, local yy, local xx)."""
    shape, max_rot, mirror = SHAPES[category_id]
    angle = np.deg2rad(rng.uniform(-max_rot, max_rot))
    ax, ay = rng.uniform(0.85, 1.15, 2)
    flip = -1.0 if mirror and rng.random() < 0.5 else 1.0
    half = int(np.ceil(0.75 * size * max(ax, ay))) + 1
    y0, y1 = max(int(cy) - half, 0), min(int(cy) + half + 1, n)
    x0, x1 = max(int(cx) - half, 0), min(int(cx) + half + 1, n)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dy, dx = yy + 0.5 - cy, xx + 0.5 - cx
    u = (np.cos(angle) * dx + np.sin(angle) * dy) * 2 / (size * ax) * flip
    v = (-np.sin(angle) * dx + np.cos(angle) * dy) * 2 / (size * ay)
    mask, part = shape(u, v)
    return mask, part, (slice(y0, y1), slice(x0, x1)), yy, xx


def _contrasting_colour(rng: np.random.Generator, backdrop: np.ndarray) -> tuple[str, np.ndarray]:
    """A named palette colour (jittered) that differs from the mean backdrop colour."""
    names = list(PALETTE)
    for _ in range(10):
        name = names[int(rng.integers(len(names)))]
        colour = np.clip(np.array(PALETTE[name], np.float64) + rng.uniform(-18, 18, 3), 0, 255)
        if np.linalg.norm(colour - backdrop) > 70:
            break
    return name, colour


def _place(rng: np.random.Generator, img: np.ndarray, owner: np.ndarray, objects: list[_Object],
           category_id: int, size: float, n: int, centre: tuple[float, float] | None = None,
           free: frozenset[int] = frozenset()) -> int | None:
    """Try to draw one object over ``img``/``owner`` (in place); its index, or None if rejected.

    Rejected when its in-image part is < MIN_AREA px or < 60 % of its whole silhouette (mostly
    outside the image), or when it would leave an earlier object (other than those in ``free``)
    with fewer than MIN_AREA px or MIN_VISIBLE_FRACTION of its unoccluded pixels.
    """
    cx, cy = rng.uniform(0, n, 2) if centre is None else centre
    mask, part, sl, yy, xx = _silhouette(rng, category_id, size, cx, cy, n)
    area = int(mask.sum())
    if area < MIN_AREA or area < 0.6 * _FILL[category_id] * size * size:
        return None
    full = np.zeros((n, n), bool)
    full[sl] = mask
    hit = owner[full]
    lost = np.bincount(hit[hit >= 0], minlength=len(objects))
    covered = {int(j) for j in np.flatnonzero(lost)}
    for j in covered - free:
        visible = int((owner == j).sum()) - int(lost[j])
        if visible < MIN_AREA or visible < MIN_VISIBLE_FRACTION * objects[j].mask.sum():
            return None
    colour_name, colour = _contrasting_colour(rng, img[sl][mask].mean(axis=0))
    kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
    tex = _texture(rng, kind, colour, yy, xx)
    tex *= (1 + rng.uniform(-0.3, 0.3) * (xx - cx) / max(size, 1.0))[..., None]  # soft shading
    second = np.array(PALETTE[SECONDARY[int(rng.integers(len(SECONDARY)))]], np.float64)
    tex = np.where((part == 1)[..., None], second, tex)
    tex = np.where((part == 2)[..., None], tex * 0.8, np.where((part == 3)[..., None], tex * 0.62, tex))
    local = img[sl]
    local[mask] = tex[mask]
    owner[full] = len(objects)
    for j in covered:
        objects[j].covered_by.add(len(objects))
    objects.append(_Object(category_id, colour_name, kind, size, full))
    return len(objects) - 1


def _fill_fractions() -> dict[int, float]:
    """Share of the unit square [-1, 1]^2 each silhouette covers, measured on a fine grid."""
    g = (np.arange(400) + 0.5) / 200 - 1
    v, u = np.meshgrid(g, g, indexing="ij")
    return {cid: float(shape(u, v)[0].mean()) for cid, (shape, _, _) in SHAPES.items()}


_FILL = _fill_fractions()


def _draw_image(rng: np.random.Generator, n: int, with_crowd: bool) -> tuple[np.ndarray, list[_Object]]:
    """One image (n, n, 3) uint8 and its objects (visible masks resolved from the owner map)."""
    img = _background(rng, n)
    owner = np.full((n, n), -1, np.int64)
    objects: list[_Object] = []
    if with_crowd:  # a tight cluster of tiny objects of one class, annotated as one crowd region
        cid = CROWD_CATEGORIES[int(rng.integers(len(CROWD_CATEGORIES)))]
        ccx, ccy = rng.uniform(0.25 * n, 0.75 * n, 2)
        members, min_size = int(rng.integers(6, 11)), np.sqrt(1.5 * MIN_AREA / _FILL[cid])
        for _ in range(4 * members):
            if len(objects) == members:
                break
            size = max(rng.uniform(0.06, 0.09) * n, min_size)
            centre = (ccx + rng.normal(0, 0.06 * n), ccy + rng.normal(0, 0.06 * n))
            _place(rng, img, owner, objects, cid, size, n, centre, free=frozenset(range(len(objects))))
        if objects:  # the members (all objects so far) become one crowd object
            region = owner >= 0
            owner[region] = 0
            objects[:] = [_Object(cid, objects[0].colour, "solid", 0.075 * n, region, True)]
    num_regular = 0
    target = int(rng.integers(2, 7))
    sizes_hi = 0.6 * n
    for attempt in range(400):
        if num_regular >= target or (attempt >= 60 and num_regular >= 2):
            break
        if attempt >= 60:
            sizes_hi = max(0.2 * n, sizes_hi * 0.97)  # only when crowded: make room with smaller objects
        cid = int(rng.integers(1, len(CATEGORIES) + 1))
        size = float(np.exp(rng.uniform(np.log(8), np.log(sizes_hi))))
        if _place(rng, img, owner, objects, cid, size, n) is not None:
            num_regular += 1
    if num_regular < 2:
        raise RuntimeError(f"could not place 2 objects in a {n}x{n} image in 400 tries")
    img = ndimage.gaussian_filter(img, sigma=(0.5, 0.5, 0)) + rng.normal(0, 4, img.shape)
    for k, obj in enumerate(objects):  # masks become the visible parts
        obj.mask = owner == k
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), objects


# ----------------------------------------------------------------------------------------------
# captions

_CATEGORY_BY_ID = {c["id"]: c for c in CATEGORIES}


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _size_word(rng: np.random.Generator, size: float, n: int) -> str | None:
    rel = size / n
    if rel < 0.12:
        return "tiny"
    if rel < 0.2:
        return "small"
    if rel > 0.4:
        return ("large", "big")[int(rng.integers(2))]
    return None


def _mention(rng: np.random.Generator, group: list[_Object], n: int) -> str:
    """A noun phrase for the named objects of one category: 'a striped kite', 'three crates', ..."""
    cat = _CATEGORY_BY_ID[group[0].category_id]
    words = cat["synonyms"]
    noun = cat["name"] if not words or rng.random() < 0.55 else words[int(rng.integers(len(words)))]
    if group[0].is_crowd:
        lead = ("a group of tiny", "lots of little", "a cluster of small", "a pile of")[int(rng.integers(4))]
        return f"{lead} {PLURALS[noun]}"
    if len(group) == 1:
        obj, r = group[0], rng.random()
        adjective = (obj.colour if r < 0.35 else _pick(rng, TEXTURE_WORDS[obj.texture]) if r < 0.5
                     else _size_word(rng, obj.size, n) if r < 0.65 else None)
        return _article(f"{adjective} {noun}" if adjective else noun)
    k = len(group)
    count = _pick(rng, ("some", "several")) if k >= 3 and rng.random() < 0.25 else NUMBER_WORDS[k]
    colours = {o.colour for o in group}
    colour = f" {colours.pop()}" if len(colours) == 1 and rng.random() < 0.4 else ""
    return f"{count}{colour} {PLURALS[noun]}"


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _caption(rng: np.random.Generator, objects: list[_Object], n: int) -> str:
    """One caption naming each object with probability 0.7 (at least one), grouped by category."""
    named = [i for i in range(len(objects)) if rng.random() < 0.7]
    if not named:
        named = [int(rng.integers(len(objects)))]
    groups: dict[tuple[int, bool], list[int]] = {}
    for i in named:
        groups.setdefault((objects[i].category_id, objects[i].is_crowd), []).append(i)
    keys = list(groups)
    rng.shuffle(keys)
    single = {groups[k][0]: k for k in keys if len(groups[k]) == 1 and not k[1]}
    hidden = [(i, j) for i in single for j in objects[i].covered_by
              if j in single and single[j][0] != single[i][0]]
    surface, picture = _article(_pick(rng, SURFACES)), _pick(rng, PICTURES)
    if hidden and rng.random() < 0.5:  # occlusion, as people describe it
        i, j = hidden[int(rng.integers(len(hidden)))]
        rest = [_mention(rng, [objects[x] for x in groups[k]], n)
                for k in keys if k not in (single[i], single[j])]
        text = f"{_mention(rng, [objects[i]], n)} partly hidden behind {_mention(rng, [objects[j]], n)}"
        text += f", with {_join(rest)} nearby" if rest else f" on {surface}"
    else:
        phrases = [_mention(rng, [objects[x] for x in groups[k]], n) for k in keys]
        listed = _join(phrases)
        verb = "is" if phrases[0].startswith(("a ", "an ")) else "are"
        templates = [f"{listed} on {surface}", f"{_article(picture)} of {listed}",
                     f"there {verb} {listed} in this {picture}", f"{listed} scattered over {surface}",
                     f"some shapes on {surface}, including {listed}", f"a cluttered scene with {listed}",
                     f"{listed} with a few other things around"]
        if len(phrases) >= 2:
            a, b = _join(phrases[: len(phrases) // 2]), _join(phrases[len(phrases) // 2:])
            templates += [f"{a} next to {b}", f"{a} beside {b} on {surface}", f"{a} near {b}"]
        text = templates[int(rng.integers(len(templates)))]
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    return text + ("." if rng.random() < 0.5 else "")


# ----------------------------------------------------------------------------------------------
# dataset files


def _annotation(obj: _Object, ann_id: int, image_id: int) -> dict:
    """COCO annotation of one visible mask: compressed RLE (counts as str), tight bbox, pixel area."""
    rle = mask_utils.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
    rows, cols = np.flatnonzero(obj.mask.any(axis=1)), np.flatnonzero(obj.mask.any(axis=0))
    x, y = int(cols[0]), int(rows[0])
    return {
        "id": ann_id, "image_id": image_id, "category_id": obj.category_id,
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
        "area": int(obj.mask.sum()),
        "bbox": [float(x), float(y), float(cols[-1] + 1 - x), float(rows[-1] + 1 - y)],
        "iscrowd": int(obj.is_crowd),
    }


def categories() -> list[dict]:
    """The demo categories, COCO-style with ``synonyms`` (copies; safe to modify)."""
    return [dict(c, synonyms=list(c["synonyms"])) for c in CATEGORIES]


def _params(seed: int, num_train: int, num_val: int, image_size: int) -> dict:
    return {"generator": "ovis.data.synthetic", "version": GENERATOR_VERSION, "seed": seed,
            "num_train": num_train, "num_val": num_val, "image_size": image_size}


def _up_to_date(paths: DemoPaths, params: dict) -> bool:
    try:
        manifest = json.loads(paths.manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = (paths.train_instances, paths.val_instances, paths.train_captions, paths.val_captions)
    return (isinstance(manifest, dict) and manifest.get("parameters") == params
            and all(p.is_file() for p in files) and paths.train_images.is_dir() and paths.val_images.is_dir())


def generate_demo_dataset(root: str | Path, seed: int = 0, num_train: int = 240, num_val: int = 60,
                          image_size: int = 160, force: bool = False) -> DemoPaths:
    """Write the demo dataset under ``root`` (see the module docstring) and return its paths.

    Deterministic: the same arguments give byte-identical files. If ``root/manifest.json`` already
    records these arguments (and the files are there) nothing is redone unless ``force``. Images
    are written to a staging folder inside ``root`` and renamed into place; JSON files are
    replaced atomically and the manifest is written last, so an interrupted run is redone.
    Image ids are 1..num_train (train) then num_train+1.. (val); annotation ids are unique too.
    Raises ValueError for counts < 1 or ``image_size`` < 64 px.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train and num_val must be >= 1, got {num_train} and {num_val}")
    if image_size < 64:
        raise ValueError(f"image_size must be >= 64 px to fit 2-6 objects, got {image_size}")
    paths = DemoPaths.under(root)
    params = _params(seed, num_train, num_val, image_size)
    if not force and _up_to_date(paths, params):
        return paths
    with folder_lock(paths.root):  # a second process generating into root fails with FolderInUse, not a mix
        if force or not _up_to_date(paths, params):
            _write_dataset(paths, params, seed, num_train, num_val, image_size)
    return paths



def generate_for(data: DataConfig) -> DemoPaths:
    """The demo dataset a recipe's ``data`` section asks for (``data.demo``), generated if not up to date."""
    return generate_demo_dataset(data.root, seed=data.demo_seed, num_train=data.demo_num_train,
                                 num_val=data.demo_num_val, image_size=data.demo_image_size)

def _write_dataset(paths: DemoPaths, params: dict, seed: int, num_train: int, num_val: int, image_size: int) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.manifest.unlink(missing_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=paths.root))
    info = {"description": "ovis synthetic demo dataset", "version": str(GENERATOR_VERSION), "seed": seed}
    try:
        next_image, next_ann, next_caption = 1, 1, 1
        outputs, counts = {}, {}
        for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
            (staging / split).mkdir()
            images, anns, caps = [], [], []
            for index in range(count):
                rng = np.random.default_rng(np.random.SeedSequence([seed, split_index, index]))
                pixels, objects = _draw_image(rng, image_size, index % CROWD_EVERY == CROWD_OFFSET)
                image: dict[str, Any] = {"id": next_image, "file_name": f"{next_image:06d}.png",
                                         "width": image_size, "height": image_size}
                Image.fromarray(pixels).save(staging / split / image["file_name"], format="PNG",
                                               compress_level=1)
                images.append(image)
                for obj in objects:
                    anns.append(_annotation(obj, next_ann, next_image))
                    next_ann += 1
                for _ in range(5):
                    caps.append({"id": next_caption, "image_id": next_image,
                                 "caption": _caption(rng, objects, image_size)})
                    next_caption += 1
                next_image += 1
            outputs[split] = (
                {"info": info, "licenses": [], "images": images, "annotations": anns,
                 "categories": categories()},
                {"info": info, "licenses": [], "images": images, "annotations": caps},
            )
            counts[split] = {"images": len(images), "annotations": sum(not a["iscrowd"] for a in anns),
                             "crowd_annotations": sum(a["iscrowd"] for a in anns), "captions": len(caps)}
        for split in IMAGE_SPLITS:
            target = paths.root / split
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging / split, target)
        for split, (instances, captions) in outputs.items():
            write_json_atomic(instances, getattr(paths, f"{split}_instances"))
            write_json_atomic(captions, getattr(paths, f"{split}_captions"))
        write_json_atomic({"parameters": params, "counts": counts, "categories": len(CATEGORIES)},
                          paths.manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# partitions (committed package data) and CLI


def partition_text(name: str) -> str:
    """The JSON text of partition ``name`` ('demo_ovr' or 'demo_open_world'), formatted like the
    COCO partition files: one ``{"id", "name"}`` per line, sorted by id."""
    if name not in PARTITION_FILES:
        raise KeyError(f"unknown demo partition {name!r}; known: {', '.join(PARTITION_FILES)}")
    blocks = []
    for key, ids in PARTITION_FILES[name][1].items():
        rows = ",\n".join(f'  {json.dumps({"id": i, "name": _CATEGORY_BY_ID[i]["name"]})}'
                           for i in sorted(ids))
        blocks.append(f' "{key}": [\n{rows}\n ]')
    return "{\n" + ",\n".join(blocks) + "\n}\n"


def write_partition_files(directory: str | Path = RESOURCES) -> list[Path]:
    """(Re)write ``demo_ovr.json`` and ``demo_open_world.json`` from the constants; returns the paths."""
    written = []
    for name, (file_name, _) in PARTITION_FILES.items():
        written.append(write_text_atomic(partition_text(name), Path(directory) / file_name))
    return written


def main(argv: list[str] | None = None) -> int:
    """``ovis demo-data --root DIR [--seed S] [--num-train N] [--num-val M] [--image-size PX] [--force]``."""
    parser = argparse.ArgumentParser(prog="ovis demo-data", description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="output folder (created)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=240)
    parser.add_argument("--num-val", type=int, default=60)
    parser.add_argument("--image-size", type=int, default=160, help="square image side in px")
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)
    try:
        paths = generate_demo_dataset(args.root, args.seed, args.num_train, args.num_val,
                                      args.image_size, args.force)
    except ValueError as err:
        print(f"ovis demo-data: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"ovis demo-data: error: cannot write the demo dataset under {args.root}: {err}",
              file=sys.stderr)
        return 1
    counts = json.loads(paths.manifest.read_text(encoding="utf-8"))["counts"]
    for split, c in counts.items():
        print(f"{split}: {c['images']} images, {c['annotations']} objects, "
              f"{c['crowd_annotations']} crowd regions, {c['captions']} captions")
    print(f"demo dataset in {paths.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
