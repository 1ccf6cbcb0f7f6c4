"""GGN's COCO -> UVO setting as protocol coco_uvo (docs/protocols.md#17-coco-and-uvo): small files written here in UVO
v1.0's two formats (FrameSet COCO instances; the dense / sparse video sets' YouTube-VIS layout) from real coco_mini
images and masks, split counts and AR@k against plain counting and class-agnostic COCOeval, bad input refused."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import COCO_MINI
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from test_eval_recall import BUDGETS
from test_protocols_open_world import _load, _refused, _splits

from ovis.cli import main
from ovis.config import load_recipe
from ovis.data.coco import ann_to_rle
from ovis.data.splits import load_partition, write_splits
from ovis.eval import evaluate
from ovis.eval.synthetic import class_agnostic, synthetic_detections

TRAIN = COCO_MINI / "annotations" / "instances_train2017.json"
VAL = COCO_MINI / "annotations" / "instances_val2017.json"
VIDEOS = 3  # videos of up to FRAMES coco_mini val images of one size each
FRAMES = 4


def _video_data() -> tuple[dict, dict]:
    """(a video-format file as UVO's VideoDenseSet, the same frames as UVO's FrameSet COCO file). Each video is a
    run of coco_mini val images of one size; track k of a video is the k-th non-crowd annotation of each frame (its
    mask null in frames with fewer), labelled with its first frame's COCO category as the dense set labels COCO
    objects. The FrameSet file has one category "object" and the frame ids of docs/protocols.md#17-coco-and-uvo."""
    coco = _load(VAL)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    by_size: dict[tuple[int, int], list[dict]] = {}
    for im in coco["images"]:
        by_size.setdefault((im["height"], im["width"]), []).append(im)
    anns: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        if not a["iscrowd"]:
            anns.setdefault(a["image_id"], []).append(a)
    videos, tracks, frame_images, frame_anns = [], [], [], []
    for v, ((h, w), images) in enumerate(sorted(by_size.items(), key=lambda kv: -len(kv[1]))[:VIDEOS]):
        vid, images = 7 + v, images[:FRAMES]
        files = [f"yt{vid}/{f}.png" for f in range(len(images))]
        videos.append({"id": vid, "height": h, "width": w, "length": len(images), "file_names": files,
                       "ytid": f"yt{vid}"})
        per_frame = [anns.get(im["id"], []) for im in images]
        for k in range(max(map(len, per_frame))):
            tid = 100 * vid + k
            at = [a[k] if k < len(a) else None for a in per_frame]
            rles = [None if a is None else ann_to_rle(a, h, w) for a in at]
            segs = [None if r is None else {"size": r["size"], "counts": r["counts"].decode()} for r in rles]
            first = next(a for a in at if a is not None)
            tracks.append({"id": tid, "video_id": vid, "category_id": first["category_id"], "iscrowd": 0,
                           "height": h, "width": w, "segmentations": segs,
                           "bboxes": [None if a is None else a["bbox"] for a in at],
                           "areas": [None if a is None else a["area"] for a in at]})
            frame_anns += [{"id": tid * 10000 + f, "image_id": vid * 10000 + f, "category_id": 1, "iscrowd": 0,
                            "segmentation": s, "bbox": a["bbox"], "area": a["area"]}
                           for f, (a, s) in enumerate(zip(at, segs)) if a is not None]
        frame_images += [{"id": vid * 10000 + f, "file_name": file, "height": h, "width": w}
                         for f, file in enumerate(files)]
    used = sorted({t["category_id"] for t in tracks})
    video_file = {"info": {"description": "UVO-format test file"}, "videos": videos, "annotations": tracks,
                  "categories": [{"id": c, "name": names[c]} for c in used]}
    frame_file = {"images": frame_images, "annotations": frame_anns,
                  "categories": [{"id": 1, "name": "object", "supercategory": "object"}]}
    return video_file, frame_file


@pytest.fixture
def uvo(tmp_path) -> tuple[Path, Path, dict]:
    video, frames = _video_data()
    (tmp_path / "UVO_video_val_dense.json").write_text(json.dumps(video))
    (tmp_path / "UVO_frame_val.json").write_text(json.dumps(frames))
    return tmp_path / "UVO_video_val_dense.json", tmp_path / "UVO_frame_val.json", frames


