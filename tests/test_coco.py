"""COCO data layer: validation errors name file and id, masks equal pycocotools, the Dataset."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ovis.data.coco import (
    CocoFormatError,
    ann_to_mask,
    ann_to_rle,
    compressed_rle_runs,
    compressed_rle_sums,
    load_coco,
    mask_to_rle,
    masks_to_rles,
    save_coco,
    validate_coco,
)
from ovis.data.dataset import CocoDetection, collate_fn
from ovis.data.masks import mask_boxes, mask_iou, match_counts
from ovis.data.transforms import RandomHorizontalFlip
from ovis.io import write_json_atomic, write_text_atomic

# pycocotools' Cython arrays trip a numpy-2 DeprecationWarning on every decode; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

MINI = Path(__file__).parent / "data" / "real" / "coco_mini"
VAL_JSON = MINI / "annotations" / "instances_val2017.json"
VAL_IMAGES = MINI / "val2017"


@pytest.fixture(scope="module")
def val() -> dict:
    return load_coco(VAL_JSON)


@pytest.fixture(scope="module")
def val8(val: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """coco_mini val restricted to the 8 images whose JPEGs are in tests/data."""
    on_disk = {p.name for p in VAL_IMAGES.glob("*.jpg")}
    images = [im for im in val["images"] if im["file_name"] in on_disk]
    ids = {im["id"] for im in images}
    data = dict(val, images=images, annotations=[a for a in val["annotations"] if a["image_id"] in ids])
    assert len(images) == 8
    return save_coco(data, tmp_path_factory.mktemp("val8") / "val8.json")


def pycoco(data: dict) -> COCO:
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    return coco


# ---------------------------------------------------------------------------------------------
# validation


def tiny() -> dict:
    """A valid two-image file: polygon, two-part polygon, uncompressed and compressed RLE."""
    mask = np.zeros((10, 12), np.uint8)
    mask[2:6, 3:9] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {
        "images": [
            {"id": 1, "file_name": "a.jpg", "height": 10, "width": 12},
            {"id": 2, "file_name": "b.jpg", "height": 10, "width": 12},
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 4], "area": 9.0, "iscrowd": 0,
             "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]},
            {"id": 11, "image_id": 1, "category_id": 5, "bbox": [0, 0, 0.5, 0.5], "area": 0.1, "iscrowd": 0,
             "segmentation": [[0, 0, 0.5, 0, 0.5, 0.5], [6, 6, 8, 6, 8, 8]]},
            {"id": 12, "image_id": 2, "category_id": 3, "bbox": [3, 2, 6, 4], "area": 24.0, "iscrowd": 1,
             "segmentation": {"size": [10, 12], "counts": [32, 4, 6, 4, 6, 4, 6, 4, 6, 4, 6, 4, 34]}},
            {"id": 13, "image_id": 2, "category_id": 5, "bbox": [3, 2, 6, 4], "area": 24.0, "iscrowd": 0,
             "segmentation": {"size": [10, 12], "counts": rle["counts"].decode()}},
        ],
    }


def test_tiny_is_valid_and_loads_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny()))
    assert load_coco(path) == tiny()


def test_missing_annotations_key_means_no_annotations(tmp_path: Path) -> None:
    data = tiny()
    del data["annotations"]
    path = tmp_path / "images_only.json"
    path.write_text(json.dumps(data))
    assert load_coco(path)["annotations"] == []


def _set(key_path: tuple, value):  # noqa: ANN202 - small mutation helper
    def mutate(d: dict) -> None:
        node = d
        for k in key_path[:-1]:
            node = node[k]
        node[key_path[-1]] = value

    return mutate


def _delete(*key_path):  # noqa: ANN202
    def mutate(d: dict) -> None:
        node = d
        for k in key_path[:-1]:
            node = node[k]
        del node[key_path[-1]]

    return mutate


def _append(key: str, index: int, **changes):  # noqa: ANN202
    def mutate(d: dict) -> None:
        d[key].append(dict(d[key][index], **changes))

    return mutate


BAD = {
    "no images": (_delete("images"), "missing top-level key 'images'"),
    "no categories": (_delete("categories"), "missing top-level key 'categories'"),
    "duplicate image": (_append("images", 0, file_name="c.jpg"), "image 1: duplicate 'id'"),
    "duplicate annotation": (_append("annotations", 0), "annotation 10: duplicate 'id'"),
    "duplicate category": (_append("categories", 1, name="wolf"), "category 5: duplicate 'id'"),
    "image without height": (_delete("images", 1, "height"), "image 2: 'height' is None, expected a positive integer"),
    "unknown image": (_set(("annotations", 1, "image_id"), 99),
                      "annotation 11: 'image_id' 99 is not an image id in 'images'"),
    "unknown category": (_set(("annotations", 0, "category_id"), 7),
                         "annotation 10 (image 1): 'category_id' 7 is not a category id"),
    "polygon 2 points": (_set(("annotations", 0, "segmentation"), [[1, 1, 5, 1]]),
                         "annotation 10 (image 1): 'segmentation' polygon has 2 points, needs at least 3"),
    "second part 2 points": (_set(("annotations", 1, "segmentation", 1), [6, 6, 8, 8]),
                             "annotation 11 (image 1): 'segmentation' polygon has 2 points, needs at least 3 (part 1 of 2)"),
    "odd coordinates": (_set(("annotations", 0, "segmentation", 0), [1, 1, 5, 1, 5, 5, 1]),
                        "annotation 10 (image 1): 'segmentation' polygon has an odd number of coordinates (7)"),
    "flat polygon": (_set(("annotations", 0, "segmentation"), [1, 1, 5, 1, 5, 5]),
                     "annotation 10 (image 1): 'segmentation' polygon is a int"),
    "empty polygon list": (_set(("annotations", 0, "segmentation"), []),
                           "annotation 10 (image 1): 'segmentation' is an empty polygon list"),
    "zero width bbox": (_set(("annotations", 0, "bbox"), [1, 1, 0, 4]),
                        "annotation 10 (image 1): 'bbox' [1, 1, 0, 4] has non-positive width or height"),
    "negative height bbox": (_set(("annotations", 3, "bbox"), [1, 1, 2, -3]),
                             "annotation 13 (image 2): 'bbox' [1, 1, 2, -3] has non-positive"),
    "short bbox": (_set(("annotations", 3, "bbox"), [1, 1, 2]), "annotation 13 (image 2): 'bbox' has 3 values"),
    "no bbox": (_delete("annotations", 2, "bbox"), "annotation 12: 'bbox' is missing or null"),
    "RLE without counts": (_delete("annotations", 2, "segmentation", "counts"),
                           "annotation 12 (image 2): 'segmentation' is an RLE without 'counts'"),
    "RLE size mismatch": (_set(("annotations", 3, "segmentation", "size"), [12, 10]),
                          "annotation 13 (image 2): 'segmentation' RLE size [12, 10] does not match the image's "
                          "[height, width] [10, 12]"),
    "uncompressed RLE wrong total": (_set(("annotations", 2, "segmentation", "counts"), [32, 4, 6]),
                                     "annotation 12 (image 2): 'segmentation' uncompressed RLE counts sum to 42, expected"),
    "RLE counts wrong type": (_set(("annotations", 3, "segmentation", "counts"), 5),
                              "annotation 13 (image 2): 'segmentation' RLE counts is a int"),
    "RLE counts string '0'": (_set(("annotations", 3, "segmentation", "counts"), "0"),
                              "annotation 13 (image 2): 'segmentation' RLE counts string covers 0 pixels, expected"),
    "RLE counts not compressed RLE": (_set(("annotations", 3, "segmentation", "counts"), "hello world"),
                                      "annotation 13 (image 2): 'segmentation' RLE counts string is not a compressed COCO RLE"),
    "RLE negative run": (_set(("annotations", 2, "segmentation", "counts"), [130, -4, -6]),
                         "annotation 12 (image 2): 'segmentation' RLE counts hold a value that is not an integer ≥ 0"),
    "polygon string coordinate": (_set(("annotations", 0, "segmentation", 0), [1, 1, "5", 1, 5, 5]),
                                  "annotation 10 (image 1): 'segmentation' polygon coordinate '5' is not a finite number"),
    "polygon bool coordinate": (_set(("annotations", 1, "segmentation", 1), [1, 1, 5, True, 5, 5]),
                                "annotation 11 (image 1): 'segmentation' polygon coordinate True is not a finite number (part 1 of 2)"),
    "bbox string value": (_set(("annotations", 0, "bbox"), [1, "1", 2, 3]),
                          "annotation 10 (image 1): 'bbox' [1, '1', 2, 3] holds a value that is not a finite number"),
    "bbox outside image": (_set(("annotations", 0, "bbox"), [5000, 1, 2, 3]),
                           "annotation 10 (image 1): 'bbox' [5000, 1, 2, 3] lies outside its"),
    "iscrowd yes": (_set(("annotations", 0, "iscrowd"), "yes"),
                    "annotation 10 (image 1): 'iscrowd' is 'yes', expected 0 or 1"),
    "negative area": (_set(("annotations", 0, "area"), -3.5),
                      "annotation 10 (image 1): 'area' is -3.5, expected a number ≥ 0"),
    "category without name": (_delete("categories", 0, "name"),
                              "category 3: 'name' is None, expected a non-empty string"),
}


def test_polygons_of_numpy_numbers_are_valid_in_memory() -> None:
    data = tiny()
    data["annotations"][0]["segmentation"] = [np.asarray(data["annotations"][0]["segmentation"][0], np.float64).tolist()]
    data["annotations"][0]["segmentation"][0][1] = np.float64(data["annotations"][0]["segmentation"][0][1])
    validate_coco(data, "in memory")


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_file_and_id(case: str, tmp_path: Path) -> None:
    mutate, expected = BAD[case]
    data = tiny()
    mutate(data)
    path = tmp_path / "instances_bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CocoFormatError) as info:
        load_coco(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_top_level_must_be_an_object(tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(CocoFormatError, match="top level is a list"):
        load_coco(path)


def test_tiny_boxes_are_fine_only_non_positive_is_an_error(tmp_path: Path) -> None:
    data = tiny()
    data["annotations"][0]["bbox"] = [1, 1, 1e-3, 1e-3]
    path = tmp_path / "tiny_box.json"
    path.write_text(json.dumps(data))
    assert load_coco(path)["annotations"][0]["bbox"] == [1, 1, 1e-3, 1e-3]


def test_truncated_json_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "instances_val2017.json"
    raw = VAL_JSON.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CocoFormatError, match=r"instances_val2017\.json: not valid JSON \(truncated or corrupt\?\)"):
        load_coco(path)


def test_unreadable_and_non_json_files(tmp_path: Path) -> None:
    with pytest.raises(CocoFormatError, match=r"missing\.json: cannot read file"):
        load_coco(tmp_path / "missing.json")
    with pytest.raises(CocoFormatError, match=r"000000000802\.jpg: not"):
        load_coco(VAL_IMAGES / "000000000802.jpg")


def test_check_images_names_missing_file_and_image_id(val8: Path, tmp_path: Path) -> None:
    assert len(load_coco(val8, VAL_IMAGES, check_images=True)["images"]) == 8
    first = json.loads(val8.read_text())["images"][0]
    with pytest.raises(CocoFormatError) as info:
        load_coco(val8, tmp_path, check_images=True)
    assert f"image {first['id']}: file {tmp_path / first['file_name']} not found" in str(info.value)
    assert str(val8) in str(info.value)


# ---------------------------------------------------------------------------------------------
# writing


def test_write_json_atomic_creates_dirs_and_converts_numpy(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.json"
    obj = {"score": np.float32(0.5), "n": np.int64(3), "box": np.arange(4), "rle": b"abc"}
    assert write_json_atomic(obj, path) == path
    assert json.loads(path.read_text()) == {"score": 0.5, "n": 3, "box": [0, 1, 2, 3], "rle": "abc"}
    assert os.listdir(path.parent) == ["out.json"]


@pytest.mark.parametrize("bad", [object(), float("nan")], ids=["object", "nan"])
def test_failed_write_leaves_no_temp_and_keeps_old_file(bad: object, tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    path.write_text('{"old": true}')
    with pytest.raises((TypeError, ValueError)):
        write_json_atomic({"a": [1, 2, {"b": bad}]}, path)
    assert os.listdir(tmp_path) == ["out.json"]
    assert path.read_text() == '{"old": true}'


def test_write_text_atomic_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "recipe.yaml"
    write_text_atomic("a: 1\n", path)
    assert write_text_atomic("b: ü\n", path) == path
    assert path.read_text(encoding="utf-8") == "b: ü\n" and os.listdir(path.parent) == ["recipe.yaml"]
    with pytest.raises(TypeError):
        write_text_atomic(b"bytes", path)  # type: ignore[arg-type]
    assert path.read_text(encoding="utf-8") == "b: ü\n" and os.listdir(path.parent) == ["recipe.yaml"]


def test_save_coco_round_trips_and_refuses_invalid(val: dict, tmp_path: Path) -> None:
    path = save_coco(val, tmp_path / "copy.json")
    assert load_coco(path) == val
    bad = tiny()
    bad["annotations"][0]["category_id"] = 99
    with pytest.raises(CocoFormatError, match=r"bad\.json: annotation 10 \(image 1\): 'category_id' 99"):
        save_coco(bad, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


# ---------------------------------------------------------------------------------------------
# masks


def test_masks_equal_pycocotools_on_every_val_annotation(val: dict) -> None:
    coco = pycoco(copy.deepcopy(val))
    sizes = {im["id"]: (im["height"], im["width"]) for im in val["images"]}
    kinds = set()
    for ann in val["annotations"]:
        kinds.add(type(ann["segmentation"]).__name__)
        mask = ann_to_mask(ann, *sizes[ann["image_id"]])
        assert mask.dtype == bool
        np.testing.assert_array_equal(mask, coco.annToMask(ann).astype(bool), err_msg=str(ann["id"]))
    assert kinds == {"list", "dict"}


def test_crowd_uncompressed_rle_decodes(val: dict) -> None:
    sizes = {im["id"]: (im["height"], im["width"]) for im in val["images"]}
    crowd = [a for a in val["annotations"] if a["iscrowd"]]
    assert len(crowd) == 5 and all(isinstance(a["segmentation"]["counts"], list) for a in crowd)
    for ann in crowd:
        h, w = sizes[ann["image_id"]]
        mask = ann_to_mask(ann, h, w)
        assert mask.shape == (h, w)
        assert mask.sum() == sum(ann["segmentation"]["counts"][1::2])  # odd runs are foreground
        rle = ann_to_rle(ann, h, w)
        assert isinstance(rle["counts"], bytes) and rle["size"] == [h, w]


def test_compressed_rle_str_and_bytes_decode_like_pycocotools(val: dict) -> None:
    sizes = {im["id"]: (im["height"], im["width"]) for im in val["images"]}
    anns = val["annotations"][:40] + [a for a in val["annotations"] if a["iscrowd"]]
    compressed = []
    for ann in anns:
        rle = mask_to_rle(ann_to_mask(ann, *sizes[ann["image_id"]]))
        assert isinstance(rle["counts"], str)
        compressed.append(dict(ann, segmentation=rle))
    coco = pycoco(dict(val, annotations=compressed))
    for ann, orig in zip(compressed, anns):
        h, w = sizes[ann["image_id"]]
        expected = coco.annToMask(ann).astype(bool)
        np.testing.assert_array_equal(ann_to_mask(ann, h, w), expected)
        as_bytes = dict(ann, segmentation=dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode()))
        np.testing.assert_array_equal(ann_to_mask(as_bytes, h, w), expected)
        np.testing.assert_array_equal(expected, ann_to_mask(orig, h, w))


REAL_100 = Path(__file__).parent / "data" / "real" / "cocoapi_val2014_100"


def _runs_of(mask: np.ndarray) -> list[int]:
    """Run lengths of a mask in pycocotools' column-major order, starting with a run of zeros."""
    flat = mask.ravel(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.r_[0, edges, flat.size]).tolist()
    return [0] + runs if flat.size and flat[0] else runs


