"""Bad input is refused, on one line, and leaves every output folder exactly as it was.

Each case corrupts one real COCO file of tests/data (or the recipe, a split file or a checkpoint of a
run folder) and runs an ``ovis`` command on it in-process: the exit code is not 0, standard error
has one or two lines naming the file, the entry (id or index) and the field, there is no traceback,
and the bytes under the output folders are unchanged. The corruptions are made by one generic
mutator from tables of fields and bad values, not written case by case.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from pycocotools import mask as mask_utils

from ovis.cli import main
from ovis.config import load_recipe
from ovis.data.coco import is_coco_id
from ovis.data.splits import write_splits
from ovis.methods.ggn import affinity_net

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

REAL = Path(__file__).parent / "data" / "real"
MINI = REAL / "coco_mini"
TRAIN = MINI / "annotations" / "instances_train2017.json"
VAL = MINI / "annotations" / "instances_val2017.json"
CAPTIONS = MINI / "annotations" / "captions_train2017.json"
GT100 = REAL / "cocoapi_val2014_100" / "instances_val2014_100.json"
SEGM100 = REAL / "cocoapi_val2014_100" / "instances_val2014_fakesegm100_results.json"
BBOX100 = REAL / "cocoapi_val2014_100" / "instances_val2014_fakebbox100_results.json"
RECIPES = Path(__file__).parent.parent / "ovis" / "recipes"

DELETE = object()  # "remove the key" in a table of bad values
NAN, INF = float("nan"), float("inf")

# --------------------------------------------------------------------------------------------
# the mutator: (label, change) pairs per field; a change is a value, DELETE, or a function of the entry


WRONG_TYPES = {"string": "7", "list": [7], "dict": {"v": 7}, "null": None, "bool": True}
ID_BAD = {"deleted": DELETE, **WRONG_TYPES, "float": 2.5, "nan": NAN, "huge": 10**30}
SIZE_BAD = {"deleted": DELETE, "string": "640", "null": None, "bool": True, "nan": NAN, "inf": INF,
            "negative": -480, "zero": 0, "float": 480.5, "huge": 10**10}
NAME_BAD = {"deleted": DELETE, "empty": "", "blank": "   ", "null": None, "number": 7, "list": ["x"]}
REF_BAD = {"deleted": DELETE, "string": "7", "null": None, "list": [7], "bool": True, "float": 1.5,
           "dangling": 987654321, "negative": -1}


def _bbox_mut(f: Callable[[list], Any]) -> Callable[[dict], Any]:
    return lambda entry: f(list(entry["bbox"]))


BBOX_BAD = {
    "deleted": DELETE, "string": "1 2 3 4", "null": None, "dict": {"x": 1}, "three values": _bbox_mut(lambda b: b[:3]),
    "nan x": _bbox_mut(lambda b: [NAN, *b[1:]]), "inf w": _bbox_mut(lambda b: [b[0], b[1], INF, b[3]]),
    "negative w": _bbox_mut(lambda b: [b[0], b[1], -b[2], b[3]]), "zero h": _bbox_mut(lambda b: [*b[:3], 0]),
    "huge x": _bbox_mut(lambda b: [1e9, *b[1:]]), "string y": _bbox_mut(lambda b: [b[0], "5", *b[2:]]),
    "bool w": _bbox_mut(lambda b: [b[0], b[1], True, b[3]]),
}
AREA_BAD = {"deleted": DELETE, "string": "12", "null": None, "negative": -5.0, "nan": NAN, "inf": INF, "bool": True, "list": [3]}
ISCROWD_BAD = {"deleted": DELETE, "two": 2, "negative": -1, "string": "0", "null": None, "bool": False, "float": 0.5}


def _rle(entry: dict, image: dict, counts: Callable[[str], Any] | None = None, size: Any = DELETE) -> dict:
    """A compressed RLE of the entry's box on its image, with its counts and size changed as asked."""
    h, w = image["height"], image["width"]
    x, y, bw, bh = entry["bbox"]
    rle = mask_utils.frPyObjects([[x, y, x + bw, y, x + bw, y + bh, x, y + bh]], h, w)[0]
    good = rle["counts"].decode()
    out: dict = {"size": [h, w] if size is DELETE else size(h, w), "counts": counts(good) if counts else good}
    return {k: v for k, v in out.items() if v is not DELETE}


