"""Overlays blend where the masks are, in stable colours, from every COCO mask encoding."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image
from pycocotools import mask as mask_utils

from ovis.viz.draw import (
    decode_segmentations,
    draw_instances,
    image_grid,
    instance_colors,
    label_color,
    overlay_masks,
)

H, W = 40, 60


def rect_mask(y0: int, y1: int, x0: int, x1: int, h: int = H, w: int = W) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.astype(np.uint8).flatten(order="F")  # COCO runs go down columns
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def test_fill_blends_at_alpha_outline_is_solid_and_outside_is_untouched() -> None:
    img = np.full((H, W, 3), 100, np.uint8)
    m = rect_mask(10, 30, 10, 40)
    out = overlay_masks(img, m[None], alpha=0.5, colors=[[200, 0, 50]])
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    assert out[20, 25].tolist() == [150, 50, 75]  # interior: (100 + colour) / 2
    assert out[10, 25].tolist() == [200, 0, 50]  # top edge row: outline in the pure colour
    assert (out[~m] == 100).all()  # nothing leaks outside the mask
    same = overlay_masks(img, m[None], alpha=0.0, colors=[[200, 0, 50]], outline=False)
    assert (same == img).all()


def test_small_masks_stay_on_top_of_large_ones_whatever_the_order() -> None:
    img = np.zeros((H, W, 3), np.uint8)
    small, big = rect_mask(15, 25, 20, 30), rect_mask(0, H, 0, W)
    cols = [[255, 0, 0], [0, 0, 255]]
    a = overlay_masks(img, np.stack([small, big]), alpha=1.0, colors=cols, outline=False)
    b = overlay_masks(img, np.stack([big, small]), alpha=1.0, colors=cols[::-1], outline=False)
    assert a[20, 25].tolist() == [255, 0, 0] and a[2, 2].tolist() == [0, 0, 255]
    assert (a == b).all()


def test_polygon_compressed_and_uncompressed_rle_decode_to_the_same_mask() -> None:
    m = rect_mask(5, 20, 8, 33)
    poly = [[8, 5, 33, 5, 33, 20, 8, 20]]  # x, y corners of the same rectangle
    r = rle(m)
    segms = [r, {"size": r["size"], "counts": r["counts"].encode()}, uncompressed_rle(m), poly]
    masks = decode_segmentations(segms, H, W)
    assert masks.shape == (4, H, W) and masks.dtype == bool
    for k in range(3):
        assert (masks[k] == m).all()
    assert np.logical_xor(masks[3], m).sum() <= m.shape[0] + m.shape[1]  # polygon rasterisation border
    assert not decode_segmentations([None, []], H, W).any()  # box-only instances


def test_rle_of_another_image_size_is_rejected_with_its_annotation() -> None:
    segm = rle(rect_mask(0, 5, 0, 5, h=10, w=10))
    with pytest.raises(ValueError, match=r"image 7, annotation 42: RLE size \[10, 10\].*\[40, 60\]"):
        decode_segmentations([segm], H, W, ["image 7, annotation 42"])


def test_colours_follow_labels_across_calls_and_processes() -> None:
    a = instance_colors(3, ["dog", "cat", "dog"])
    b = instance_colors(1, ["dog"])
    assert (a[0] == b[0]).all() and (a[0] == label_color("dog")).all()
    assert not (a[0] == a[2]).all()  # a second dog gets a shade of the same hue
    # fixed values: a salted hash() would give other colours in the next Python process
    assert label_color("dog").tolist() == [145, 30, 180]
    assert label_color("person").tolist() == [100, 230, 150]


def test_dashed_outline_leaves_gaps_and_solid_does_not() -> None:
    img = np.zeros((H, W, 3), np.uint8)
    m = rect_mask(5, 35, 5, 55)
    col = [[0, 255, 0]]
    solid = overlay_masks(img, m[None], alpha=0.0, colors=col)
    dashed = overlay_masks(img, m[None], alpha=0.0, colors=col, dashed=[True])
    n_solid = (solid[..., 1] == 255).sum()
    n_dashed = (dashed[..., 1] == 255).sum()
    assert n_solid > 0 and 0.3 * n_solid < n_dashed < 0.7 * n_solid


def test_boxes_and_labels_are_drawn_in_pixels() -> None:
    img = np.zeros((100, 120, 3), np.uint8)
    out = overlay_masks(img, None, boxes=[[20, 40, 50, 30]], labels=["cat"], scores=[0.9], colors=[[255, 255, 0]])
    assert out[40, 45].tolist() == [255, 255, 0] and out[55, 20].tolist() == [255, 255, 0]  # box edges
    assert out[55, 45].tolist() == [0, 0, 0]  # box inside
    label = out[:40, 20:]
    assert (label == [255, 255, 0]).all(-1).any() and (label == 0).all(-1).any()  # dark text on yellow tag
    with pytest.raises(ValueError, match="2 labels for 1 masks"):
        overlay_masks(img, rect_mask(0, 5, 0, 5, 100, 120)[None], labels=["a", "b"])


def test_draw_instances_one_box_per_annotation_pseudo_dashed_scores_in_labels() -> None:
    img = np.full((H, W, 3), 80, np.uint8)
    anns = [
        {"id": 1, "image_id": 3, "category_id": 1, "segmentation": rle(rect_mask(5, 20, 5, 25)), "bbox": [5, 5, 20, 15]},
        {"id": 2, "image_id": 3, "category_id": 2, "segmentation": [[30, 10, 50, 10, 50, 30, 30, 30]],
         "score": 0.734, "pseudo": True},
        {"id": 3, "image_id": 3, "category_id": 9, "segmentation": uncompressed_rle(rect_mask(30, 40, 0, 10)),
         "iscrowd": 1},
    ]
    fig = Figure()
    ax = fig.add_subplot()
    n = draw_instances(ax, img, anns, {1: "cat", 2: "dog"}, title="GT")
    boxes = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert n == 3 and len(boxes) == 3
    assert [b.get_linestyle() for b in boxes] == ["-", "--", "-"]
    assert boxes[1].get_xy() == (29.5, 9.5) and boxes[1].get_width() == 20  # box from the polygon's mask
    assert [t.get_text() for t in ax.texts] == ["cat", "dog 0.73", "9 (crowd)"]
    assert ax.get_title() == "GT"
    shown = ax.images[0].get_array()
    assert (np.asarray(shown)[12, 15] != 80).any() and (np.asarray(shown)[2, 55] == 80).all()
    draw_instances(fig.add_subplot(), img, anns, {1: "cat", 2: "dog"}, show_scores=False)
    assert fig.axes[1].texts[1].get_text() == "dog"


@pytest.fixture
def tiny_coco(tmp_path):
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i, (h, w) in enumerate([(H, W), (W, H), (H, W)], start=1):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "height": h, "width": w})
        anns.append({"id": 10 + i, "image_id": i, "category_id": 1, "iscrowd": 0, "bbox": [2, 2, 10, 10],
                     "area": 100, "segmentation": rle(rect_mask(2, 12, 2, 12, h, w))})
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cat"}]}
    return coco, tmp_path


def test_image_grid_puts_gt_and_extra_panels_side_by_side_with_captions(tiny_coco) -> None:
    coco, root = tiny_coco
    teacher = [{"image_id": 1, "category_id": 1, "score": 0.5, "segmentation": coco["annotations"][0]["segmentation"]}]
    caps = {1: ["a cat sitting on a very long mat next to another cat that looks the other way entirely"], 2: []}
    fig = image_grid(coco, root, [1, 2], cols=4, captions=caps, extra={"teacher": teacher}, max_caption_chars=30)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["#1 · GT · 1", "teacher · 1", "#2 · GT · 1", "teacher · 0"]
    assert {ax.get_subplotspec().rowspan.start for ax in visible} == {0}  # cols=4: both images in one row
    assert visible[0].get_xlabel() == "a cat sitting on a very long…"  # 30 chars
    assert visible[2].get_xlabel() == ""
    fig.savefig(root / "grid.png")
    assert Image.open(root / "grid.png").size[0] > Image.open(root / "grid.png").size[1]

    default = image_grid(coco, root, n=2, cols=1)
    assert [ax.get_title() for ax in default.axes] == ["#1 · GT · 1", "#2 · GT · 1"]


def test_image_grid_errors_name_the_image(tiny_coco) -> None:
    coco, root = tiny_coco
    with pytest.raises(KeyError, match=r"\[99\]"):
        image_grid(coco, root, [99])
    (root / "2.png").unlink()
    with pytest.raises(FileNotFoundError, match="image 2: .*2.png not found"):
        image_grid(coco, root, [1, 2])