def test_compressed_runs_equal_pycocotools_decoding_on_real_masks(val: dict) -> None:
    """The COCO API's fake segm results and every crowd RLE of coco_mini val, compressed by pycocotools."""
    rles = [d["segmentation"] for d in json.loads((REAL_100 / "instances_val2014_fakesegm100_results.json").read_text())]
    for a in val["annotations"]:
        if isinstance(a["segmentation"], dict):
            h, w = a["segmentation"]["size"]
            rles.append(mask_utils.frPyObjects(a["segmentation"], h, w))
    assert len(rles) > 700
    runs, offsets, ok = compressed_rle_runs([r["counts"] for r in rles])
    assert ok.all()
    for i, rle in enumerate(rles):
        assert runs[offsets[i]:offsets[i + 1]].tolist() == _runs_of(mask_utils.decode(rle))
    h, w = rles[0]["size"]
    assert compressed_rle_sums([rles[0]["counts"]]).tolist() == [h * w]


@pytest.mark.parametrize("counts, total", [
    ("0", 0),  # one empty run: pycocotools "decodes" it into uninitialised memory
    ("", 0),
    ("1", 1),
    ("hello world", -1),  # ' ' is outside '0'..'o'
    ("PP", -1),  # 'P' says another digit follows: cut off
    ("0é1", -1),
    ("p0", -1),  # 'p' is past 'o'
    ("]]]]]]]]0", -1),  # a value of 9 digits: more than a uint32 run length needs
    ("0@", -1),  # second run -16
])
def test_bad_compressed_counts_are_found(counts: str, total: int) -> None:
    assert compressed_rle_sums([counts]).tolist() == [total]


