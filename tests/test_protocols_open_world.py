"""GGN's other open-world settings as protocols (docs/protocols.md#14-person-split, #15-coco-and-lvis):
partitions as upstream defines them, split counts and AR@k on real files (coco_mini, the LVIS API's
lvis_val_100) against independent computations, the CLI on good and bad input, the recipes."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import COCO_MINI, REAL
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from test_eval_recall import BUDGETS, literal_metrics

from ovis.cli import main
from ovis.config import list_recipes, load_recipe
from ovis.data.coco import ann_to_rle
from ovis.data.splits import load_partition, write_splits
from ovis.eval import evaluate
from ovis.eval.protocols import flag_seen, load_lvis_gt
from ovis.eval.reference import SOURCES, paper_ar_curves
from ovis.eval.synthetic import class_agnostic, synthetic_detections
from ovis.models.detector import build_detector
from ovis.protocols import protocol_names

TRAIN = COCO_MINI / "annotations" / "instances_train2017.json"
VAL = COCO_MINI / "annotations" / "instances_val2017.json"
LVIS = REAL / "lvis_val_100" / "lvis_val_100.json"
SYNSETS = Path(__file__).parents[1] / "ovis" / "data" / "resources" / "coco_to_synset.json"
NEW = ("coco_person_nonperson", "coco_lvis_noncoco", "lvis_noncoco_coco", "coco_uvo")
RECIPES = {"ggn_coco_person": ("coco_person_nonperson", 3), "ggn_coco_lvis": ("coco_lvis_noncoco", 1),
           "ggn_lvis_coco": ("lvis_noncoco_coco", 1), "ggn_coco_uvo": ("coco_uvo", 3)}
# facebookresearch/Generic-Grouping mmdet/datasets/coco_split.py, NONPERSON_CLASSES (COCO's CLASSES minus person)
GGN_NONPERSON = (
    "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light", "fire hydrant",
    "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear",
    "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)


def _coco_synsets() -> set[str]:
    return {v["synset"] for v in json.loads(SYNSETS.read_text()).values()}


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


# --- partitions ---------------------------------------------------------------------------------


def test_person_partition_is_ggns_lists():
    part = load_partition("coco_person_nonperson")
    assert part["base"] == [{"id": 1, "name": "person"}]
    assert [c["name"] for c in part["novel"]] == list(GGN_NONPERSON) and len(part["novel"]) == 79
    coco = {c["id"]: c["name"] for c in _load(VAL)["categories"]}
    assert {c["id"]: c["name"] for c in part["base"] + part["novel"]} == coco


def test_synset_mapping_is_the_lvis_apis_and_covers_cocos_80():
    raw = json.loads(SYNSETS.read_text())
    coco = {c["id"]: c["name"] for c in _load(VAL)["categories"]}
    assert {v["coco_cat_id"]: name for name, v in raw.items()} == coco
    assert len(_coco_synsets()) == 80
    # LVIS v0.5 (the fixture) has no category with oven.n.01 or frank.n.02; LVIS v1 lacks frank.n.02 only
    v05 = {c["synset"] for c in _load(LVIS)["categories"]}
    assert sorted(_coco_synsets() - v05) == ["frank.n.02", "oven.n.01"]
    v1 = load_partition("coco_lvis_noncoco")  # packaged LVIS v1 vocabulary
    assert (len(v1["eval_seen"]), len(v1["eval_unseen"])) == (79, 1203 - 79)
    assert {c["name"] for c in v1["eval_seen"]} >= {"person", "oven", "sofa", "television_set"}


def test_every_protocols_groups_are_disjoint_on_each_side():
    for name in NEW:
        part = load_partition(name)
        assert not {c["id"] for c in part["base"]} & {c["id"] for c in part["novel"]}
        assert not {c["id"] for c in part.get("eval_seen", [])} & {c["id"] for c in part.get("eval_unseen", [])}
    assert set(NEW) <= set(protocol_names("splits"))


# --- split counts -------------------------------------------------------------------------------


def _min_side_ok(im: dict) -> bool:
    return min(im["width"], im["height"]) >= 32


def test_person_split_counts_match_plain_counting(tmp_path):
    table = write_splits("coco_person_nonperson", TRAIN, VAL, tmp_path)
    train, val = _load(TRAIN), _load(VAL)
    person_imgs = {a["image_id"] for a in train["annotations"] if a["category_id"] == 1}
    imgs = {im["id"] for im in train["images"] if im["id"] in person_imgs and _min_side_ok(im)}
    anns = {a["id"] for a in train["annotations"] if a["category_id"] == 1 and a["image_id"] in imgs}
    out = _load(tmp_path / "train_base.json")
    assert {im["id"] for im in out["images"]} == imgs and {a["id"] for a in out["annotations"]} == anns
    assert {a["category_id"] for a in out["annotations"]} == {1}
    got = _load(tmp_path / "val.json")
    assert len(got["images"]) == len(val["images"]) and len(got["annotations"]) == len(val["annotations"])
    assert {a["id"] for a in got["annotations"] if a.get("ignored_split")} == {
        a["id"] for a in val["annotations"] if a["category_id"] == 1}
    assert (table["train_base.json"]["images"], table["train_base.json"]["annotations"]) == (36, 172)  # pinned
    COCO(str(tmp_path / "val.json"))


def test_coco_lvis_noncoco_counts_match_plain_counting(tmp_path):
    table = write_splits("coco_lvis_noncoco", TRAIN, LVIS, tmp_path)
    train, lvis = _load(TRAIN), _load(LVIS)
    # training: every COCO annotation (all 80 classes are seen) of images with one and min side >= 32
    with_ann = {a["image_id"] for a in train["annotations"]}
    imgs = {im["id"] for im in train["images"] if im["id"] in with_ann and _min_side_ok(im)}
    out = _load(tmp_path / "train_base.json")
    assert {im["id"] for im in out["images"]} == imgs
    assert len(out["annotations"]) == sum(a["image_id"] in imgs for a in train["annotations"])
    # val: every LVIS image and instance; those of a category with a COCO synset ignored
    seen_cats = {c["id"] for c in lvis["categories"] if c["synset"] in _coco_synsets()}
    val = _load(tmp_path / "val.json")
    assert len(val["images"]) == 100 and len(val["annotations"]) == 977
    flagged = {a["id"] for a in val["annotations"] if a.get("ignored_split")}
    assert flagged == {a["id"] for a in lvis["annotations"] if a["category_id"] in seen_cats}
    assert (len(flagged), 977 - len(flagged)) == (435, 542)  # pinned on the fixture
    assert all(a["iscrowd"] == 0 for a in val["annotations"])
    coco_url = {im["id"]: im["coco_url"] for im in lvis["images"]}
    assert all(im["file_name"] == "val2017/" + coco_url[im["id"]].rsplit("/", 1)[1] for im in val["images"])
    part = _load(tmp_path / "partition.json")
    assert {c["id"] for c in part["eval_seen"]} == seen_cats and len(part["eval_seen"]) == 78
    assert len(part["eval_unseen"]) == 1230 - 78 and len(part["base"]) == 80 and part["novel"] == []
    assert table["val.json"] == {"images": 100, "annotations": 977, "categories": 1230}
    COCO(str(tmp_path / "val.json"))


def test_lvis_noncoco_coco_counts_match_plain_counting(tmp_path):
    """lvis_val_100 stands in for LVIS train (same format); COCO val2017 of coco_mini is the eval set."""
    write_splits("lvis_noncoco_coco", LVIS, VAL, tmp_path)
    lvis, val = _load(LVIS), _load(VAL)
    non_coco = {c["id"] for c in lvis["categories"] if c["synset"] not in _coco_synsets()}
    anns = [a for a in lvis["annotations"] if a["category_id"] in non_coco]
    sizes = {im["id"]: im for im in lvis["images"]}
    imgs = {a["image_id"] for a in anns if _min_side_ok(sizes[a["image_id"]])}
    out = _load(tmp_path / "train_base.json")
    assert {im["id"] for im in out["images"]} == imgs
    assert {a["id"] for a in out["annotations"]} == {a["id"] for a in anns if a["image_id"] in imgs}
    got = _load(tmp_path / "val.json")
    assert len(got["images"]) == len(val["images"]) and len(got["annotations"]) == len(val["annotations"])
    assert not any(a.get("ignored_split") for a in got["annotations"])
    part = _load(tmp_path / "partition.json")
    assert part["eval_seen"] == [] and len(part["eval_unseen"]) == 80
    assert {c["id"] for c in part["base"]} == non_coco and len(part["novel"]) == 78


# --- metrics ------------------------------------------------------------------------------------


def _dets(gt: dict) -> list[dict]:
    dets = synthetic_detections(gt, per_image=30, seed=5, duplicates=3)
    return class_agnostic(dets, gt["categories"][0]["id"])


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_coco_lvis_noncoco_ar_equals_cocoeval_with_seen_ignored(iou_type, tmp_path):
    lvis = _load(LVIS)
    for a in lvis["annotations"]:  # LVIS has no crowd regions; COCOeval reads the key
        a["iscrowd"] = 0
    seen = {c["id"] for c in lvis["categories"] if c["synset"] in _coco_synsets()}
    dets = _dets(lvis)
    _, expected = literal_metrics(flag_seen(lvis, seen), dets, iou_type)
    write_splits("coco_lvis_noncoco", TRAIN, LVIS, tmp_path)
    for gt, partition in ((LVIS, None), (tmp_path / "val.json", tmp_path / "partition.json")):
        for backend in ("fast", "pycocotools"):
            res = evaluate("coco_lvis_noncoco", gt, dets, iou_type, partition=partition, backend=backend)
            assert res["num_seen_gt"] == 435 and res["num_unseen_gt"] == 542
            for key, value in expected.items():
                assert res["metrics"][key] == pytest.approx(value, abs=1e-9), (gt, backend, key)
    assert 0 < expected["AR@10"] < expected["AR@100"] < 1


def test_lvis_noncoco_coco_ar_is_plain_class_agnostic_cocoeval():
    gt = _load(VAL)
    dets = _dets(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(VAL))
        ev = COCOeval(coco_gt, coco_gt.loadRes([{k: v for k, v in d.items() if k != "bbox"} for d in dets]), "segm")
        ev.params.useCats = 0
        ev.params.maxDets = list(BUDGETS)
        ev.evaluate()
        ev.accumulate()
    rec = ev.eval["recall"][:, :, 0, :]
    res = evaluate("lvis_noncoco_coco", VAL, dets, "segm")
    assert res["num_seen_gt"] == 0 and res["seen_category_ids"] == []
    for i, k in enumerate(BUDGETS):
        s = rec[:, :, i]
        assert res["metrics"][f"AR@{k}"] == pytest.approx(float(np.mean(s[s > -1])), abs=1e-9)


def test_person_ar_equals_literal_reference():
    gt = _load(VAL)
    dets = _dets(gt)
    _, expected = literal_metrics(flag_seen(gt, {1}), dets, "segm")
    got = evaluate("coco_person_nonperson", VAL, dets, "segm")["metrics"]
    assert got == pytest.approx(expected, abs=1e-9)


def test_lvis_gt_loader_leaves_the_callers_dict_alone():
    lvis = _load(LVIS)
    out = load_lvis_gt(lvis)
    assert "iscrowd" not in lvis["annotations"][0] and out["annotations"][0]["iscrowd"] == 0


# --- LVIS federated labels (docs/protocols.md#16-lvis-federated-labels) -----------------------------


def _not_hitting_seen(dets: list[dict], gt: dict, seen: set[int], iou_type: str) -> list[dict]:
    """The detections whose IoU with every seen-class GT of their image is below 0.5: the budget rule removes none."""
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    regions: dict[int, list] = {}
    for a in gt["annotations"]:
        if a["category_id"] in seen:
            h, w = sizes[a["image_id"]]
            regions.setdefault(a["image_id"], []).append(a["bbox"] if iou_type == "bbox" else ann_to_rle(a, h, w))
    out = []
    for d in dets:
        theirs = regions.get(d["image_id"])
        mine = d["bbox"] if iou_type == "bbox" else d["segmentation"]
        if not theirs or mask_utils.iou([mine], theirs, [0] * len(theirs)).max() < 0.5:
            out.append(d)
    return out


@pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")
@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_lvis_class_agnostic_ar_equals_the_lvis_api(iou_type, tmp_path, monkeypatch):
    """The LVIS API (registry package `lvis`, the reference implementation) on the fixture made class-agnostic
    its own way: one category "object" that no image verifies absent and none annotates exhaustively, seen-class
    GT marked `ignore`; its recall (max_dets = k per image) equals ovis' AR@k and AR_s/m/l@100."""
    import lvis as lvis_api  # a dev dependency; imported here, as it loads OpenCV
    monkeypatch.setattr(np, "float", float, raising=False)  # lvis 0.5.3's accumulate still says np.float
    lvis = _load(LVIS)
    seen = {c["id"] for c in lvis["categories"] if c["synset"] in _coco_synsets()}
    unseen_not_exhaustive = sum(a["category_id"] not in seen and a["category_id"] in im["not_exhaustive_category_ids"]
                                for im in lvis["images"] for a in lvis["annotations"] if a["image_id"] == im["id"])
    assert unseen_not_exhaustive > 0  # the fixture has targets whose category is not exhaustively annotated
    drop = "bbox" if iou_type == "segm" else "segmentation"
    dets = [{k: v for k, v in d.items() if k != drop} for d in _dets({**lvis, "annotations": [
        {**a, "iscrowd": 0} for a in lvis["annotations"]]})]
    dets = _not_hitting_seen(dets, lvis, seen, iou_type)
    ours = evaluate("coco_lvis_noncoco", LVIS, dets, iou_type)
    assert ours["num_unseen_gt"] == 542 and ours["metrics"]["AR@100"] > 0
    one = tmp_path / "lvis_object.json"
    one.write_text(json.dumps({
        "images": [{**im, "neg_category_ids": [], "not_exhaustive_category_ids": [1]} for im in lvis["images"]],
        "categories": [{"id": 1, "name": "object", "synset": "object.n.01", "frequency": "f"}],
        "annotations": [{**a, "category_id": 1, "ignore": int(a["category_id"] in seen)} for a in lvis["annotations"]],
    }))
    gt = lvis_api.LVIS(str(one))
    for k in (10, 100, 300):
        ev = lvis_api.LVISEval(gt, lvis_api.LVISResults(gt, [{**d, "category_id": 1} for d in dets], max_dets=k),
                               iou_type)
        ev.evaluate()
        ev.accumulate()
        recall = ev.eval["recall"][:, 0, :]  # IoU threshold x area range (all, small, medium, large)
        assert ours["metrics"][f"AR@{k}"] == pytest.approx(recall[:, 0].mean(), abs=1e-12), k
        if k == 100:
            for i, size in enumerate("sml", 1):
                assert ours["metrics"][f"AR_{size}@100"] == pytest.approx(recall[:, i].mean(), abs=1e-12), size


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("neg_category_ids", None, "expected a list of category ids"),
    ("not_exhaustive_category_ids", [999999], "999999"),
])
def test_cli_refuses_lvis_images_with_bad_federated_lists(key, value, problem, tmp_path, capsys):
    lvis = _load(LVIS)
    image = lvis["images"][7]
    if value is None:
        del image[key]
    else:
        image[key] = value
    bad = tmp_path / "lvis_federated.json"
    bad.write_text(json.dumps(lvis))
    out = tmp_path / "splits"
    _refused(_splits("coco_lvis_noncoco", TRAIN, bad, out), capsys, out, "lvis_federated.json",
             f"image {image['id']}", key, problem)
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": image["id"], "category_id": lvis["categories"][0]["id"],
                                 "bbox": [1, 1, 5, 5], "score": 0.5}]))
    evaluated = tmp_path / "eval"
    _refused(["eval", "--protocol", "coco_lvis_noncoco", "--gt", str(bad), "--detections", str(dets), "--iou-type",
              "bbox", "--out", str(evaluated)], capsys, evaluated, "lvis_federated.json", f"image {image['id']}", key,
             problem)
    assert not (evaluated / "metrics.json").exists()


