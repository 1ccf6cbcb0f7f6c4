"""CPL cross-modal pseudo masks: top-1 region per caption word, uncertainty, sharding, resume, stats."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from ovis.config import ModelConfig
from ovis.data.captions import Vocabulary
from ovis.data.coco import ann_to_mask
from ovis.data.splits import run_splits_stage
from ovis.methods import load_recipe
from ovis.methods.cpl import run_pseudo
from ovis.models.detector import build_detector
from ovis.pseudo.cross_modal import (
    PseudoLabeler,
    gt_by_image_and_class,
    hits_gt,
    mask_uncertainty,
    pseudo_image_ids,
    pseudo_sharding,
    pseudo_vocabulary,
    select_proposals,
)

DIM = 4


def test_hits_gt_per_mask_at_iou_half_and_gt_index_skips_crowd_and_other_classes():
    import numpy as np
    from pycocotools import mask as mask_utils

    def rle(x0, x1):
        m = np.zeros((10, 10), np.uint8)
        m[:, x0:x1] = 1
        return mask_utils.encode(np.asfortranarray(m))

    box = lambda x0, x1: [[x0, 0, x1, 0, x1, 10, x0, 10]]  # noqa: E731 - polygon of columns x0..x1
    gt = {"annotations": [
        {"image_id": 1, "category_id": 5, "segmentation": box(0, 4), "iscrowd": 0},
        {"image_id": 1, "category_id": 5, "segmentation": box(6, 10), "iscrowd": 1},
        {"image_id": 1, "category_id": 6, "segmentation": box(6, 10), "iscrowd": 0},
        {"image_id": 2, "category_id": 5, "segmentation": box(6, 10), "iscrowd": 0}]}
    index = gt_by_image_and_class(gt, {5})
    assert {k: len(v) for k, v in index.items()} == {(1, 5): 1, (2, 5): 1}
    assert gt_by_image_and_class(gt, {5}, {2}).keys() == {(2, 5)}
    # columns 0-4 vs GT 0-4: IoU 1; 0-8: 0.5; 0-9: 4/9 < 0.5; 6-10: 0
    assert hits_gt([rle(0, 4), rle(0, 8), rle(0, 9), rle(6, 10)], index[(1, 5)], 10, 10).tolist() == [True, True, False, False]
    assert hits_gt([rle(0, 4)], [], 10, 10).tolist() == [False]


def test_select_proposals_top1_per_word_and_shared_picks():
    regions = torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 0.5]])
    words = F.normalize(torch.tensor([[0.1, 1.0, 0, 0], [0, 0.9, 0.1, 0], [0, 0, 0, 1.0], [1.0, 0, 0, 0]]), dim=1)
    index, score = select_proposals(regions, words)
    assert index.tolist() == [1, 1, 3, 0]  # words 0 and 1 share proposal 1; no threshold on word 2's weak match
    assert torch.allclose(score, (regions @ words.T).max(0).values)
    with pytest.raises(ValueError, match="no proposals"):
        select_proposals(torch.zeros(0, DIM), words)


def test_mask_uncertainty_extremes():
    probs = torch.stack([torch.ones(1, 4, 4), torch.zeros(1, 4, 4), torch.full((1, 4, 4), 0.5), torch.full((1, 4, 4), 0.75)])
    assert torch.allclose(mask_uncertainty(probs), torch.tensor([0.0, 0.0, 1.0, 0.5]))


class FixedEncoder:
    """Word → fixed unit vector by name (the labeler L2-normalises through encode)."""

    table = {"ball": [1.0, 0, 0, 0], "kite": [0, 1.0, 0, 0], "sphere": [0.9, 0.1, 0, 0]}

    def encode(self, names, normalize=False):
        emb = torch.tensor([self.table[n] for n in names])
        return F.normalize(emb, dim=1) if normalize else emb


def test_labeler_picks_top1_regressed_box_and_skips_images_without_words(monkeypatch):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet18", min_size=64, max_size=64, mask_head_channels=8, c4_pooler_resolution=4,
                      rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20)
    teacher = build_detector(cfg, class_embeddings=torch.randn(2, DIM))
    vocab = Vocabulary.from_categories([{"id": 1, "name": "ball", "synonyms": ["sphere"]}, {"id": 3, "name": "kite"}])
    boxes = torch.tensor([[2.0, 2.0, 20.0, 20.0], [30.0, 10.0, 60.0, 40.0], [5.0, 30.0, 25.0, 62.0]])
    regions = torch.tensor([[0.0, 5.0, 0, 0], [3.0, 0.0, 0, 0], [0.0, 1.0, 0, 0]])  # ball/sphere → 1, kite → 0

    def fake(features, proposals, image_shapes):
        return regions.repeat(len(proposals), 1), [boxes for _ in proposals]

    monkeypatch.setattr(teacher.roi_heads, "region_embeddings_and_boxes", fake)
    labeler = PseudoLabeler(teacher, vocab, FixedEncoder())
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    out = labeler.label(images, [["A red ball and a sphere near a kite."], ["Nothing to see here."]])
    first, second = out
    assert first["words"] == ["ball", "sphere", "kite"] and first["category_ids"] == [1, 1, 3]
    assert first["proposal_index"].tolist() == [1, 1, 0]  # two words, one proposal
    assert torch.allclose(first["boxes"], boxes[[1, 1, 0]])
    assert first["masks"].shape == (3, 64, 64) and first["masks"].dtype == torch.bool
    for mask, (x1, y1, x2, y2) in zip(first["masks"], first["boxes"].int().tolist()):  # pasted inside its box
        outside = mask.clone()
        outside[max(y1 - 2, 0): y2 + 2, max(x1 - 2, 0): x2 + 2] = False
        assert not outside.any()
    assert torch.allclose(first["scores"], torch.sigmoid(torch.tensor([3.0, 3.0 * 0.9 / (0.82 ** 0.5), 5.0])))
    assert ((first["uncertainty"] >= 0) & (first["uncertainty"] <= 1)).all()
    assert second["words"] == [] and second["boxes"].shape == (0, 4) and second["masks"].shape == (0, 64, 64)
    assert all(not p.requires_grad for p in teacher.parameters())


class GTLabeler:
    """Deterministic stand-in for the teacher: each caption word gets the GT mask of its category
    in the image (all-zero if absent) and a box around it. Counts the images it labels."""

    def __init__(self, vocab, gt):
        self.vocab, self.calls = vocab, 0
        self.gt = gt
        self.current = None

    def label(self, images, captions):
        from ovis.data.captions import find_words

        self.calls += len(images)
        image_id, (h, w) = self.current
        words = find_words(captions[0], self.vocab)
        masks = torch.zeros(len(words), h, w, dtype=torch.bool)
        for j, m in enumerate(words):
            for a in self.gt["annotations"]:
                if a["image_id"] == image_id and a["category_id"] == m.category_id and not a.get("iscrowd"):
                    masks[j] = torch.from_numpy(ann_to_mask(a, h, w))
                    break
        return [{"boxes": torch.tensor([[1.0, 2.0, 30.0, 40.0]] * len(words)).reshape(-1, 4), "masks": masks,
                 "scores": torch.full((len(words),), 0.6), "uncertainty": torch.full((len(words),), 0.25),
                 "words": [m.word for m in words], "category_ids": [m.category_id for m in words]}]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("xm")
    recipe = load_recipe("demo_cpl", {"data.root": str(tmp / "data"), "data.demo_num_train": 8,
                                      "data.demo_num_val": 2, "data.demo_image_size": 64})
    run_splits_stage(recipe, tmp / "run")
    return recipe, tmp / "run"


def _labeler(recipe, run_dir, monkeypatch):
    gt = json.loads(recipe.data.path(recipe.data.train_instances).read_text())
    lab = GTLabeler(pseudo_vocabulary(recipe, run_dir).vocab, gt)
    infos = {im["id"]: im for im in gt["images"]}
    from ovis.viz import draw

    orig = draw.load_image

    def spy(root, info):  # tell the stand-in which image it is looking at
        lab.current = (info["id"], (infos[info["id"]]["height"], infos[info["id"]]["width"]))
        return orig(root, info)

    monkeypatch.setattr(draw, "load_image", spy)  # run_pseudo imports it at call time
    return lab


def test_sharded_extraction_merges_to_the_unsharded_file_and_resumes(run, monkeypatch):
    recipe, run_dir = run
    out = run_dir / "pseudo"
    lab = _labeler(recipe, run_dir, monkeypatch)
    stats = run_pseudo(recipe, run_dir, labeler=lab, stream=lambda s: None)
    single = (out / "train_pseudo.json").read_bytes()
    n_images = stats["images_with_captions"]
    assert lab.calls == n_images > 0

    shutil.rmtree(out)
    partial = run_pseudo(recipe, run_dir, shard=1, num_shards=2, labeler=lab, stream=lambda s: None)
    assert partial["merged"] is False and not (out / "train_pseudo.json").exists()
    stats2 = run_pseudo(recipe, run_dir, shard=0, num_shards=2, labeler=lab, stream=lambda s: None)
    assert (out / "train_pseudo.json").read_bytes() == single
    assert stats2["pseudo_masks"] == stats["pseudo_masks"] and stats2["num_shards"] == 2

    # resume: shard 0 killed before its last image (its progress file ends in a torn line), rerun → only that
    # image is labelled again
    part = pseudo_sharding(recipe, run_dir, 2, pseudo_image_ids(recipe, run_dir)[0]).shard(0)
    assert part.path == out / "shards" / "labels.0-of-2.json" and not part.progress_path.exists()
    records = {r["image_id"]: r for r in json.loads(part.path.read_text())["records"]}
    assert len(records) == len(part.image_ids) > 1
    records.pop(part.image_ids[-1])
    part.begin(records)
    with open(part.progress_path, "a") as f:
        f.write('{"image_id": 99, "wor')
    part.path.unlink()
    (out / "stage.json").unlink()
    lab.calls = 0
    run_pseudo(recipe, run_dir, shard=0, num_shards=2, labeler=lab, stream=lambda s: None)
    assert lab.calls == 1 and (out / "train_pseudo.json").read_bytes() == single
    assert part.path.is_file() and not part.progress_path.exists()
    lab.calls = 0
    assert run_pseudo(recipe, run_dir, labeler=lab, stream=lambda s: None) == json.loads((out / "stats.json").read_text())
    assert lab.calls == 0  # stage done for this recipe: nothing recomputed


def test_pseudo_file_contents_and_novel_precision(run, monkeypatch):
    recipe, run_dir = run
    lab = _labeler(recipe, run_dir, monkeypatch)
    stats = run_pseudo(recipe, run_dir, labeler=lab, force=True, stream=lambda s: None)
    data = json.loads((run_dir / "pseudo" / "train_pseudo.json").read_text())
    base = json.loads((run_dir / "splits" / "train_base.json").read_text())
    pseudo = [a for a in data["annotations"] if a.get("pseudo")]
    assert data["annotations"][: len(base["annotations"])] == base["annotations"]
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
    assert all({"score", "uncertainty", "word", "category_name", "segmentation", "bbox", "area"} <= set(a) for a in pseudo)
    assert {c["id"] for c in data["categories"]} == {c["id"] for c in json.loads((run_dir / "splits" / "val.json").read_text())["categories"]}
    # the stand-in returns the GT mask when the class is in the image: precision = share of novel words present
    novel = {c["id"] for c in json.loads((run_dir / "splits" / "partition.json").read_text())["novel"]}
    novel_anns = [a for a in pseudo if a["category_id"] in novel]
    present = [a for a in novel_anns if a["area"] > 0]
    assert stats["pseudo_masks_novel"] == len(novel_anns) > 0
    assert stats["novel_correct@0.5"] == len(present)
    assert stats["novel_precision@0.5"] == pytest.approx(len(present) / len(novel_anns))
    assert stats["pseudo_masks"] == len(pseudo) and stats["words_found"] == len(pseudo)