def test_batch_parse_equals_one_by_one() -> None:
    masks = [np.zeros((5, 7), np.uint8), np.ones((5, 7), np.uint8), (np.arange(35).reshape(5, 7) % 3 == 0)]
    good = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"] for m in masks]
    batch = good + ["0", "PP", b"", good[2].decode()]
    runs, offsets, ok = compressed_rle_runs(batch)
    for i, s in enumerate(batch):
        one_runs, one_offsets, one_ok = compressed_rle_runs([s])
        assert ok[i] == one_ok[0]
        if one_ok[0]:
            assert runs[offsets[i]:offsets[i + 1]].tolist() == one_runs.tolist()
    assert compressed_rle_sums(batch).tolist() == [35, 35, 35, 0, -1, 0, 35]


def _encode(runs: list[int]) -> str:
    """pycocotools' rleToString in Python integers, for any run lengths (negative, 2**32 and beyond too)."""
    out = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        while True:
            c, x = x & 0x1F, x >> 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr(48 + (c | 0x20 if more else c)))
            if not more:
                break
    return "".join(out)


def _pycocotools_sum(s: str) -> int:
    """pycocotools' rleFrString in Python integers: the runs' sum, -1 for a string it does not write
    (a character outside '0'..'o', a value cut off or longer than 7 characters, a run outside [0, 2**32))."""
    runs: list[int] = []
    p = 0
    while p < len(s):
        x = k = 0
        more = True
        while more:
            if p == len(s) or not 0 <= ord(s[p]) - 48 <= 63:
                return -1
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            p, k, more = p + 1, k + 1, bool(c & 0x20)
        if c & 0x10:
            x -= 1 << (5 * k)
        x += runs[-2] if len(runs) > 2 else 0
        if k > 7 or not 0 <= x < 2**32:
            return -1
        runs.append(x)
    return sum(runs)