def _min_side_ok(im: dict) -> bool:
    return min(im["width"], im["height"]) >= 32


@pytest.mark.parametrize("which", ["video", "frames"])
def test_coco_uvo_split_counts_match_plain_counting(which, uvo, tmp_path):
    video, frame_file, frames = uvo
    table = write_splits("coco_uvo", TRAIN, video if which == "video" else frame_file, tmp_path / "splits")
    train = _load(TRAIN)
    with_ann = {a["image_id"] for a in train["annotations"]}
    imgs = {im["id"] for im in train["images"] if im["id"] in with_ann and _min_side_ok(im)}
    out = _load(tmp_path / "splits" / "train_base.json")
    assert {im["id"] for im in out["images"]} == imgs
    assert len(out["annotations"]) == sum(a["image_id"] in imgs for a in train["annotations"])
    val = _load(tmp_path / "splits" / "val.json")
    # every frame and every mask of every track, under the ids the frames file gives them; nothing ignored
    assert {(im["id"], im["file_name"], im["height"], im["width"]) for im in val["images"]} == {
        (im["id"], im["file_name"], im["height"], im["width"]) for im in frames["images"]}
    assert {a["id"]: (a["image_id"], a["bbox"], a["area"]) for a in val["annotations"]} == {
        a["id"]: (a["image_id"], a["bbox"], a["area"]) for a in frames["annotations"]}
    assert not any(a.get("ignored_split") for a in val["annotations"])
    assert table["val.json"]["images"] == len(frames["images"]) > FRAMES
    part = _load(tmp_path / "splits" / "partition.json")
    src = _load(video if which == "video" else frame_file)
    assert part["eval_seen"] == [] and {c["id"] for c in part["eval_unseen"]} == {c["id"] for c in src["categories"]}
    assert len(part["base"]) == 80 and part["novel"] == []
    COCO(str(tmp_path / "splits" / "val.json"))


def _cocoeval_recall(gt: dict, dets: list[dict], iou_type: str, tmp_path: Path) -> dict[str, float]:
    """Class-agnostic COCOeval (useCats 0) AR@k and AR_s/m/l@100, straight from pycocotools."""
    path = tmp_path / "frames_gt.json"
    path.write_text(json.dumps(gt))
    drop = "bbox" if iou_type == "segm" else "segmentation"
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(path))
        ev = COCOeval(coco_gt, coco_gt.loadRes([{k: v for k, v in d.items() if k != drop} for d in dets]), iou_type)
        ev.params.useCats = 0
        ev.params.maxDets = list(BUDGETS)
        ev.evaluate()
        ev.accumulate()
    out = {}
    for a, size in enumerate(("", "_s", "_m", "_l")):
        for i, k in enumerate(BUDGETS):
            if size and k != 100:
                continue
            s = ev.eval["recall"][:, 0, a, i]
            out[f"AR{size}@{k}"] = float(np.mean(s[s > -1])) if (s > -1).any() else -1.0
    return out


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_coco_uvo_ar_is_class_agnostic_cocoeval_on_every_instance(iou_type, uvo, tmp_path):
    video, frame_file, frames = uvo
    dets = class_agnostic(synthetic_detections(frames, per_image=30, seed=3, duplicates=2), 1)
    expected = _cocoeval_recall(frames, dets, iou_type, tmp_path)
    assert 0 < expected["AR@10"] < expected["AR@100"] < 1
    write_splits("coco_uvo", TRAIN, video, tmp_path / "splits")
    video_cats = [c["id"] for c in _load(video)["categories"]]
    for gt, partition, cat in ((video, None, video_cats[0]), (frame_file, None, 1),
                               (tmp_path / "splits" / "val.json", tmp_path / "splits" / "partition.json", video_cats[-1])):
        res = evaluate("coco_uvo", gt, class_agnostic(dets, cat), iou_type, partition=partition)
        assert res["num_seen_gt"] == 0 and res["num_unseen_gt"] == len(frames["annotations"])
        for key, value in expected.items():
            got = res["metrics"][key]
            assert (got is None and value == -1) or got == pytest.approx(value, abs=1e-12), (gt, key)


