"""GGN/OLN stages end to end on tiny synthetic data: teacher → pseudo → baseline + student + OLN → eval."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tiny
import torch
from matplotlib.figure import Figure
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torchvision.models.detection.transform import resize_boxes

from ovis.config import load_recipe
from ovis.data.coco import ann_to_mask, load_coco
from ovis.data.dataset import CocoDetection
from ovis.data.splits import run_splits_stage
from ovis.engine.launch import LaunchError
from ovis.engine.train import CheckpointError
from ovis.methods import all_training_stages, ggn, task_builder
from ovis.methods.ggn import extract
from ovis.methods.ggn import ranker as ranker_module
from ovis.methods.ggn.datasets import pseudo_dataset
from ovis.methods.ggn.ranker import OlnRanker
from ovis.methods.train import run_training
from ovis.pseudo.grouping import Candidate, build_grouping

TINY = {**tiny.GGN, "launch.workers": 1}  # the run below trains in this process: the worker tests' reference


def _recipe(root: Path, **extra):
    return load_recipe("demo_ggn", {**TINY, "data.root": str(root / "demo_data"), **extra})


def _quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP spinning slows them several-fold."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, object]:
    """One tiny GGN run through every stage (shared by the tests below)."""
    root = tmp_path_factory.mktemp("ggn")
    recipe = _recipe(root)
    run_dir = root / "run"
    run_splits_stage(recipe, run_dir)
    ggn.run_teacher(recipe, run_dir, stream=_quiet)
    ggn.run_pseudo(recipe, run_dir, stream=_quiet)
    ggn.run_student(recipe, run_dir, stream=_quiet)
    ggn.run_eval(recipe, run_dir, stream=_quiet)
    return run_dir, recipe


def _copy_until_teacher(run_dir: Path, dst: Path) -> Path:
    for stage in ("splits", "teacher"):
        shutil.copytree(run_dir / stage, dst / stage)
    return dst


def _pseudo_anns(path: Path) -> list[dict]:
    return [a for a in load_coco(path)["annotations"] if a.get("pseudo")]


def test_every_stage_writes_its_contract_files(run):
    run_dir, recipe = run
    expected = [
        "teacher/model_final.pth", "teacher/last.pth", "teacher/metrics.jsonl", "teacher/recipe.yaml",
        "pseudo/train_pseudo.json", "pseudo/stats.json", "pseudo/shards/candidates.0-of-1.json",
        "baseline/model_final.pth", "baseline/metrics.jsonl", "student/model_final.pth", "student/last.pth",
        "oln/model_final.pth", "oln/metrics.jsonl", "oln_baseline/model_final.pth", "oln_baseline/metrics.jsonl",
        "eval/detections.json", "eval/metrics.json", "eval/baseline/detections.json", "eval/student/detections.json",
        "eval/oln/detections.json", "eval/oln_baseline/detections.json",
    ]
    for stage in ("teacher", "pseudo", "student", "eval"):
        expected.append(f"{stage}/stage.json")
    for iou in recipe.eval.iou_types:
        expected += [f"eval/{m}/{iou}/metrics.json" for m in ("baseline", "student", "oln", "oln_baseline")]
    missing = [p for p in expected if not (run_dir / p).is_file()]
    assert not missing
    assert not list((run_dir / "pseudo" / "shards").glob("*.partial.jsonl"))  # progress file gone once complete
    assert (run_dir / "eval/detections.json").read_bytes() == (run_dir / "eval/student/detections.json").read_bytes()


def test_finished_stages_are_skipped(run):
    run_dir, recipe = run
    assert ggn.run_teacher(recipe, run_dir, stream=_quiet)["skipped"]
    assert all(r["skipped"] for r in ggn.run_student(recipe, run_dir, stream=_quiet).values())
    assert ggn.run_pseudo(recipe, run_dir, stream=_quiet) == json.loads((run_dir / "pseudo/stats.json").read_text())


def test_pseudo_gt_is_coco_with_ranked_class_agnostic_masks_that_never_duplicate_seen_gt(run):
    run_dir, recipe = run
    path = run_dir / "pseudo" / "train_pseudo.json"
    coco = COCO(str(path))  # pycocotools loads it
    base = load_coco(run_dir / "splits" / "train_base.json")
    merged = load_coco(path)
    assert merged["annotations"][: len(base["annotations"])] == base["annotations"]  # base GT first, unchanged
    pseudo = [a for a in merged["annotations"] if a.get("pseudo")]
    assert pseudo and len(merged["annotations"]) == len(base["annotations"]) + len(pseudo)
    assert len({a["id"] for a in merged["annotations"]}) == len(merged["annotations"])
    seen_min = min(c["id"] for c in base["categories"])
    per_image: dict[int, list[dict]] = {}
    for a in pseudo:
        assert {"pseudo", "score", "rank", "gt_iou", "segmentation", "bbox", "area"} <= set(a)
        assert a["pseudo"] is True and a["category_id"] == seen_min and a["gt_iou"] < recipe.pseudo.gt_iou_thresh
        per_image.setdefault(a["image_id"], []).append(a)
    assert max(len(v) for v in per_image.values()) <= recipe.pseudo.top_k
    for image_id, anns in per_image.items():
        ranks = [a["rank"] for a in anns]
        assert ranks == sorted(ranks)
        info = coco.imgs[image_id]
        gts = [ann_to_mask(g, info["height"], info["width"]) for g in base["annotations"] if g["image_id"] == image_id]
        for a in anns:  # the stored gt_iou is the mask IoU with the image's seen GT
            m = coco.annToMask(a).astype(bool)
            iou = max((m & g).sum() / (m | g).sum() for g in gts)
            assert iou == pytest.approx(a["gt_iou"], abs=1e-5)
            assert a["area"] == m.sum()


def test_pseudo_stats_report_counts_and_unseen_recall(run):
    run_dir, recipe = run
    stats = json.loads((run_dir / "pseudo" / "stats.json").read_text())
    pseudo = _pseudo_anns(run_dir / "pseudo" / "train_pseudo.json")
    assert stats["images"] == recipe.pseudo.max_images
    assert stats["kept"] == len(pseudo) and stats["kept_per_image"] == pytest.approx(len(pseudo) / stats["images"])
    assert stats["candidates"] >= stats["kept"] and stats["seconds_per_image"] > 0
    # unseen GT of the processed images, straight from the original training file
    orig = load_coco(Path(recipe.data.root) / recipe.data.train_instances)
    unseen_ids = {c["id"] for c in json.loads((run_dir / "splits/partition.json").read_text())["novel"]}
    ids = set(CocoDetection(run_dir / "splits/train_base.json", Path(recipe.data.root) / "train",
                            class_agnostic=True, skip_empty=True, min_size=32).ids[: recipe.pseudo.max_images])
    unseen = [a for a in orig["annotations"] if a["image_id"] in ids and a["category_id"] in unseen_ids
              and not a["iscrowd"]]
    assert stats["unseen_gt"] == len(unseen) > 0
    hits = 0
    for g in unseen:
        info = next(im for im in orig["images"] if im["id"] == g["image_id"])
        gm = ann_to_mask(g, info["height"], info["width"])
        masks = [ann_to_mask(a, info["height"], info["width"]) for a in pseudo if a["image_id"] == g["image_id"]]
        ious = [(gm & m).sum() / (gm | m).sum() for m in masks]
        hits += max(ious, default=0.0) >= 0.5
    assert stats["unseen_recall@0.5"] == pytest.approx(hits / len(unseen))
    assert 0.0 <= stats["unseen_recall@0.5"] <= stats["unseen_recall@0.5_candidates"] <= 1.0


def test_two_shards_run_separately_merge_to_the_unsharded_result(run, tmp_path):
    run_dir, recipe = run
    other = _copy_until_teacher(run_dir, tmp_path / "run")
    # the second shard groups in a worker process: the pool path gives the same candidates
    first = ggn.run_pseudo(recipe, other, shard=1, num_shards=2, stream=_quiet)
    assert first == {"merged": False, "num_shards": 2, "missing_shards": [0]}
    assert not (other / "pseudo" / "train_pseudo.json").exists()
    pooled = _recipe(Path(recipe.data.root).parent, **{"pseudo.workers": 1})
    stats = ggn.run_pseudo(pooled, other, shard=0, num_shards=2, stream=_quiet)
    assert stats["shards"] == 2
    assert load_coco(other / "pseudo/train_pseudo.json") == load_coco(run_dir / "pseudo/train_pseudo.json")
    # merging again is idempotent
    before = (other / "pseudo/train_pseudo.json").read_bytes()
    ggn.merge_pseudo(recipe, other, 2)
    assert (other / "pseudo/train_pseudo.json").read_bytes() == before


def test_interrupted_extraction_resumes_and_finished_images_are_skipped(run, tmp_path, monkeypatch):
    run_dir, recipe = run
    other = _copy_until_teacher(run_dir, tmp_path / "run")
    recipe1 = _recipe(Path(recipe.data.root).parent, **{"pseudo.save_every": 1})
    real = extract.build_grouping  # what extract_shard calls
    calls: list[int] = []

    def crash_on_third(affinity, params):
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        calls.append(1)
        return real(affinity, params)

    monkeypatch.setattr(extract, "build_grouping", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        ggn.run_pseudo(recipe1, other, stream=_quiet)
    partial = other / "pseudo/shards/candidates.0-of-1.partial.jsonl"
    lines = partial.read_text().splitlines()
    assert len(lines) == 1 + 2  # header + the two finished images
    with open(partial, "a") as f:
        f.write('{"image_id": 99, "cand')  # a line torn by the crash is ignored

    def count(affinity, params):
        calls.append(1)
        return real(affinity, params)

    monkeypatch.setattr(extract, "build_grouping", count)
    calls.clear()
    ggn.run_pseudo(recipe1, other, stream=_quiet)
    assert len(calls) == recipe.pseudo.max_images - 2
    assert _pseudo_anns(other / "pseudo/train_pseudo.json") == _pseudo_anns(run_dir / "pseudo/train_pseudo.json")
    # a finished shard is reused even when the merged output is gone
    (other / "pseudo/train_pseudo.json").unlink()
    calls.clear()
    messages: list[str] = []
    ggn.run_pseudo(recipe1, other, stream=messages.append)
    assert calls == [] and any("reused" in m for m in messages)
    assert (other / "pseudo/train_pseudo.json").is_file()


def test_the_oln_ranker_ranks_every_candidate_before_the_nms(run, tmp_path):
    run_dir, recipe = run
    ckpt = run_dir / "oln_baseline/model_final.pth"
    ranked = _recipe(Path(recipe.data.root).parent, **{"pseudo.oln_ranker": str(ckpt)})
    other = _copy_until_teacher(run_dir, tmp_path / "run")
    shutil.copytree(run_dir / "pseudo", other / "pseudo")  # the PA ranking's shards are not reused
    messages: list[str] = []
    stats = ggn.run_pseudo(ranked, other, stream=messages.append)
    assert not any("reused" in m for m in messages) and stats["images"] == recipe.pseudo.max_images
    assert any(f"ranked by the OLN ranker {ckpt}" in m for m in messages) and stats["oln_ranker"] == str(ckpt)
    records = extract.sharding(ranked, other, 1).records()
    # the first image, by hand: the grouping's every candidate, scored pa / 2 + r + r · c, then the NMS
    ds, ids = pseudo_dataset(recipe, run_dir)
    image, _ = ds[0]
    with torch.inference_mode():
        aff = ggn.load_model(recipe, run_dir, "teacher")([image])[0][0].float().numpy()
    params = ggn.grouping_params(recipe)
    grouping = build_grouping(aff, params)
    r, c = OlnRanker(ranked, ckpt).box_scores(image, torch.from_numpy(grouping.boxes))
    expect = [x for x in grouping.select(params, grouping.score / 2 + (r + r * c).double().numpy()) if x.area > 0]
    stored = records[ids[0]]["candidates"]
    assert [x["bbox"] for x in stored] == [x.bbox for x in expect] and len(stored) > 0
    assert [x["score"] for x in stored] == pytest.approx([x.score for x in expect], abs=1e-6)
    assert (r > 0).all() and (r <= 1).all() and (c > 0).all() and (c <= 1).all()
    hist = ggn.pseudo_figures(ranked, other, n=1)[1].axes[0]
    assert hist.get_xlabel() == "score = PA score / 2 + r + r · c (OLN ranker)"
    # done: skipped; a ranker file replaced since (here: rewritten): the candidates are extracted afresh
    messages.clear()
    assert ggn.run_pseudo(ranked, other, stream=messages.append) == stats and messages == []
    copy = tmp_path / "ranker.pth"
    shutil.copy(ckpt, copy)
    moved = _recipe(Path(recipe.data.root).parent, **{"pseudo.oln_ranker": str(copy)})
    ggn.run_pseudo(moved, other, stream=_quiet)
    before = (other / "pseudo/train_pseudo.json").read_bytes()
    copy.write_bytes(copy.read_bytes())
    messages.clear()
    ggn.run_pseudo(moved, other, stream=messages.append)
    assert any("to extract" in m and "0 done before" in m for m in messages), messages
    assert (other / "pseudo/train_pseudo.json").read_bytes() == before


def test_the_oln_ranker_scores_a_box_by_its_best_anchor_and_alone(run, tmp_path, monkeypatch):
    run_dir, recipe = run
    ranker = OlnRanker(recipe, run_dir / "oln_baseline/model_final.pth")
    image, _ = pseudo_dataset(recipe, run_dir)[0][0]
    model = ranker.model
    with torch.no_grad():
        images, _ = model.transform([image])
        levels = list(model.backbone(images.tensors).values())
        anchors = model.rpn.anchor_generator(images, levels)[0]
        logits = torch.cat([o.permute(0, 2, 3, 1).reshape(-1) for o in model.rpn.head(levels)[0]])
    h, w = images.image_sizes[0]
    inside = torch.nonzero((anchors[:, :2] >= 0).all(1) & (anchors[:, 2] <= w) & (anchors[:, 3] <= h)).flatten()
    pick = inside[torch.linspace(0, len(inside) - 1, 7).long()]
    boxes = resize_boxes(anchors[pick], [h, w], list(image.shape[-2:]))  # back to the image's pixels
    r, c = ranker.box_scores(image, boxes)
    torch.testing.assert_close(c, logits[pick].sigmoid())  # an anchor's best anchor is itself
    r_rev, c_rev = ranker.box_scores(image, boxes.flip(0))
    torch.testing.assert_close(r_rev, r.flip(0))  # each box is scored on its own
    torch.testing.assert_close(c_rev, c.flip(0))
    monkeypatch.setattr(ranker_module, "IOU_BLOCK", 1)  # one box's IoUs at a time: the same
    torch.testing.assert_close(ranker.box_scores(image, boxes)[1], c)
    assert [len(t) for t in ranker.box_scores(image, boxes[:0])] == [0, 0]
    # an OLN-Box checkpoint (no mask head, upstream's ranker) scores the same
    state = torch.load(run_dir / "oln_baseline/model_final.pth", weights_only=True)
    box_only = {k: v for k, v in state["model"].items() if "mask" not in k}
    assert len(box_only) < len(state["model"])
    torch.save({"model": box_only}, tmp_path / "oln_box.pth")
    r_box, c_box = OlnRanker(recipe, tmp_path / "oln_box.pth").box_scores(image, boxes)
    torch.testing.assert_close(r_box, r)
    torch.testing.assert_close(c_box, c)


def test_candidates_at_the_affinity_input_size_are_resized_to_the_image():
    big = np.zeros((8, 8), bool)
    big[2:6, 3:7] = True  # at half size: rows 1-2 whole, columns 1 and 3 half covered (kept), 2 whole
    thin = np.zeros((8, 8), bool)
    thin[0, 0] = True  # a quarter of one pixel: dropped
    cands = [Candidate(big, 0.9, 0, [3.0, 2.0, 4.0, 4.0], 16), Candidate(thin, 0.5, 1, [0.0, 0.0, 1.0, 1.0], 1)]
    small = extract.at_image_size(cands, 4, 4)
    expect = np.zeros((4, 4), bool)
    expect[1:3, 1:4] = True
    assert np.array_equal(small[0].mask, expect) and small[0].bbox == [1.0, 1.0, 3.0, 2.0] and small[0].area == 6
    assert not small[1].mask.any() and small[1].area == 0 and small[1].bbox == [0.0, 0.0, 0.0, 0.0]
    assert [(c.score, c.rank) for c in small] == [(0.9, 0), (0.5, 1)]
    assert extract.at_image_size(cands, 8, 8) is cands


def test_an_affinity_input_scale_groups_at_that_size_and_stores_masks_at_the_image_size(run, tmp_path):
    run_dir, recipe = run
    root = Path(recipe.data.root).parent
    ckpt = run_dir / "oln_baseline/model_final.pth"
    scaled = _recipe(root, **{"model.affinity_input_scale": 2.0, "pseudo.oln_ranker": str(ckpt)})
    other = _copy_until_teacher(run_dir, tmp_path / "run")  # the PA network's weights do not depend on the scale
    stats = ggn.run_pseudo(scaled, other, stream=_quiet)
    assert stats["images"] == recipe.pseudo.max_images
    path = other / "pseudo" / "train_pseudo.json"
    coco = COCO(str(path))
    pseudo = [a for a in load_coco(path)["annotations"] if a.get("pseudo")]
    assert pseudo
    for a in pseudo:  # masks at the image's size, with their own area and tight box
        info = coco.imgs[a["image_id"]]
        assert a["segmentation"]["size"] == [info["height"], info["width"]]
        m = coco.annToMask(a).astype(bool)
        ys, xs = np.nonzero(m)
        assert a["area"] == m.sum() > 0
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
    # the first image, by hand: affinity at twice the size, grouped there, ranked with boxes halved, resized back
    ds, ids = pseudo_dataset(scaled, other)
    image, target = ds[0]
    with torch.inference_mode():
        aff = ggn.load_model(scaled, other, "teacher")([image])[0][0].float().numpy()
    assert aff.shape == (2 * image.shape[1], 2 * image.shape[2])
    params = ggn.grouping_params(scaled)
    grouping = build_grouping(aff, params)
    ranker = OlnRanker(scaled, ckpt)
    r, c = ranker.box_scores(image, torch.from_numpy(grouping.boxes) / 2)
    np.testing.assert_allclose(ranker.scores(image, grouping), grouping.score / 2 + (r + r * c).double().numpy())
    expect = [x for x in extract.at_image_size(grouping.select(params, ranker.scores(image, grouping)),
                                               *target["masks"].shape[1:]) if x.area > 0]
    stored = extract.sharding(scaled, other, 1).records()[ids[0]]["candidates"]
    assert [x["bbox"] for x in stored] == [x.bbox for x in expect] and len(stored) > 0
    assert [x["area"] for x in stored] == [x.area for x in expect]


def test_the_oln_ranker_must_exist_and_fit_the_recipe(run, tmp_path):
    run_dir, recipe = run
    root = Path(recipe.data.root).parent
    other = _copy_until_teacher(run_dir, tmp_path / "run")
    missing = _recipe(root, **{"pseudo.oln_ranker": str(tmp_path / "nope.pth")})
    with pytest.raises(FileNotFoundError, match=r"pseudo.oln_ranker='.*nope.pth': file not found .*\(ovis train --stage oln_baseline\)"):
        ggn.run_pseudo(missing, other, stream=_quiet)
    assert not (other / "pseudo").exists()  # nothing written
    folder = _recipe(root, **{"pseudo.oln_ranker": str(run_dir / "oln_baseline")})
    with pytest.raises(FileNotFoundError, match="oln_baseline': a folder, not a file; train an OLN"):
        ggn.run_pseudo(folder, other, stream=_quiet)
    wrong = _recipe(root, **{"pseudo.oln_ranker": str(run_dir / "teacher/model_final.pth")})
    with pytest.raises(CheckpointError, match="pseudo.oln_ranker: .*teacher/model_final.pth does not fit the recipe's "
                                              "model .*; train an OLN on base GT with this recipe's model"):
        ggn.run_pseudo(wrong, other, stream=_quiet)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    text = _recipe(root, **{"pseudo.oln_ranker": str(tmp_path / "notes.txt")})
    with pytest.raises(CheckpointError, match="pseudo.oln_ranker: cannot read checkpoint .*notes.txt .*; train an OLN"):
        ggn.run_pseudo(text, other, stream=_quiet)
    assert not (other / "pseudo").exists()


def test_baseline_sees_base_gt_only_and_student_sees_pseudo_gt_too(run):
    run_dir, recipe = run
    base = ggn.baseline_task(recipe, run_dir, "baseline")
    student = ggn.student_task(recipe, run_dir, "student")
    assert not any(a.get("pseudo") for a in base.dataset.coco["annotations"])
    assert any(a.get("pseudo") for a in student.dataset.coco["annotations"])
    assert base.dataset.ids == student.dataset.ids and base.cfg is recipe.student
    _, target = student.dataset[0]
    assert set(target["labels"].tolist()) == {1}  # one foreground class
    assert task_builder("ggn", "baseline") is task_builder("oln", "baseline") is ggn.baseline_task
    assert task_builder("ggn", "oln") is task_builder("oln", "oln") is ggn.oln_task
    assert task_builder("ggn", "oln_baseline") is ggn.oln_baseline_task
    assert {"baseline", "oln", "oln_baseline"} <= set(all_training_stages())


def test_student_needs_pseudo_gt_and_pseudo_needs_a_teacher(run, tmp_path):
    run_dir, recipe = run
    other = tmp_path / "run"
    shutil.copytree(run_dir / "splits", other / "splits")
    with pytest.raises(FileNotFoundError, match="run the teacher stage first"):
        ggn.run_pseudo(recipe, other, stream=_quiet)
    with pytest.raises(FileNotFoundError, match="run the pseudo stage first"):
        ggn.student_task(recipe, other, "student")


def test_eval_reports_baseline_student_and_oln_ar_at_k(run):
    run_dir, recipe = run
    for which in ("baseline", "student", "oln", "oln_baseline"):
        for iou in recipe.eval.iou_types:
            result = json.loads((run_dir / "eval" / which / iou / "metrics.json").read_text())
            assert result["protocol"] == "demo_open_world" and result["model"] == which
            assert {"AR@10", "AR@100", "AR@1000", "AUC"} <= set(result["metrics"])
            assert result["num_images"] == recipe.eval.max_images
        dets = json.loads((run_dir / "eval" / which / "detections.json").read_text())
        assert dets and len({d["image_id"] for d in dets}) <= recipe.eval.max_images
        val_cat = load_coco(run_dir / "splits/val.json")["categories"][0]["id"]
        assert {d["category_id"] for d in dets} == {val_cat}
        per_image = np.bincount([d["image_id"] for d in dets])
        assert per_image.max() <= recipe.model.box_detections_per_img
        assert mask_utils.decode(dets[0]["segmentation"] | {"counts": dets[0]["segmentation"]["counts"].encode()}).any()
    assert len(ggn.run_eval(recipe, run_dir, stream=_quiet)) == 4 * len(recipe.eval.iou_types)  # skipped: read back


def test_eval_writes_baseline_ggn_and_oln_side_by_side(run):
    from ovis.viz.curves import find_eval_results

    run_dir, recipe = run
    summary = json.loads((run_dir / "eval/metrics.json").read_text())
    assert set(summary) == {"protocol", "baseline", "ggn", "oln", "oln_baseline"}
    assert summary["protocol"] == "demo_open_world"
    assert recipe.model.mask and set(recipe.eval.iou_types) == {"segm", "bbox"}
    for key, which in (("baseline", "baseline"), ("ggn", "student"), ("oln", "oln"), ("oln_baseline", "oln_baseline")):
        assert set(summary[key]) == {"segm", "bbox"}
        for iou in ("segm", "bbox"):
            per_model = json.loads((run_dir / "eval" / which / iou / "metrics.json").read_text())
            assert summary[key][iou] == per_model["metrics"]
    labels = {r["label"] for r in find_eval_results(run_dir)}  # the summary is skipped, not an error
    assert labels == {f"{m}/{iou}" for m in ("baseline", "student", "oln", "oln_baseline") for iou in ("segm", "bbox")}
    table = ggn.comparison_table(ggn.run_eval(recipe, run_dir, stream=_quiet), recipe)
    header = table.splitlines()[0]
    assert header == ("| metric | baseline (segm) | GGN (segm) | OLN baseline (segm) | OLN (segm) | baseline (bbox) "
                      "| GGN (bbox) | OLN baseline (bbox) | OLN (bbox) |")


def test_evaluate_models_scores_the_chosen_detectors_elsewhere_with_the_same_metrics(run, tmp_path):
    run_dir, recipe = run
    results = ggn.evaluate_models(recipe, run_dir, ("baseline",), tmp_path, stream=_quiet)
    assert [(r["model"], r["iou_type"]) for r in results] == [("baseline", t) for t in recipe.eval.iou_types]
    for r in results:
        written = json.loads((tmp_path / "baseline" / r["iou_type"] / "metrics.json").read_text())
        in_run = json.loads((run_dir / "eval" / "baseline" / r["iou_type"] / "metrics.json").read_text())
        assert written["metrics"] == in_run["metrics"] == r["metrics"]
    assert not (tmp_path / "student").exists()
    with pytest.raises(ValueError, match="PA network"):
        ggn.evaluate_models(recipe, run_dir, ("teacher",), tmp_path, stream=_quiet)


def test_detectors_evaluated_in_worker_processes_give_the_same_files(run, tmp_path):
    """eval.workers=2: the four detectors' inference in two spawned one-thread processes writes the very
    detections the one-thread run in this process wrote."""
    run_dir, recipe = run
    two = dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, workers=2))
    results = ggn.evaluate_models(two, run_dir, ggn.MODELS[1:], tmp_path, stream=_quiet)
    assert sorted({r["model"] for r in results}) == sorted(ggn.MODELS[1:])
    for which in ggn.MODELS[1:]:
        assert (tmp_path / which / "detections.json").read_bytes() == (run_dir / "eval" / which / "detections.json").read_bytes()


def _with_workers(recipe, n: int):
    return dataclasses.replace(recipe, launch=dataclasses.replace(recipe.launch, workers=n))


def _copy_until_pseudo(run_dir: Path, dst: Path) -> Path:
    for stage in ("splits", "teacher", "pseudo"):
        shutil.copytree(run_dir / stage, dst / stage)
    return dst


def test_detectors_trained_in_worker_processes_give_the_same_checkpoints(run, tmp_path):
    """launch.workers=2: the four detectors trained in two spawned one-thread processes hold the very weights
    the one-thread run in this process trained; the results keep their order, and the workers' log lines
    reach the caller's stream, each under its training stage's name."""
    run_dir, recipe = run
    other = _copy_until_pseudo(run_dir, tmp_path / "run")
    lines: list[str] = []
    results = ggn.run_student(_with_workers(recipe, 2), other, stream=lines.append)
    assert list(results) == list(ggn.MODELS[1:]) and not any(r["skipped"] for r in results.values())
    for which in results:
        mine, theirs = (torch.load(d / which / "model_final.pth", weights_only=True)["model"] for d in (other, run_dir))
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
        assert any(line.startswith(f"{which}: trained 2 iterations") for line in lines)
    assert ggn.run_student(recipe, other, stream=_quiet) == {k: {**v, "skipped": True} for k, v in results.items()}


def test_a_training_stage_failing_in_a_worker_is_named_and_the_others_keep_their_checkpoints(run, tmp_path):
    run_dir, recipe = run
    other = _copy_until_pseudo(run_dir, tmp_path / "run")
    (other / "oln").mkdir()
    (other / "oln" / "model_final.pth").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(LaunchError, match=r"training stage 'oln' failed in a launch\.workers process: CheckpointError: "
                                          r"cannot read checkpoint .*oln/model_final\.pth"):
        run_training(_with_workers(recipe, 2), "student", other, stream=_quiet, stages=["baseline", "oln"])
    assert (other / "baseline" / "model_final.pth").is_file()
    assert not (other / "student" / "stage.json").exists()


def test_models_load_in_eval_mode(run):
    run_dir, recipe = run
    from ovis.models.heads import OLNRegionProposalNetwork

    for which in ("teacher", "baseline", "student", "oln", "oln_baseline"):
        assert not ggn.load_model(recipe, run_dir, which).training
    for which in ("oln", "oln_baseline"):
        assert isinstance(ggn.load_model(recipe, run_dir, which).rpn, OLNRegionProposalNetwork)
    assert not isinstance(ggn.load_model(recipe, run_dir, "student").rpn, OLNRegionProposalNetwork)
    with pytest.raises(ValueError, match="use one of"):
        ggn.load_model(recipe, run_dir, "grounding")


def test_figures_and_browser(run):
    run_dir, recipe = run
    figs = ggn.teacher_figures(recipe, run_dir, n=1) + ggn.pseudo_figures(recipe, run_dir, n=1)
    figs += ggn.student_figures(recipe, run_dir, n=1)
    assert len(figs) == 4 and all(isinstance(f, Figure) for f in figs)
    browser = ggn.pseudo_browser(recipe, run_dir)
    assert browser.panel_names == ["pseudo (top-k)", "unseen GT (held out)"]
    assert len(browser.images) == recipe.pseudo.max_images


def test_shards_come_from_arguments_torchrun_or_a_slurm_array(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
        monkeypatch.delenv(var, raising=False)
    assert ggn.resolve_shards(None, None) == [(0, 1)]
    assert ggn.resolve_shards(None, None, default_shards=3) == [(0, 3), (1, 3), (2, 3)]
    assert ggn.resolve_shards(2, 4) == [(2, 4)]
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "6")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert ggn.resolve_shards(None, None) == [(1, 3)]
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert ggn.resolve_shards(None, None) == [(3, 8)]
    with pytest.raises(ValueError, match="both shard and num_shards"):
        ggn.resolve_shards(1, None)
    with pytest.raises(ValueError, match="0 ≤ shard < num_shards"):
        ggn.resolve_shards(2, 2)


def test_oln_recipe_trains_oln_heads_with_and_without_pseudo_gt(run):
    from ovis.models.heads import OLNRegionProposalNetwork

    run_dir, recipe = run
    oln = _recipe(Path(recipe.data.root).parent, method="oln", **{"model.heads": "oln", "model.mask": False})
    for build in (ggn.baseline_task, ggn.student_task):
        task = build(oln, run_dir, "baseline")
        assert isinstance(task.model.rpn, OLNRegionProposalNetwork) and not task.dataset.with_masks
        images, targets = zip(*(task.dataset[i] for i in range(2)))
        losses = task.model.train()(list(images), list(targets))
        assert all(torch.isfinite(v) for v in losses.values())
    assert any(task.dataset[i][1]["pseudo"].any() for i in range(len(task.dataset)))  # the student's has pseudo boxes
    assert not ggn.trains_oln_variant(oln) and ggn.trains_oln_variant(recipe)  # an OLN student needs no OLN variant
    variant = ggn.oln_task(recipe, run_dir, "oln")  # the GGN run's OLN variant keeps the recipe's masks
    assert isinstance(variant.model.rpn, OLNRegionProposalNetwork) and variant.dataset.with_masks
    student = ggn.student_task(recipe, run_dir, "student")
    assert variant.dataset.coco["annotations"] == student.dataset.coco["annotations"]
    base_variant = ggn.oln_baseline_task(recipe, run_dir, "oln_baseline")  # and without pseudo GT
    assert isinstance(base_variant.model.rpn, OLNRegionProposalNetwork) and base_variant.dataset.with_masks
    baseline = ggn.baseline_task(recipe, run_dir, "baseline")
    assert base_variant.dataset.coco["annotations"] == baseline.dataset.coco["annotations"]
    assert not any(a.get("pseudo") for a in base_variant.dataset.coco["annotations"])