@pytest.mark.parametrize("batch_chars", [1 << 20, 40])
def test_rle_sums_equal_pycocotools_decoding_on_random_and_broken_strings(
        monkeypatch: pytest.MonkeyPatch, batch_chars: int) -> None:
    """Every string's sum, or its refusal, is what pycocotools' own decoding in exact integers gives:
    negative runs, runs of 2**32 and more, over-long values, bad characters and cut-off values."""
    monkeypatch.setattr("ovis.data.coco._BATCH_CHARS", batch_chars)  # 40: many small batches
    rng = np.random.default_rng(0)
    pools = [np.arange(0, 40), np.arange(2**32 - 3, 2**32 + 3), np.arange(-5, 0), 2 ** np.arange(30, 37)]
    strings = []
    for _ in range(3000):
        runs = [int(rng.choice(pools[rng.choice(4, p=[0.85, 0.05, 0.05, 0.05])])) for _ in range(rng.integers(0, 12))]
        s = _encode(runs)
        if s and rng.random() < 0.3:  # break it: replace, drop or add a character
            i = int(rng.integers(len(s)))
            s = s[:i] + rng.choice(list("0@Po\x7fpé ")) * int(rng.integers(0, 3)) + s[i + int(rng.integers(0, 2)):]
        strings.append(s)
    expected = [_pycocotools_sum(s) for s in strings]
    assert 0.3 < np.mean(np.array(expected) >= 0) < 0.9  # both kinds are well represented
    assert compressed_rle_sums(strings).tolist() == expected
    assert compressed_rle_sums([s.encode() for s in strings[:50]]).tolist() == expected[:50]
    runs, offsets, ok = compressed_rle_runs(strings)
    assert ok.tolist() == [e >= 0 for e in expected]
    assert [int(runs[a:b].sum()) for a, b, good in zip(offsets[:-1], offsets[1:], ok) if good] == [e for e in expected if e >= 0]