# --- CLI ----------------------------------------------------------------------------------------


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")) if folder.exists() else []:
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _refused(argv: list[str], capsys, out: Path, *words: str) -> None:
    before = _digest(out)
    rc = main(argv)
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc != 0 and len(lines) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    assert _digest(out) == before


def _splits(protocol: str, train: Path, val: Path, out: Path) -> list[str]:
    return ["splits", "--protocol", protocol, "--train-instances", str(train), "--val-instances", str(val),
            "--out", str(out)]


@pytest.mark.parametrize(("protocol", "train", "val"), [
    ("coco_person_nonperson", TRAIN, VAL), ("coco_lvis_noncoco", TRAIN, LVIS), ("lvis_noncoco_coco", LVIS, VAL)])
def test_cli_splits_then_eval(protocol, train, val, tmp_path, capsys):
    out = tmp_path / "splits"
    assert main(_splits(protocol, train, val, out)) == 0
    assert protocol in capsys.readouterr().out
    gt = _load(out / "val.json")
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(_dets(gt)))
    assert main(["eval", "--protocol", protocol, "--gt", str(out / "val.json"), "--detections", str(dets),
                 "--partition", str(out / "partition.json"), "--out", str(tmp_path / "eval")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["protocol"] == protocol and 0 < summary["metrics"]["AR@100"] < 1
    assert (tmp_path / "eval" / "metrics.json").is_file()


@pytest.mark.parametrize(("protocol", "train", "val", "words"), [
    # COCO instances where LVIS ones belong: no synsets
    ("coco_lvis_noncoco", TRAIN, VAL, ("instances_val2017.json", "synset")),
    ("lvis_noncoco_coco", TRAIN, VAL, ("instances_train2017.json", "synset")),
    # LVIS where COCO belongs: COCO category 1 (person) is named otherwise there
    ("lvis_noncoco_coco", LVIS, LVIS, ("lvis_val_100.json", "person")),
    ("coco_person_nonperson", LVIS, VAL, ("lvis_val_100.json", "person")),
])
def test_cli_splits_refuses_the_wrong_dataset(protocol, train, val, words, tmp_path, capsys):
    out = tmp_path / "splits"
    out.mkdir()
    (out / "keep.txt").write_text("earlier output")
    _refused(_splits(protocol, train, val, out), capsys, out, *words)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_cli_splits_refuses_an_lvis_image_without_a_usable_coco_url(tmp_path, capsys):
    lvis = _load(LVIS)
    lvis["images"][3]["coco_url"] = "nowhere"
    bad = tmp_path / "lvis_bad.json"
    bad.write_text(json.dumps(lvis))
    out = tmp_path / "splits"
    _refused(_splits("coco_lvis_noncoco", TRAIN, bad, out), capsys, out, "lvis_bad.json",
             f"image {lvis['images'][3]['id']}", "coco_url")
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(("protocol", "gt", "words"), [
    ("coco_lvis_noncoco", VAL, ("instances_val2017.json", "synset")),  # COCO GT for an LVIS evaluation
    ("lvis_noncoco_coco", LVIS, ("lvis_val_100.json", "iscrowd")),  # raw LVIS GT for a COCO evaluation
    ("lvis_noncoco_coco", None, ("lvis_crowd.json", "person")),  # LVIS GT with iscrowd (as the splits write it)
])
def test_cli_eval_refuses_the_wrong_ground_truth(protocol, gt, words, tmp_path, capsys):
    dets = tmp_path / "dets.json"
    if gt is None:
        lvis = _load(LVIS)
        lvis["annotations"] = [{**a, "iscrowd": 0} for a in lvis["annotations"]]
        gt = tmp_path / "lvis_crowd.json"
        gt.write_text(json.dumps(lvis))
    data = _load(gt)
    dets.write_text(json.dumps([{"image_id": data["images"][0]["id"], "category_id": data["categories"][0]["id"],
                                 "bbox": [1, 1, 5, 5], "score": 0.5}]))
    out = tmp_path / "eval"
    _refused(["eval", "--protocol", protocol, "--gt", str(gt), "--detections", str(dets), "--iou-type", "bbox",
              "--out", str(out)], capsys, out, *words)
    assert not (out / "metrics.json").exists()


# --- recipes and reference numbers --------------------------------------------------------------


def test_recipes_are_listed_and_name_their_protocol_and_top_k(capsys):
    assert set(RECIPES) <= set(list_recipes())
    for name, (protocol, k) in RECIPES.items():
        r = load_recipe(name)
        assert (r.method, r.splits.protocol, r.eval.protocol, r.pseudo.top_k) == ("ggn", protocol, protocol, k)
    assert main(["reproduce", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_builds_the_full_size_ggn_model(name):
    r = load_recipe(name, {"model.backbone_weights": None})
    base = load_recipe("ggn_coco")
    assert r.model == dataclasses.replace(base.model, backbone_weights=None)
    assert (r.teacher, r.student) == (base.teacher, base.student)
    model = build_detector(r.model)
    assert 43.0 <= sum(p.numel() for p in model.parameters()) / 1e6 <= 44.5  # as ggn_coco
    assert (model.transform.min_size, model.transform.max_size) == ((800,), 1333)


def test_paper_numbers_by_protocol_name_their_source():
    for protocol, (base, ggn) in {"coco_person_nonperson": (0.049, 0.209), "coco_lvis_noncoco": (0.165, 0.204),
                                  "lvis_noncoco_coco": (0.217, 0.236), "coco_uvo": (0.401, 0.434)}.items():
        curves = paper_ar_curves(protocol, "segm")
        assert curves == {"GGN (Mask R-CNN)": {100: ggn}, "Mask R-CNN (class-agnostic)": {100: base}}
        assert paper_ar_curves(protocol, "bbox") == {}
    assert paper_ar_curves("coco_voc_nonvoc", "segm")["GGN (Mask R-CNN)"] == {100: 0.287}
    assert "Generic-Grouping README model zoo" in SOURCES["GGN"] and "person" in SOURCES["GGN"] and "UVO" in SOURCES["GGN"]