def test_cli_splits_then_eval_on_the_dense_video_file(uvo, tmp_path, capsys):
    video, _, frames = uvo
    out = tmp_path / "splits"
    assert main(_splits("coco_uvo", TRAIN, video, out)) == 0
    assert "coco_uvo" in capsys.readouterr().out
    dets = tmp_path / "dets.json"
    cat = _load(video)["categories"][0]["id"]
    dets.write_text(json.dumps(class_agnostic(synthetic_detections(frames, per_image=20, seed=1), cat)))
    for gt in (out / "val.json", video):
        assert main(["eval", "--protocol", "coco_uvo", "--gt", str(gt), "--detections", str(dets), "--iou-type",
                     "bbox"]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["protocol"] == "coco_uvo" and 0 < summary["metrics"]["AR@100"] < 1


def _break(video: dict, how: str) -> tuple[dict, tuple[str, ...]]:
    track = video["annotations"][2]
    tid, vid = track["id"], track["video_id"]
    if how == "length":
        track["segmentations"] = track["segmentations"][:-1]
        return video, (f"annotation {tid}", f"video {vid}", "'segmentations'", "one per frame")
    if how == "bbox":
        f = next(i for i, s in enumerate(track["segmentations"]) if s is not None)
        track["bboxes"][f] = None
        return video, (f"annotation {tid}", f"frame {f}", "'bboxes'")
    if how == "video":
        track["video_id"] = 999
        return video, (f"annotation {tid}", "'video_id' 999")
    # a mask of the wrong size: validate_coco names the composed ids (track * 10000 + frame, video * 10000 + frame)
    f = next(i for i, s in enumerate(track["segmentations"]) if s is not None)
    track["segmentations"][f] = {"size": [1, 1], "counts": "1"}
    return video, (f"annotation {tid * 10000 + f}", f"image {vid * 10000 + f}", "RLE size")


@pytest.mark.parametrize("how", ["length", "bbox", "video", "mask"])
def test_cli_refuses_a_broken_video_file(how, tmp_path, capsys):
    video, words = _break(_video_data()[0], how)
    bad = tmp_path / "UVO_broken.json"
    bad.write_text(json.dumps(video))
    out = tmp_path / "splits"
    out.mkdir()
    (out / "keep.txt").write_text("earlier output")
    _refused(_splits("coco_uvo", TRAIN, bad, out), capsys, out, "UVO_broken.json", *words)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": 70000, "category_id": video["categories"][0]["id"],
                                 "bbox": [1, 1, 5, 5], "score": 0.5}]))
    evaluated = tmp_path / "eval"
    _refused(["eval", "--protocol", "coco_uvo", "--gt", str(bad), "--detections", str(dets), "--iou-type", "bbox",
              "--out", str(evaluated)], capsys, evaluated, "UVO_broken.json", *words)
    assert not (evaluated / "metrics.json").exists()


def test_cli_splits_refuses_a_training_file_that_is_not_coco(uvo, tmp_path, capsys):
    video, frame_file, _ = uvo
    out = tmp_path / "splits"
    _refused(_splits("coco_uvo", frame_file, video, out), capsys, out, "UVO_frame_val.json", "category 1", "person")


def test_recipe_reads_the_sparse_split_and_the_partition_waits_for_the_val_file():
    """ggn_coco_uvo's protocol, top-k, model and paper numbers are checked with the other GGN settings
    (test_protocols_open_world); here its data paths, and a partition without a val file (no UVO category known)."""
    r = load_recipe("ggn_coco_uvo")
    assert r.data.val_instances.endswith("FrameSet/UVO_frame_val.json")
    assert r.data.val_images.endswith("uvo_videos_sparse_frames") and r.data.train_images.endswith("coco/train2017")
    part = load_partition("coco_uvo")
    assert len(part["base"]) == 80 and part["novel"] == part["eval_seen"] == part["eval_unseen"] == []