def test_masks_to_rles_matches_per_mask_encoding_and_is_json() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((5, 17, 23)) > 0.6
    rles = masks_to_rles(masks)
    json.dumps(rles)
    assert [r["size"] for r in rles] == [[17, 23]] * 5
    for m, rle in zip(masks, rles):
        assert rle == mask_to_rle(m)
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), m)
    assert masks_to_rles(np.zeros((0, 4, 4), bool)) == []
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        masks_to_rles(masks[0])


def _cols(x0: int, x1: int, h: int = 10, w: int = 10) -> dict:
    """Compressed RLE (str counts) of the columns x0..x1 of an h×w image."""
    m = np.zeros((h, w), bool)
    m[:, x0:x1] = True
    return mask_to_rle(m)


def test_mask_iou_equals_pycocotools_plain_iou_even_for_a_crowd_gt() -> None:
    dt = [_cols(0, 4), _cols(0, 8), _cols(2, 6), _cols(8, 10)]
    dt[1] = {**dt[1], "counts": dt[1]["counts"].encode("ascii")}  # str and bytes counts alike
    # a COCO crowd region: uncompressed RLE of columns 0..5 (column-major runs), iscrowd 1
    crowd = {"id": 7, "image_id": 1, "iscrowd": 1, "segmentation": {"size": [10, 10], "counts": [0, 50, 50]}}
    gt = [_cols(0, 4), ann_to_rle(crowd, 10, 10)]
    iou = mask_iou(dt, gt)
    assert iou.shape == (4, 2) and iou.dtype == np.float64
    np.testing.assert_array_equal(iou, mask_utils.iou(dt, gt, [0, 0]))
    np.testing.assert_allclose(iou, [[1, 0.8], [0.5, 5 / 8], [1 / 3, 0.5], [0, 0]])
    # the crowd flag is not applied (callers drop crowd GT): pycocotools' crowd IoU is intersection / dt area
    assert mask_utils.iou(dt, gt, [0, 1])[0, 1] == 1.0 != iou[0, 1]