def _segm_bad() -> dict[str, Callable[[dict, dict], Any]]:
    """Bad segmentations, functions of (annotation or detection, its image)."""
    return {
        "deleted": DELETE,  # the files have masks: each annotation needs one
        "null": None,
        "string": lambda e, im: "polygon",
        "number": lambda e, im: 7,
        "empty polygon list": lambda e, im: [],
        "polygon nan": lambda e, im: [[1, 1, NAN, 1, 5, 5]],
        "polygon two points": lambda e, im: [[1, 1, 5, 5]],
        "polygon odd": lambda e, im: [[1, 1, 5, 1, 5, 5, 1]],
        "polygon string": lambda e, im: [[1, 1, "5", 1, 5, 5]],
        "polygon huge": lambda e, im: [[1, 1, 1e12, 1, 5, 5]],
        "rle counts '0'": lambda e, im: _rle(e, im, lambda s: "0"),
        "rle counts empty": lambda e, im: _rle(e, im, lambda s: ""),
        "rle counts garbage": lambda e, im: _rle(e, im, lambda s: "hello world!"),
        "rle counts half": lambda e, im: _rle(e, im, lambda s: s[: len(s) // 2].rstrip("PQRSTUVWXYZ[\\]^_`abcdefghijklmno")),
        "rle counts cut in a value": lambda e, im: _rle(e, im, lambda s: s + "P"),
        "rle counts non-ascii": lambda e, im: _rle(e, im, lambda s: s[:-1] + "é"),
        "rle counts null": lambda e, im: _rle(e, im, lambda s: None),
        "rle counts dict": lambda e, im: _rle(e, im, lambda s: {"c": s}),
        "rle counts deleted": lambda e, im: _rle(e, im, lambda s: DELETE),
        "rle counts negative list": lambda e, im: _rle(e, im, lambda s: [im["height"] * im["width"] + 5, -5]),
        "rle counts short list": lambda e, im: _rle(e, im, lambda s: [3, 4]),
        "rle size swapped": lambda e, im: _rle(e, im, size=lambda h, w: [w + 1, h]),
        "rle size deleted": lambda e, im: _rle(e, im, size=lambda h, w: DELETE),
        "rle size string": lambda e, im: _rle(e, im, size=lambda h, w: f"{h}x{w}"),
    }


@dataclass(frozen=True)
class Corruption:
    """One corrupted input file. ``change`` turns the parsed JSON into ``(bad JSON, words)``, the words the
    error must contain besides the file name (the entry's id or index, the field); with ``raw`` it turns
    the file's bytes into bad bytes (the error need only name the file)."""

    label: str
    change: Callable[[Any], Any]
    raw: bool = False


def _set(entry: dict, field: str, value: Any, image: dict | None) -> None:
    if value is DELETE:
        del entry[field]
    elif callable(value):
        entry[field] = value(entry, image) if image is not None else value(entry)
    else:
        entry[field] = value


def _field_cases(section: str, kind: str, field: str, bad: dict, pick: Callable[[dict], int],
                 id_of: Callable[[dict, int], str], with_image: bool = False) -> Iterator[Corruption]:
    """One corruption per bad value of ``section[i][field]``, ``i = pick(data)``."""
    for label, value in bad.items():
        def change(data: Any, value: Any = value) -> Any:
            i = pick(data)
            entry = data[section][i]
            image = _image_of(data, entry) if with_image else None
            _set(entry, field, value, image)
            return data, (id_of(entry, i), field)

        yield Corruption(f"{kind}.{field} {label}", change)


def _image_of(data: dict, entry: dict) -> dict:
    return next(im for im in data["images"] if im["id"] == entry["image_id"])


def _middle(section: str) -> Callable[[dict], int]:
    return lambda data: len(data[section]) // 2


def _first(section: str, test: Callable[[dict], bool]) -> Callable[[dict], int]:
    return lambda data: next(i for i, e in enumerate(data[section]) if test(e))


def _entry_id(kind: str) -> Callable[[dict, int], str]:
    """The words naming an entry: ``image 7`` or, for an entry whose id is the corrupted field, its index."""
    return lambda entry, i: f"{kind} {entry['id']}" if is_coco_id(entry.get("id")) else f"index {i}"


def _duplicate(section: str, kind: str) -> Corruption:
    def change(data: dict) -> dict:
        a, b = data[section][0], data[section][len(data[section]) // 2]
        b["id"] = a["id"]
        return data, (f"{kind} {a['id']}", "id")

    return Corruption(f"{kind}.id duplicate", change)


def instances_cases(file_names_required: bool) -> list[Corruption]:
    """Every corruption of a COCO instances file."""
    cases: list[Corruption] = []
    image_bad = {"width": SIZE_BAD, "height": SIZE_BAD,
                 "file_name": {k: v for k, v in {**NAME_BAD, "dict": {"a": 1}}.items()
                               if file_names_required or k != "deleted"}}
    cases += _field_cases("images", "image", "id", ID_BAD, _middle("images"), _entry_id("image"))
    for field, bad in image_bad.items():
        cases += _field_cases("images", "image", field, bad, _middle("images"), _entry_id("image"))
    cases.append(_duplicate("images", "image"))
    ann = _middle("annotations")
    cases += _field_cases("annotations", "annotation", "id", ID_BAD, ann, _entry_id("annotation"))
    cases.append(_duplicate("annotations", "annotation"))
    for field, bad in (("image_id", REF_BAD), ("category_id", REF_BAD), ("bbox", BBOX_BAD), ("area", AREA_BAD),
                       ("iscrowd", ISCROWD_BAD)):
        cases += _field_cases("annotations", "annotation", field, bad, ann, _entry_id("annotation"))
    cases += _field_cases("annotations", "annotation", "segmentation", _segm_bad(), ann, _entry_id("annotation"),
                          with_image=True)
    crowd = _first("annotations", lambda a: isinstance(a.get("segmentation"), dict))
    cases += _field_cases("annotations", "annotation crowd", "segmentation",
                          {"rle counts short list": lambda e, im: dict(e["segmentation"], counts=[1, 2]),
                           "rle counts negative": lambda e, im: dict(e["segmentation"],
                                                                     counts=[-1] + e["segmentation"]["counts"][1:])},
                          crowd, _entry_id("annotation"), with_image=True)
    cat = _middle("categories")
    cases += _field_cases("categories", "category", "id", ID_BAD, cat, _entry_id("category"))
    cases.append(_duplicate("categories", "category"))
    cases += _field_cases("categories", "category", "name", NAME_BAD, cat, _entry_id("category"))
    cases += _field_cases("categories", "category", "supercategory", {"list": ["x"], "number": 3, "dict": {}},
                          cat, _entry_id("category"))
    cases += _entry_not_object("images", "image") + _entry_not_object("annotations", "annotation")
    cases += _entry_not_object("categories", "category")
    cases += file_cases(top_level=[], sections=("images", "categories"), section_types=("images", "annotations",
                                                                                       "categories"))
    return cases


def _entry_not_object(section: str, kind: str) -> list[Corruption]:
    def change(data: dict) -> dict:
        i = len(data[section]) // 2
        data[section][i] = [data[section][i]]
        return data, (f"index {i}",)

    return [Corruption(f"{kind} not an object", change)]


def file_cases(top_level: Any, sections: tuple[str, ...] = (), section_types: tuple[str, ...] = ()) -> list[Corruption]:
    """Corruptions of the whole file: bytes that are not JSON, a wrong top level, missing or mistyped sections."""
    cases = [
        Corruption("file truncated", lambda b: b[: len(b) * 2 // 3], raw=True),
        Corruption("file empty", lambda b: b"", raw=True),
        Corruption("file not UTF-8", lambda b: b[:100] + b"\xff\xfe\x80" + b[100:], raw=True),
        Corruption("file top level wrong type", lambda data: (top_level, ())),
        Corruption("file NaN literal", lambda b: b.replace(b"[", b"[NaN, ", 1) if b.startswith(b"[")
                   else b.replace(b'"id"', b'"id": NaN, "x"', 1), raw=True),
    ]
    for key in sections:
        cases.append(Corruption(f"file no '{key}'",
                                lambda data, key=key: ({k: v for k, v in data.items() if k != key}, (key,))))
    for key in section_types:
        cases.append(Corruption(f"file '{key}' not a list",
                                lambda data, key=key: ({**data, key: {"0": data[key]}}, (key,))))
    return cases


def captions_cases() -> list[Corruption]:
    cases: list[Corruption] = []
    ann = _middle("annotations")
    cap_id = _entry_id("annotation")
    cases += _field_cases("annotations", "caption", "caption", {**NAME_BAD, "dict": {}}, ann, cap_id)
    cases += _field_cases("annotations", "caption", "image_id", REF_BAD, ann, cap_id)
    cases += _field_cases("annotations", "caption", "id", ID_BAD, ann, cap_id)
    cases.append(_duplicate("annotations", "annotation"))
    cases += _field_cases("images", "caption image", "id", ID_BAD, _middle("images"), _entry_id("image"))
    cases += _entry_not_object("annotations", "caption")
    cases += file_cases(top_level=[], sections=("annotations",), section_types=("annotations", "images"))
    return cases


def detection_cases(iou_type: str) -> list[Corruption]:
    index = lambda d, i: f"[{i}]"  # noqa: E731 - detections have no id: the error names the index
    det = lambda data: len(data) // 2  # noqa: E731

    def fields(field: str, bad: dict, with_image: bool = False) -> Iterator[Corruption]:
        for label, value in bad.items():
            def change(data: list, value: Any = value) -> list:
                i = det(data)
                image = {"height": 0, "width": 0}
                if with_image:
                    image = next(im for im in json.loads(GT100.read_text())["images"] if im["id"] == data[i]["image_id"])
                if with_image and "bbox" not in data[i]:  # segm results carry no box: the mask's
                    data[i]["bbox"] = mask_utils.toBbox(data[i]["segmentation"]).tolist()
                _set(data[i], field, value, image if with_image else None)
                return data, (index(data[i], i), field)

            yield Corruption(f"detection.{field} {label}", change)

    cases = list(fields("image_id", REF_BAD)) + list(fields("category_id", REF_BAD))
    cases += fields("score", {"deleted": DELETE, "string": "0.9", "null": None, "nan": NAN, "inf": INF, "bool": True,
                              "list": [0.9]})
    if iou_type == "bbox":
        cases += fields("bbox", {k: v for k, v in BBOX_BAD.items() if k not in ("zero h", "huge x")})
    else:
        segm = {k: v for k, v in _segm_bad().items() if not k.startswith("polygon") and k != "empty polygon list"}
        cases += fields("segmentation", {"deleted": DELETE, "polygon": lambda e, im: [[1, 1, 5, 1, 5, 5]], **segm},
                        with_image=True)

    def not_object(data: list) -> tuple[list, tuple[str, ...]]:
        data[det(data)] = 7
        return data, (f"[{det(data)}]",)

    cases.append(Corruption("detection not an object", not_object))
    cases += file_cases(top_level={"annotations": []})
    return cases


def write_corrupt(src: Path, dst: Path, case: Corruption) -> tuple[str, ...]:
    """Write ``src`` corrupted by ``case`` to ``dst``; return the words its error must name."""
    if case.raw:
        dst.write_bytes(case.change(src.read_bytes()))
        return ()
    data, names = case.change(json.loads(src.read_text()))
    dst.write_text(json.dumps(data))  # NaN and Infinity are written as Python's json writes them
    return names


# --------------------------------------------------------------------------------------------
# the check


def tree_digest(*folders: Path) -> str:
    """Digest of every name and byte under ``folders`` (a missing folder counts too)."""
    h = hashlib.sha256()
    for folder in folders:
        h.update(f"{folder}:{folder.exists()}\n".encode())
        for p in sorted(folder.rglob("*")) if folder.exists() else ():
            h.update(f"{p.relative_to(folder)}\n".encode())
            if p.is_file():
                h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def assert_refused(argv: list[str], capsys: pytest.CaptureFixture, outputs: list[Path], names: tuple[str, ...],
                   file: str | None) -> str:
    """``ovis argv`` exits non-zero with one or two lines on stderr naming ``file`` and ``names``, no
    traceback, and ``outputs`` unchanged. Returns the error text."""
    before = tree_digest(*outputs)
    rc = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc != 0, f"accepted: {argv}\n{out[-500:]}"
    assert 1 <= len(lines) <= 2, err
    assert "Traceback" not in out + err
    if file is not None:
        assert file in err, err
    for word in names:
        assert word in err, f"{word!r} not in: {err}"
    assert tree_digest(*outputs) == before, f"output changed by: {err}"
    return err


def _ids(cases: list[Corruption]) -> list[str]:
    labels = [c.label for c in cases]
    assert len(set(labels)) == len(labels), "corruption labels must be distinct"
    return labels


# --------------------------------------------------------------------------------------------
# ovis splits


SPLITS_PROTOCOL = "coco_ovr_48_17"


@pytest.fixture(scope="module")
def splits_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding an earlier valid ``ovis splits`` run on coco_mini."""
    out = tmp_path_factory.mktemp("splits") / "out"
    write_splits(SPLITS_PROTOCOL, TRAIN, VAL, out, CAPTIONS)
    return out


INSTANCES = instances_cases(file_names_required=True)
CAPTION_CASES = captions_cases()


def _splits_argv(train: Path, val: Path, captions: Path, out: Path) -> list[str]:
    return ["splits", "--protocol", SPLITS_PROTOCOL, "--train-instances", str(train), "--val-instances", str(val),
            "--train-captions", str(captions), "--out", str(out)]


@pytest.mark.parametrize("case", INSTANCES, ids=_ids(INSTANCES))
def test_splits_refuses_corrupt_instances(case: Corruption, splits_out: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / VAL.name
    names = write_corrupt(VAL, bad, case)
    assert_refused(_splits_argv(TRAIN, bad, CAPTIONS, splits_out), capsys, [splits_out], names, bad.name)


@pytest.mark.parametrize("case", CAPTION_CASES, ids=_ids(CAPTION_CASES))
def test_splits_refuses_corrupt_captions(case: Corruption, splits_out: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / CAPTIONS.name
    names = write_corrupt(CAPTIONS, bad, case)
    assert_refused(_splits_argv(TRAIN, VAL, bad, splits_out), capsys, [splits_out], names, bad.name)


def test_splits_refuses_missing_input_and_keeps_output(splits_out: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "instances_nowhere.json"
    assert_refused(_splits_argv(TRAIN, missing, CAPTIONS, splits_out), capsys, [splits_out], (), missing.name)


# --------------------------------------------------------------------------------------------
# ovis eval


@pytest.fixture(scope="module")
def eval_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding an earlier valid ``ovis eval --out`` of the COCO API's fake bbox results."""
    out = tmp_path_factory.mktemp("eval") / "out"
    assert main(["eval", "--protocol", "coco", "--gt", str(GT100), "--detections", str(BBOX100), "--iou-type", "bbox",
                 "--out", str(out)]) == 0
    return out


# COCOeval reads every GT's area and iscrowd, and its segmentation under segm
GT_ONLY = list(_field_cases("annotations", "gt annotation", "area", {"deleted": DELETE}, _middle("annotations"),
                            _entry_id("annotation")))
GT_ONLY += _field_cases("annotations", "gt annotation", "iscrowd", {"deleted": DELETE}, _middle("annotations"),
                        _entry_id("annotation"))
GT_ONLY += _field_cases("annotations", "gt annotation", "segmentation", {"deleted": DELETE}, _middle("annotations"),
                        _entry_id("annotation"))
GT_CASES = [c for c in instances_cases(file_names_required=False) if "file_name" not in c.label][::4] + GT_ONLY
SEGM_CASES = detection_cases("segm")
BBOX_CASES = detection_cases("bbox")


def _eval_argv(gt: Path, dets: Path, iou_type: str, out: Path) -> list[str]:
    return ["eval", "--protocol", "coco", "--gt", str(gt), "--detections", str(dets), "--iou-type", iou_type,
            "--out", str(out)]


DETECTION_CASES = [(SEGM100, "segm", c) for c in SEGM_CASES] + [(BBOX100, "bbox", c) for c in BBOX_CASES]
DETECTION_IDS = [f"segm:{label}" for label in _ids(SEGM_CASES)] + [f"bbox:{label}" for label in _ids(BBOX_CASES)]


@pytest.mark.parametrize(("source", "iou_type", "case"), DETECTION_CASES, ids=DETECTION_IDS)
def test_eval_refuses_corrupt_detections(source: Path, iou_type: str, case: Corruption, eval_out: Path,
                                         tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / source.name
    names = write_corrupt(source, bad, case)
    assert_refused(_eval_argv(GT100, bad, iou_type, eval_out), capsys, [eval_out], names, bad.name)


@pytest.mark.parametrize("case", GT_CASES, ids=_ids(GT_CASES))
def test_eval_refuses_corrupt_ground_truth(case: Corruption, eval_out: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    """Every fourth instances corruption (the rest run through splits) and the keys only evaluation needs, on
    the COCO API's val2014 file."""
    bad = tmp_path / GT100.name
    names = write_corrupt(GT100, bad, case)
    assert_refused(_eval_argv(bad, BBOX100, "bbox", eval_out), capsys, [eval_out], names, bad.name)


# --------------------------------------------------------------------------------------------
# ovis train, ovis pseudo, ovis reproduce: a GGN recipe on coco_mini and a run folder


def _recipe_data(**changes: Any) -> dict:
    return {
        "extends": str(RECIPES / "ggn_coco.yaml"),
        "name": "bad_inputs_ggn",
        "data": {"root": str(MINI), "demo": False, "train_instances": "annotations/instances_train2017.json",
                 "val_instances": "annotations/instances_val2017.json", "train_captions": None,
                 "train_images": "train2017", "val_images": "val2017"},
        "model": {"backbone": "resnet18", "backbone_weights": None, "decoder_channels": 8, "fpn_channels": 8,
                  "representation_size": 16, "mask_head_channels": 8, "min_size": 64, "max_size": 64},
        "teacher": {"max_iter": 1, "num_workers": 0},
        "student": {"max_iter": 1, "num_workers": 0},
        "pseudo": {"max_images": 1, "workers": 0},
        "launch": {"device": "cpu"},
        **changes,
    }


@pytest.fixture(scope="module")
def ggn_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(recipe file, run folder): the folder holds the valid splits of coco_mini and a teacher checkpoint
    that fits the recipe (trained under another recipe hash, so that `ovis train` would train again)."""
    root = tmp_path_factory.mktemp("ggn")
    recipe_path = root / "ggn_real.yaml"
    recipe_path.write_text(yaml.safe_dump(_recipe_data()))
    recipe = load_recipe(recipe_path)
    run = root / "run"
    write_splits(recipe.splits.protocol, _train_on_disk(root), VAL, run / "splits")
    recipe.save(run / "teacher")
    torch.manual_seed(0)
    torch.save({"model": affinity_net(recipe, None).state_dict(), "iteration": 1, "recipe_hash": "earlier"},
               run / "teacher" / "model_final.pth")
    (run / "teacher" / "metrics.jsonl").write_text('{"iteration": 1, "total_loss": 0.5}\n')
    return recipe_path, run


def _train_on_disk(folder: Path) -> Path:
    """coco_mini train restricted to the images whose JPEGs tests/data carries (training reads them all)."""
    train = json.loads(TRAIN.read_text())
    on_disk = {p.name for p in (MINI / "train2017").glob("*.jpg")}
    train["images"] = [im for im in train["images"] if im["file_name"] in on_disk]
    ids = {im["id"] for im in train["images"]}
    train["annotations"] = [a for a in train["annotations"] if a["image_id"] in ids]
    path = folder / "instances_train_on_disk.json"
    path.write_text(json.dumps(train))
    return path


@pytest.fixture
def run_copy(ggn_run: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the run folder made of hard links: corruptions replace files, never write into them."""
    recipe_path, run = ggn_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy, copy_function=os.link)
    return recipe_path, copy


# training reads neither area nor iscrowd: a split file without them is trainable
SPLIT_FILE_CASES = [c for c in instances_cases(file_names_required=True)
                    if "crowd" not in c.label and not c.label.endswith(("area deleted", "iscrowd deleted"))][::3]


@pytest.mark.parametrize("case", SPLIT_FILE_CASES, ids=_ids(SPLIT_FILE_CASES))
def test_train_refuses_corrupt_split_file(case: Corruption, run_copy: tuple[Path, Path],
                                          capsys: pytest.CaptureFixture) -> None:
    recipe_path, run = run_copy
    split = run / "splits" / "train_base.json"
    names = _corrupt_in_place(split, case)
    assert_refused(["train", "--recipe", str(recipe_path), "--stage", "teacher", "--run-dir", str(run),
                    "--no-progress"], capsys, [run], names, split.name)


@pytest.mark.parametrize("case", SPLIT_FILE_CASES[1::2], ids=_ids(SPLIT_FILE_CASES[1::2]))
def test_pseudo_refuses_corrupt_split_file(case: Corruption, run_copy: tuple[Path, Path],
                                           capsys: pytest.CaptureFixture) -> None:
    recipe_path, run = run_copy
    split = run / "splits" / "train_base.json"
    names = _corrupt_in_place(split, case)
    assert_refused(["pseudo", "--recipe", str(recipe_path), "--run-dir", str(run)], capsys, [run], names, split.name)


def _corrupt_in_place(path: Path, case: Corruption) -> tuple[str, ...]:
    src = path.with_name(f"{path.stem}.orig")
    path.rename(src)
    names = write_corrupt(src, path, case)
    src.unlink()
    return names


def _saved(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _other_model(recipe_path: Path) -> bytes:
    recipe = load_recipe(recipe_path, ["model.decoder_channels=4"])
    return _saved({"model": affinity_net(recipe, None).state_dict(), "iteration": 1, "optimizer": {},
                   "scheduler": {}})


# a valid checkpoint's bytes and the recipe file -> the corrupt checkpoint's bytes
CHECKPOINTS: dict[str, Callable[[bytes, Path], bytes]] = {
    "empty": lambda b, r: b"",
    "truncated": lambda b, r: b[: len(b) // 2],
    "garbage": lambda b, r: bytes(range(256)) * 64,
    "json text": lambda b, r: b'{"model": {}}',
    "no model key": lambda b, r: _saved({"iteration": 3}),
    "another model": lambda b, r: _other_model(r),
    "a list": lambda b, r: _saved([1, 2, 3]),
}


def _replace(path: Path, data: bytes) -> None:
    path.unlink()  # a new file: the hard-linked original stays as it was
    path.write_bytes(data)


@pytest.mark.parametrize("kind", list(CHECKPOINTS))
def test_pseudo_refuses_corrupt_teacher_checkpoint(kind: str, run_copy: tuple[Path, Path],
                                                   capsys: pytest.CaptureFixture) -> None:
    recipe_path, run = run_copy
    ckpt = run / "teacher" / "model_final.pth"
    _replace(ckpt, CHECKPOINTS[kind](ckpt.read_bytes(), recipe_path))
    assert_refused(["pseudo", "--recipe", str(recipe_path), "--run-dir", str(run)], capsys, [run], (), ckpt.name)


@pytest.mark.parametrize("case", SPLIT_FILE_CASES[::4], ids=_ids(SPLIT_FILE_CASES[::4]))
def test_reproduce_refuses_corrupt_split_file_before_the_stage_kernel(case: Corruption, run_copy: tuple[Path, Path],
                                                                      capsys: pytest.CaptureFixture) -> None:
    recipe_path, run = run_copy
    split = run / "splits" / "train_base.json"
    names = _corrupt_in_place(split, case)
    assert_refused(["reproduce", str(recipe_path), "--run-dir", str(run), "--stages", "pseudo"], capsys, [run], names,
                   split.name)


# a checkpoint of another model loads: the pre-check builds the recipe's model and compares names and shapes
@pytest.mark.parametrize("kind", list(CHECKPOINTS))
def test_reproduce_refuses_corrupt_teacher_checkpoint_before_the_stage_kernel(kind: str, run_copy: tuple[Path, Path],
                                                                              capsys: pytest.CaptureFixture) -> None:
    recipe_path, run = run_copy
    ckpt = run / "teacher" / "model_final.pth"
    _replace(ckpt, CHECKPOINTS[kind](ckpt.read_bytes(), recipe_path))
    names = ("has shape", "the recipe's model needs") if kind == "another model" else ()
    assert_refused(["reproduce", str(recipe_path), "--run-dir", str(run), "--stages", "pseudo"], capsys, [run], names,
                   str(ckpt))


# --------------------------------------------------------------------------------------------
# model_final.pth of every training stage of both methods, against the model the recipe builds for it


def _cpl_recipe_data() -> dict:
    data = _recipe_data()
    return {
        "extends": str(RECIPES / "cpl_coco.yaml"),
        "name": "bad_inputs_cpl",
        "data": {**data["data"], "train_captions": "annotations/captions_train2017.json"},
        "model": {"backbone": "resnet18", "backbone_weights": None, "min_size": 64, "max_size": 64,
                  "mask_head_channels": 8, "c4_pooler_resolution": 4},
        **{stage: {"max_iter": 1, "num_workers": 0} for stage in ("grounding", "teacher", "student")},
        "launch": {"device": "cpu"},
    }


def _cpl_models(recipe_path: Path, run: Path, overrides: list[str] | None = None
                ) -> dict[str, Callable[[], torch.nn.Module]]:
    """Builders of the models CPL's training stages train (as their tasks build them), for the recipe
    with ``overrides``."""
    from ovis.methods import cpl, task_builder

    recipe = load_recipe(recipe_path, overrides)
    return {"grounding": lambda: task_builder("cpl", "grounding")(recipe, run, "grounding").model,
            "teacher": lambda: cpl.build_teacher(recipe, run),
            "student": lambda: cpl.build_student(recipe, run, ["umbrella", "zebra"])}  # a pseudo vocabulary


def _ggn_models(recipe_path: Path, overrides: list[str] | None = None) -> dict[str, Callable[[], torch.nn.Module]]:
    """Builders of the models GGN's training stages train, for the recipe with ``overrides``."""
    from ovis.methods.ggn import oln_recipe
    from ovis.models.detector import build_detector

    recipe = load_recipe(recipe_path, overrides)
    oln = oln_recipe(recipe).model
    return {"teacher": lambda: affinity_net(recipe, None),
            **{s: lambda: build_detector(recipe.model, num_classes=1) for s in ("baseline", "student")},
            **{s: lambda: build_detector(oln, num_classes=1) for s in ("oln", "oln_baseline")}}


def _save_models(run: Path, models: dict[str, Callable[[], torch.nn.Module]]) -> None:
    torch.manual_seed(0)
    for stage, build in models.items():
        (run / stage).mkdir(exist_ok=True)
        torch.save({"model": build().state_dict(), "iteration": 1, "recipe_hash": "earlier"},
                   run / stage / "model_final.pth")


@pytest.fixture(scope="module")
def cpl_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(recipe file, run folder) of a CPL recipe on coco_mini: valid splits and a model_final.pth of
    grounding, teacher and student that fit the recipe."""
    root = tmp_path_factory.mktemp("cpl")
    recipe_path = root / "cpl_real.yaml"
    recipe_path.write_text(yaml.safe_dump(_cpl_recipe_data()))
    recipe = load_recipe(recipe_path)
    run = root / "run"
    write_splits(recipe.splits.protocol, _train_on_disk(root), VAL, run / "splits", CAPTIONS)
    _save_models(run, _cpl_models(recipe_path, run))
    return recipe_path, run


@pytest.fixture(scope="module")
def ggn_full_run(ggn_run: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """ggn_run's folder with a model_final.pth of every detector of the student stage too."""
    recipe_path, run = ggn_run
    full = tmp_path_factory.mktemp("ggn_full") / "run"
    shutil.copytree(run, full)
    _save_models(full, {k: v for k, v in _ggn_models(recipe_path).items() if k != "teacher"})
    return recipe_path, full


# a checkpoint's model state dict -> a wrong one and the words its refusal names (besides the file)
def _first_matrix(state: dict) -> str:
    return next(k for k, v in state.items() if v.dim() >= 2)


def _wider(state: dict) -> tuple[dict, tuple[str, ...]]:
    key = _first_matrix(state)
    shape = tuple(state[key].shape)
    state[key] = torch.zeros(shape[0] + 1, *shape[1:])
    return state, (repr(key), f"({', '.join(map(str, (shape[0] + 1, *shape[1:])))})",
                   f"({', '.join(map(str, shape))})")


def _dropped(state: dict) -> tuple[dict, tuple[str, ...]]:
    key = list(state)[len(state) // 2]
    del state[key]
    return state, (repr(key), "missing")


def _extra(state: dict) -> tuple[dict, tuple[str, ...]]:
    state["roi_heads.extra_head.weight"] = torch.zeros(3, 4)
    return state, ("'roi_heads.extra_head.weight'", "(3, 4)", "not in the recipe's model")


def _not_a_tensor(state: dict) -> tuple[dict, tuple[str, ...]]:
    key = list(state)[-1]
    state[key] = [1.0, 2.0]
    return state, (repr(key), "list")


STATE_CORRUPTIONS = {"a tensor wider": _wider, "a tensor dropped": _dropped, "an extra tensor": _extra,
                     "a tensor a list": _not_a_tensor}
# another model: the recipe with a model setting changed, and the run's stages it changes
OTHER_MODELS = {"cpl": ["model.backbone=resnet34"], "ggn": ["model.fpn_channels=4", "model.decoder_channels=4"]}
MODEL_CASES = ([("cpl", stage, kind) for stage in ("grounding", "teacher", "student")
                for kind in [*STATE_CORRUPTIONS, "another model"]]
               + [("ggn", stage, kind) for stage in ("teacher", "baseline", "student", "oln", "oln_baseline")
                  for kind in [*STATE_CORRUPTIONS, "another model"]])


@pytest.mark.parametrize("method, stage, kind", MODEL_CASES, ids=[" ".join(c) for c in MODEL_CASES])
def test_reproduce_refuses_a_checkpoint_of_another_model_before_the_stage_kernel(
        method: str, stage: str, kind: str, cpl_run: tuple[Path, Path], ggn_full_run: tuple[Path, Path],
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe_path, source = cpl_run if method == "cpl" else ggn_full_run
    run = tmp_path / "run"
    shutil.copytree(source, run, copy_function=os.link)
    ckpt = run / stage / "model_final.pth"
    state = torch.load(ckpt, weights_only=True)
    if kind == "another model":
        models = _cpl_models(recipe_path, run, OTHER_MODELS[method]) if method == "cpl" else \
            _ggn_models(recipe_path, OTHER_MODELS[method])
        state["model"], names = models[stage]().state_dict(), ("parameter",)
    else:
        state["model"], names = STATE_CORRUPTIONS[kind](state["model"])
    _replace(ckpt, _saved(state))
    assert_refused(["reproduce", str(recipe_path), "--run-dir", str(run), "--stages", "eval"], capsys, [run], names,
                   str(ckpt))
    assert not (run / "notebooks").exists()  # no kernel started


@pytest.mark.parametrize("method", ["cpl", "ggn"])
def test_the_checkpoints_the_stages_train_pass_the_check(method: str, cpl_run: tuple[Path, Path],
                                                         ggn_full_run: tuple[Path, Path]) -> None:
    """Without this, a refusal above could come from a check that refuses everything."""
    from ovis.pipeline import check_run_files, trained_model

    recipe_path, run = cpl_run if method == "cpl" else ggn_full_run
    recipe = load_recipe(recipe_path)
    checked: set[tuple[Path, int, int]] = set()
    check_run_files(run, "eval", checked, recipe)
    stages = {p.parent.name for p, _, _ in checked if p.name == "model_final.pth"}
    assert stages == ({"grounding", "teacher", "student"} if method == "cpl"
                      else {"teacher", "baseline", "student", "oln", "oln_baseline"})
    assert all(trained_model(recipe, run, stage) is not None for stage in stages)


@pytest.mark.parametrize("kind", list(CHECKPOINTS))
def test_train_refuses_corrupt_checkpoint_to_resume(kind: str, run_copy: tuple[Path, Path],
                                                    capsys: pytest.CaptureFixture) -> None:
    recipe_path, run = run_copy
    last = run / "teacher" / "last.pth"
    last.write_bytes(CHECKPOINTS[kind]((run / "teacher" / "model_final.pth").read_bytes(), recipe_path))
    assert_refused(["train", "--recipe", str(recipe_path), "--stage", "teacher", "--run-dir", str(run),
                    "--no-progress"], capsys, [run], (), last.name)


@pytest.mark.parametrize("command", ["train", "pseudo"])
@pytest.mark.parametrize("key, value", [("train_images", "no_train_images"), ("root", "/nonexistent/coco")])
def test_missing_image_folder_is_refused_before_anything_is_written(command: str, key: str, value: str,
                                                                     run_copy: tuple[Path, Path], tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    data = _recipe_data()
    data["data"][key] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    _, run = run_copy
    argv = ["train", "--recipe", str(path), "--stage", "teacher"] if command == "train" else ["pseudo", "--recipe",
                                                                                             str(path)]
    assert_refused(argv + ["--run-dir", str(run)], capsys, [run], (), Path(value).name)


@pytest.mark.parametrize("init", ["nowhere.pth", "teacher/metrics.jsonl"])
def test_an_unusable_init_checkpoint_is_refused_before_anything_is_written(init: str, run_copy: tuple[Path, Path],
                                                                           tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    data = _recipe_data()
    data["teacher"]["init"] = init
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    _, run = run_copy
    assert_refused(["train", "--recipe", str(path), "--stage", "teacher", "--run-dir", str(run)], capsys, [run], (),
                   Path(init).name)


def test_a_missing_image_file_is_refused_before_anything_is_written(run_copy: tuple[Path, Path], tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    _, run = run_copy
    root = tmp_path / "coco"
    shutil.copytree(MINI, root)
    first = json.loads((run / "splits" / "train_base.json").read_text())["images"][0]
    (root / "train2017" / first["file_name"]).unlink()
    data = _recipe_data()
    data["data"]["root"] = str(root)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    for argv in (["train", "--recipe", str(path), "--stage", "teacher"], ["pseudo", "--recipe", str(path)]):
        assert_refused(argv + ["--run-dir", str(run)], capsys, [run], (), "train_base.json")


# recipe corruptions: (label, changes to the recipe's mapping, words the error names)
RECIPE_CASES: list[tuple[str, Callable[[dict], Any], tuple[str, ...]]] = [
    ("unknown top-level key", lambda r: {**r, "trainer": {}}, ("trainer",)),
    ("unknown section key", lambda r: {**r, "teacher": {**r["teacher"], "max_iters": 5}}, ("max_iters",)),
    ("section not a mapping", lambda r: {**r, "pseudo": [1, 2]}, ("pseudo",)),
    ("string for int", lambda r: {**r, "teacher": {**r["teacher"], "max_iter": "ten"}}, ("max_iter",)),
    ("bool for int", lambda r: {**r, "teacher": {**r["teacher"], "batch_size": True}}, ("batch_size",)),
    ("list for float", lambda r: {**r, "teacher": {**r["teacher"], "lr": [0.1]}}, ("lr",)),
    ("null for int", lambda r: {**r, "model": {**r["model"], "min_size": None}}, ("min_size",)),
    ("negative max_iter", lambda r: {**r, "teacher": {**r["teacher"], "max_iter": -5}}, ("max_iter",)),
    ("nan lr", lambda r: {**r, "teacher": {**r["teacher"], "lr": NAN}}, ("lr",)),
    ("flip_prob above 1", lambda r: {**r, "teacher": {**r["teacher"], "flip_prob": 1.5}}, ("flip_prob",)),
    ("negative pseudo workers", lambda r: {**r, "pseudo": {**r["pseudo"], "workers": -2}}, ("workers",)),
    ("zero shards", lambda r: {**r, "pseudo": {**r["pseudo"], "shards": 0}}, ("shards",)),
    ("zero max_images", lambda r: {**r, "pseudo": {**r["pseudo"], "max_images": 0}}, ("max_images",)),
    ("threshold above 1", lambda r: {**r, "pseudo": {**r["pseudo"], "gt_iou_thresh": 2.0}}, ("gt_iou_thresh",)),
    ("unknown vocabulary", lambda r: {**r, "pseudo": {**r["pseudo"], "vocabulary": "wordnet"}}, ("vocabulary",)),
    ("unknown arch", lambda r: {**r, "model": {**r["model"], "arch": "c5"}}, ("arch",)),
    ("unknown backbone", lambda r: {**r, "model": {**r["model"], "backbone": "resnet51"}}, ("backbone",)),
    ("zero min_size", lambda r: {**r, "model": {**r["model"], "min_size": 0}}, ("min_size",)),
    ("nms above 1", lambda r: {**r, "model": {**r["model"], "rpn_nms_thresh": 1.5}}, ("rpn_nms_thresh",)),
    ("unknown protocol", lambda r: {**r, "splits": {"protocol": "coco_48_17"}}, ("protocol",)),
    ("unknown method", lambda r: {**r, "method": "sam"}, ("method",)),
    ("unknown device", lambda r: {**r, "launch": {"device": "tpu"}}, ("device",)),
    ("zero nproc", lambda r: {**r, "launch": {"device": "cpu", "nproc": 0}}, ("nproc",)),
    ("unknown iou type", lambda r: {**r, "eval": {"iou_types": ["mask"]}}, ("iou_types",)),
    ("extends a missing file", lambda r: {**r, "extends": "nowhere.yaml"}, ("nowhere.yaml",)),
    ("top level a list", lambda r: [r], ()),
]


def _recipe_file(tmp_path: Path, label: str, change: Callable[[dict], Any]) -> Path:
    path = tmp_path / "recipé bad.yaml"
    path.write_text(yaml.safe_dump(change(_recipe_data())) if label != "invalid yaml" else "teacher: {max_iter: [1,\n")
    return path


@pytest.mark.parametrize("label", [c[0] for c in RECIPE_CASES] + ["invalid yaml"])
@pytest.mark.parametrize("command", ["train", "pseudo", "reproduce"])
def test_recipe_corruptions_are_refused(command: str, label: str, ggn_run: tuple[Path, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    change, names = next(((c, n) for lbl, c, n in RECIPE_CASES if lbl == label), (lambda r: r, ()))
    path = _recipe_file(tmp_path, label, change)
    _, run = ggn_run
    argv = {"train": ["train", "--recipe", str(path), "--stage", "teacher", "--run-dir", str(run)],
            "pseudo": ["pseudo", "--recipe", str(path), "--run-dir", str(run)],
            "reproduce": ["reproduce", str(path), "--run-dir", str(run)]}[command]
    file = "nowhere.yaml" if label == "extends a missing file" else "recipé bad"
    assert_refused(argv, capsys, [run], names, file)


# files the recipe names: (label, data key, value)
MISSING_DATA = [
    ("train instances missing", "train_instances", "annotations/nowhere_train.json"),
    ("val instances missing", "val_instances", "annotations/nowhere_val.json"),
    ("captions missing", "train_captions", "annotations/nowhere_captions.json"),
    ("train images missing", "train_images", "no_train_images"),
    ("val images missing", "val_images", "no_val_images"),
    ("data root missing", "root", "/nonexistent/coco"),
]


@pytest.mark.parametrize("label, key, value", MISSING_DATA, ids=[m[0] for m in MISSING_DATA])
def test_reproduce_refuses_missing_data_before_any_stage(label: str, key: str, value: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    data = _recipe_data()
    data["data"][key] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    run.mkdir()
    assert_refused(["reproduce", str(path), "--run-dir", str(run), "--stages", "splits"], capsys, [run], (),
                   Path(value).name)


@pytest.mark.parametrize("case", INSTANCES[::9] + CAPTION_CASES[::9],
                         ids=[f"{c.label} ({k})" for k, cs in (("instances", INSTANCES[::9]),
                                                                ("captions", CAPTION_CASES[::9])) for c in cs])
def test_reproduce_refuses_corrupt_data_before_any_stage(case: Corruption, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """The recipe's data files are read and checked before the first notebook starts."""
    root = tmp_path / "coco"
    shutil.copytree(MINI, root)
    src = VAL if case in INSTANCES else CAPTIONS
    bad = root / "annotations" / src.name
    names = write_corrupt(src, bad, case)
    data = _recipe_data(data={**_recipe_data()["data"], "root": str(root),
                              "train_captions": "annotations/captions_train2017.json"})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    run.mkdir()
    assert_refused(["reproduce", str(path), "--run-dir", str(run)], capsys, [run], names, bad.name)


# --------------------------------------------------------------------------------------------
# a real process, and valid odd inputs


def test_a_real_process_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "détections ünïcode.json"
    write_corrupt(SEGM100, bad, next(c for c in SEGM_CASES if c.label == "detection.segmentation rle counts '0'"))
    out = tmp_path / "eval out"
    proc = subprocess.run([sys.executable, "-m", "ovis.cli", *_eval_argv(GT100, bad, "segm", out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and bad.name in proc.stderr and "segmentation" in proc.stderr
    assert not out.exists()


def test_unicode_paths_and_extra_keys_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Valid COCO allows keys it does not define, at every level; paths may be any unicode."""
    folder = tmp_path / "données ✓ 数据"
    folder.mkdir()
    val = json.loads(VAL.read_text())
    val["extra_top"] = {"note": "kept"}
    for section in ("images", "annotations", "categories"):
        for entry in val[section]:
            entry["my_extra"] = [1, "two", None]
    (folder / "val ✓.json").write_text(json.dumps(val))
    out = folder / "sortie ✓"
    assert main(_splits_argv(TRAIN, folder / "val ✓.json", CAPTIONS, out)) == 0
    written = json.loads((out / "val.json").read_text())
    assert written["extra_top"] == {"note": "kept"} and written["images"][0]["my_extra"] == [1, "two", None]
    dets = [dict(d, my_extra=1) for d in json.loads(SEGM100.read_text())]
    (folder / "dets ✓.json").write_text(json.dumps(dets))
    assert main(_eval_argv(GT100, folder / "dets ✓.json", "segm", folder / "eval ✓")) == 0
    expected = json.loads((GT100.parent / "expected_stats_pycocotools.json").read_text())["segm"]["stats"]["AP"]
    assert json.loads((folder / "eval ✓" / "metrics.json").read_text())["metrics"]["stats"][0] == pytest.approx(expected)
    capsys.readouterr()


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_an_empty_detections_list_is_evaluated(iou_type: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty.json").write_text("[]")
    assert main(_eval_argv(GT100, tmp_path / "empty.json", iou_type, tmp_path / "out")) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["metrics"]
    assert metrics["stats"] == [0.0] * 12


def test_at_least_100_distinct_corruptions() -> None:
    per_command = {
        "splits": len(INSTANCES) + len(CAPTION_CASES) + 1,
        "eval": len(SEGM_CASES) + len(BBOX_CASES) + len(GT_CASES),
        "train": len(SPLIT_FILE_CASES) + len(CHECKPOINTS) + len(RECIPE_CASES) + 1 + 3 + 2,
        "pseudo": len(SPLIT_FILE_CASES[1::2]) + len(CHECKPOINTS) + len(RECIPE_CASES) + 1 + 3,
        "reproduce": len(RECIPE_CASES) + 1 + len(MISSING_DATA) + len(INSTANCES[::9]) + len(CAPTION_CASES[::9])
        + len(SPLIT_FILE_CASES[::4]) + len(CHECKPOINTS) + len(MODEL_CASES),
    }
    assert all(n >= 10 for n in per_command.values()) and sum(per_command.values()) >= 100, per_command
    labels = [c.label for c in INSTANCES + CAPTION_CASES + SEGM_CASES + BBOX_CASES]
    assert len(set(labels)) >= 100


def test_rle_in_a_real_annotation_round_trips() -> None:
    """The mutator's RLE helper makes valid masks before it breaks them (else 'refused' would prove nothing)."""
    data = json.loads(VAL.read_text())
    ann = data["annotations"][len(data["annotations"]) // 2]
    rle = _rle(ann, _image_of(data, ann))
    mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert mask.shape == (rle["size"][0], rle["size"][1]) and 0 < int(mask.sum()) <= np.prod(mask.shape)