def test_mask_iou_with_an_empty_side_is_an_empty_matrix_of_zeros() -> None:
    assert mask_iou([_cols(0, 4), _cols(2, 6)], []).shape == (2, 0)
    assert mask_iou([], [_cols(0, 4)]).shape == (0, 1)
    assert mask_iou([], []).shape == (0, 0)


@pytest.mark.parametrize("dt, gt, match", [
    ([_cols(0, 4)], [_cols(0, 4, w=12)], r"gt\[0\] has size \[10, 12\], not \[10, 10\]"),
    ([_cols(0, 4), _cols(0, 4, h=9)], [], r"dt\[1\] has size \[9, 10\]"),
    ([[[0, 0, 4, 0, 4, 10]]], [_cols(0, 4)], r"dt\[0\] must be a compressed RLE.*got list"),
    ([_cols(0, 4)], [{"size": [10, 10], "counts": [0, 50, 50]}], r"gt\[0\] must be a compressed RLE"),
])
def test_mask_iou_refuses_masks_of_other_sizes_and_non_compressed_rles(dt, gt, match) -> None:
    with pytest.raises(ValueError, match=match):
        mask_iou(dt, gt)


def test_mask_boxes_equal_pycocotools_boxes_of_real_masks_and_zero_when_empty(val: dict) -> None:
    sizes = {im["id"]: (im["height"], im["width"]) for im in val["images"]}
    image_id = val["annotations"][0]["image_id"]
    anns = [a for a in val["annotations"] if a["image_id"] == image_id]
    masks = np.stack([ann_to_mask(a, *sizes[image_id]) for a in anns] + [np.zeros(sizes[image_id], bool)])
    expected = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))))
    boxes = mask_boxes(masks)
    assert boxes.dtype == np.float32 and boxes.shape == (len(anns) + 1, 4)
    np.testing.assert_array_equal(boxes, expected)
    np.testing.assert_array_equal(boxes[-1], 0)


def test_match_counts_are_gt_covered_and_detections_covering() -> None:
    iou = np.array([[0.9, 0.6, 0.0], [0.5, 0.1, 0.0], [0.2, 0.49, 0.0], [0.0, 0.0, 0.0]])
    assert match_counts(iou) == (2, 2)  # GT 0 and 1 covered; detections 0 and 1 cover some GT
    assert match_counts(iou, 0.7) == (1, 1)
    assert match_counts(np.zeros((3, 0))) == match_counts(np.zeros((0, 2))) == (0, 0)
    with pytest.raises(ValueError, match=r"\[D, G\]"):
        match_counts(np.zeros(3))


# ---------------------------------------------------------------------------------------------
# dataset


def _anns_of(path: Path, image_id: int) -> list[dict]:
    return [a for a in json.loads(path.read_text())["annotations"] if a["image_id"] == image_id]


def test_item_shapes_dtypes_and_values(val8: Path) -> None:
    ds = CocoDetection(val8, VAL_IMAGES)
    assert len(ds) == 8 and ds.ids[0] == json.loads(val8.read_text())["images"][0]["id"]
    index = ds.ids.index(229358)
    image, target = ds[index]
    anns = _anns_of(val8, 229358)
    n = len(anns)
    assert n == 10
    assert image.dtype == torch.float32 and image.shape == (3, 423, 640)
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.max() > 0.5
    assert target["image_id"] == 229358
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (n, 4)
    assert target["labels"].dtype == torch.int64 and target["labels"].shape == (n,)
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (n, 423, 640)
    assert target["iscrowd"].dtype == torch.int64 and target["iscrowd"].tolist() == [0] * n
    assert target["area"].dtype == torch.float32
    assert target["pseudo"].dtype == torch.bool and not target["pseudo"].any()
    assert target["scores"].tolist() == [1.0] * n
    xywh = torch.tensor([a["bbox"] for a in anns])
    assert torch.allclose(target["boxes"], torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1))
    assert target["labels"].tolist() == [ds.cat_id_to_label[a["category_id"]] for a in anns]
    for mask, ann in zip(target["masks"], anns):
        np.testing.assert_array_equal(mask.numpy().astype(bool), ann_to_mask(ann, 423, 640))
    # every mask lies inside its box (COCO boxes are the polygons' extents)
    cols, rows = target["masks"].bool().any(1), target["masks"].bool().any(2)  # [N, W], [N, H]
    first = lambda on: on.int().argmax(1)  # noqa: E731
    extent = torch.stack([first(cols), first(rows), 640 - first(cols.flip(1)), 423 - first(rows.flip(1))], 1)
    assert (extent[:, :2] >= target["boxes"][:, :2].floor() - 1).all()
    assert (extent[:, 2:] <= target["boxes"][:, 2:].ceil() + 1).all()


def test_default_labels_follow_sorted_category_ids(val8: Path) -> None:
    ds = CocoDetection(val8, VAL_IMAGES, with_masks=False)
    cat_ids = sorted(c["id"] for c in json.loads(val8.read_text())["categories"])
    assert ds.cat_id_to_label == {c: i + 1 for i, c in enumerate(cat_ids)}
    assert ds.label_to_cat_id == {i + 1: c for i, c in enumerate(cat_ids)}
    assert ds.num_classes == 80
    assert "masks" not in ds[0][1]


def test_category_subset_makes_other_classes_background(val8: Path) -> None:
    ds = CocoDetection(val8, VAL_IMAGES, category_ids=[44, 1])  # bottle, person
    assert ds.cat_id_to_label == {44: 1, 1: 2} and ds.label_to_cat_id == {1: 44, 2: 1}
    assert len(ds) == 8  # images without those classes stay unless skip_empty
    _, target = ds[ds.ids.index(229358)]
    anns = [a for a in _anns_of(val8, 229358) if a["category_id"] in (1, 44)]
    assert 0 < len(anns) < 10
    assert target["labels"].tolist() == [{44: 1, 1: 2}[a["category_id"]] for a in anns]
    assert target["masks"].shape[0] == len(anns)
    _, empty = ds[ds.ids.index(802)]  # oven + refrigerator only
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 640, 424)
    kept = CocoDetection(val8, VAL_IMAGES, category_ids=[44, 1], skip_empty=True)
    with_cats = {a["image_id"] for a in json.loads(val8.read_text())["annotations"] if a["category_id"] in (1, 44)}
    assert set(kept.ids) == with_cats and 802 not in kept.ids


def test_class_agnostic_labels_are_all_one(val8: Path) -> None:
    ds = CocoDetection(val8, VAL_IMAGES, class_agnostic=True, with_masks=False)
    labels = torch.cat([ds[i][1]["labels"] for i in range(len(ds))])
    assert len(labels) == 37 and labels.unique().tolist() == [1]  # every val8 annotation
    assert ds.num_classes == 1 and set(ds.cat_id_to_label.values()) == {1}


def test_unknown_category_id_is_refused(val8: Path) -> None:
    with pytest.raises(ValueError, match=r"category ids \[12\] are not in"):
        CocoDetection(val8, VAL_IMAGES, category_ids=[1, 12])


def test_min_size_drops_small_images(val8: Path) -> None:
    ds = CocoDetection(val8, VAL_IMAGES, min_size=350, with_masks=False)
    assert 11813 not in ds.ids and len(ds) == 7  # 11813 is 333 px wide


def _with_extra(val8: Path, tmp_path: Path, extra: list[dict]) -> Path:
    data = json.loads(val8.read_text())
    data["annotations"] += extra
    return save_coco(data, tmp_path / "extra.json")


def test_crowd_dropped_for_training_kept_when_asked(val8: Path, tmp_path: Path) -> None:
    mask = np.zeros((640, 424), np.uint8)
    mask[100:200, 50:150] = 1
    counts = _uncompressed_counts(mask)
    assert mask_utils.decode(mask_utils.frPyObjects({"size": [640, 424], "counts": counts}, 640, 424)).sum() == 10000
    crowd = {"id": 1, "image_id": 802, "category_id": 1, "iscrowd": 1, "bbox": [50, 100, 100, 100],
             "area": 10000.0, "segmentation": {"size": [640, 424], "counts": counts}}
    path = _with_extra(val8, tmp_path, [crowd])
    n_gt = len(_anns_of(val8, 802))
    train_ds = CocoDetection(path, VAL_IMAGES)
    _, train = train_ds[train_ds.ids.index(802)]
    assert len(train["boxes"]) == n_gt and train["iscrowd"].sum() == 0
    ds = CocoDetection(path, VAL_IMAGES, drop_crowd=False)
    _, target = ds[ds.ids.index(802)]
    assert target["iscrowd"].tolist() == [0] * n_gt + [1]
    np.testing.assert_array_equal(target["masks"][-1].numpy(), mask)
    assert target["boxes"][-1].tolist() == [50, 100, 150, 200]


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """Column-major run lengths starting with a 0-run, as COCO crowd annotations store them."""
    flat = np.asfortranarray(mask).ravel(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0] + runs


def test_pseudo_annotations_carry_scores_and_degenerate_boxes_drop(val8: Path, tmp_path: Path) -> None:
    poly = [[10, 10, 60, 10, 60, 40, 10, 40]]
    pseudo = {"id": 2, "image_id": 802, "category_id": 1, "iscrowd": 0, "bbox": [10, 10, 50, 30], "area": 1500.0,
              "segmentation": poly, "pseudo": True, "score": 0.25}
    sliver = {"id": 3, "image_id": 802, "category_id": 1, "iscrowd": 0, "bbox": [10, 10, 0.8, 30], "area": 20.0,
              "segmentation": [[10, 10, 10.8, 10, 10.8, 40]]}
    outside = {"id": 4, "image_id": 802, "category_id": 1, "iscrowd": 0, "bbox": [423.5, 10, 20, 30], "area": 20.0,
               "segmentation": [[423.5, 10, 443, 10, 443, 40]]}
    path = _with_extra(val8, tmp_path, [pseudo, sliver, outside])
    ds = CocoDetection(path, VAL_IMAGES)
    _, target = ds[ds.ids.index(802)]
    n_gt = len(_anns_of(val8, 802))
    assert target["pseudo"].tolist() == [False] * n_gt + [True]
    assert target["scores"].tolist() == [1.0] * n_gt + [0.25]
    assert target["boxes"][-1].tolist() == [10, 10, 60, 40]


def test_missing_image_file_names_file_and_image_id(val8: Path, tmp_path: Path) -> None:
    ds = CocoDetection(val8, tmp_path)
    with pytest.raises(CocoFormatError) as info:
        ds[0]
    assert str(val8) in str(info.value)
    first = ds.coco["images"][0]
    assert f"image {first['id']}: file {tmp_path / first['file_name']} not found" in str(info.value)


def test_flip_transform_in_dataset_mirrors_boxes_and_masks(val8: Path) -> None:
    plain = CocoDetection(val8, VAL_IMAGES)
    flipped = CocoDetection(val8, VAL_IMAGES, transforms=RandomHorizontalFlip(1.0))
    index = plain.ids.index(229358)
    image, target = plain[index]
    image_f, target_f = flipped[index]
    assert torch.equal(image_f, image.flip(-1))
    assert torch.equal(target_f["masks"], target["masks"].flip(-1))
    boxes = target["boxes"]
    assert torch.equal(target_f["boxes"][:, [0, 2]], 640 - boxes[:, [2, 0]])
    assert torch.equal(target_f["boxes"][:, [1, 3]], boxes[:, [1, 3]])


def test_collate_fn_with_dataloader(val8: Path) -> None:
    ds = CocoDetection(val8, VAL_IMAGES, with_masks=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_fn)
    images, targets = next(iter(loader))
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 3
    assert [t["image_id"] for t in targets] == ds.ids[:3]
    assert images[1].shape[1:] == (ds.coco["images"][1]["height"], ds.coco["images"][1]["width"])
