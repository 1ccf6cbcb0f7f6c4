"""Heads: background-weighted CE, RoI sampling, OLN centerness / no proposal NMS / final score."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import boxes as box_ops

from ovis.config import ModelConfig
from ovis.models.detector import build_detector
from ovis.models.heads import (
    EmbeddingClassifier,
    OLNRegionProposalNetwork,
    OLNRPNHead,
    background_weighted_ce,
    bound_negatives,
    centerness_targets,
    paired_iou,
    tblr_decode,
)


def tiny(**kw) -> ModelConfig:
    base = dict(backbone="resnet18", min_size=64, max_size=64, fpn_channels=16, representation_size=32,
                mask_head_channels=8, box_batch_size_per_image=16, c4_pooler_resolution=7)
    return ModelConfig(**{**base, **kw})


def test_background_weighted_ce_is_a_sum_over_rois_divided_by_their_number():
    logits = torch.tensor([[0.0, 1.0, -1.0], [0.0, 2.0, 0.5], [0.0, -0.3, 0.7]])
    labels = torch.tensor([0, 1, 2])

    def ce(row, k):
        return math.log(sum(math.exp(v) for v in row)) - row[k]

    rows = logits.tolist()
    hand = (0.2 * ce(rows[0], 0) + ce(rows[1], 1) + ce(rows[2], 2)) / 3  # not / (0.2 + 1 + 1)
    assert math.isclose(float(background_weighted_ce(logits, labels, 0.2)), hand, rel_tol=1e-6)
    assert math.isclose(float(background_weighted_ce(logits, labels, 1.0)),
                        float(torch.nn.functional.cross_entropy(logits, labels)), rel_tol=1e-6)


def test_roi_heads_box_loss_uses_the_background_weight():
    model = build_detector(tiny(arch="c4", background_weight=0.2), class_embeddings=torch.randn(2, 8))
    logits = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.5, -0.5]])
    labels = [torch.tensor([0, 2])]
    zero = [torch.zeros(2, 4)]
    losses = model.roi_heads.box_losses((logits, torch.zeros(2, 4)), labels, zero, zero, zero)
    assert math.isclose(float(losses["loss_classifier"]), float(background_weighted_ce(logits, labels[0], 0.2)))
    assert float(losses["loss_box_reg"]) == 0.0


def _sampled_counts(positive_fraction: float) -> tuple[int, int]:
    model = build_detector(tiny(arch="fpn", classifier="agnostic", aspect_ratios=[1.0],
                                box_positive_fraction=positive_fraction))
    gt = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    near = gt + torch.linspace(-3, 3, 10)[:, None]  # 10 proposals with IoU > 0.5
    far = torch.tensor([[0.0, 55.0, 8.0, 63.0]]).repeat(20, 1) + torch.rand(20, 1)  # 20 background
    torch.manual_seed(0)
    _, _, labels, _ = model.roi_heads.select_training_samples(
        [torch.cat([near, far])], [{"boxes": gt, "labels": torch.tensor([1]), "masks": torch.zeros(1, 64, 64)}]
    )
    return int((labels[0] > 0).sum()), int((labels[0] == 0).sum())


def test_positive_fraction_one_keeps_all_positives():
    assert _sampled_counts(1.0) == (11, 5)  # 10 near + the GT box itself, negatives fill 16
    assert _sampled_counts(0.25) == (4, 12)


def test_centerness_target_hand_example():
    anchors = torch.tensor([[4.0, 4.0, 6.0, 6.0], [4.0, 4.0, 6.0, 6.0], [4.0, 4.0, 6.0, 6.0]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 20.0], [2.0, 0.0, 10.0, 10.0], [6.0, 0.0, 10.0, 10.0]])
    # centre (5, 5): (l, r, t, b) = (5, 5, 5, 15), (3, 5, 5, 5), outside
    expected = torch.tensor([math.sqrt(1 / 3), math.sqrt(3 / 5), 0.0])
    assert torch.allclose(centerness_targets(anchors, gt), expected)


def test_paired_iou():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 0.0, 3.0, 2.0], [2.0, 2.0, 3.0, 3.0]])
    assert torch.allclose(paired_iou(a, b), torch.tensor([2 / 6, 0.0]))


def _oln_rpn(top_n: int = 1000, sizes: tuple = ((32,),)) -> OLNRegionProposalNetwork:
    anchors = AnchorGenerator(sizes, ((1.0,),) * len(sizes))
    torch.manual_seed(0)
    return OLNRegionProposalNetwork(anchors, OLNRPNHead(8, 1), dict(training=top_n, testing=top_n))


def test_oln_rpn_keeps_overlapping_proposals_without_nms():
    rpn = _oln_rpn().eval()
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    features = {"0": torch.randn(1, 8, 16, 16)}  # stride 4: 32-px anchors overlap heavily
    with torch.no_grad():
        proposals, losses = rpn(images, features)
    (p,) = proposals
    assert losses == {} and p.shape == (256, 5)  # every anchor survives (16 x 16 < 1000)
    kept_by_nms = box_ops.nms(p[:, :4], p[:, 4], 0.7)
    assert len(p) > len(kept_by_nms)
    assert torch.all(p[:-1, 4] >= p[1:, 4])  # sorted by objectness = sigmoid(logit)
    assert float(p[:, 4].min()) > 0 and float(p[:, 4].max()) < 1


def test_oln_rpn_keeps_every_levels_top_n_without_an_overall_cap():
    """Upstream passes the top ``nms_pre`` of each level on, all of them: 100 of 256 + all 64 here."""
    rpn = _oln_rpn(top_n=100, sizes=((16,), (32,))).eval()
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    features = {"0": torch.randn(1, 8, 16, 16), "1": torch.randn(1, 8, 8, 8)}
    with torch.no_grad():
        (p,), _ = rpn(images, features)
    assert p.shape == (164, 5)
    logits = [o[0, 0].flatten() for o in rpn.head(list(features.values()))[0]]
    expected = torch.cat([logits[0].topk(100).values, logits[1]]).sigmoid().sort(descending=True).values
    assert torch.allclose(p[:, 4], expected)


def test_oln_rpn_losses_use_centerness_and_iou():
    rpn = _oln_rpn().train()
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    features = {"0": torch.randn(1, 8, 16, 16, requires_grad=True)}
    gt = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
    proposals, losses = rpn(images, features, [{"boxes": gt, "labels": torch.tensor([1])}])
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg"}
    assert proposals[0].shape == (256, 5)
    # 256 anchors, 256 samples with positive fraction 1.0: every anchor with IoU >= 0.3 (target =
    # centerness) or < 0.1 (target 0) is sampled; L1 on the sigmoid, averaged over them
    anchors = rpn.anchor_generator(images, [features["0"]])[0]
    logits = rpn.head([features["0"]])[0][0][0].permute(1, 2, 0).reshape(-1)  # [A=1, H, W] -> H*W
    iou = box_ops.box_iou(anchors, gt)[:, 0]
    used = (iou >= 0.3) | (iou < 0.1)
    target = torch.where(iou >= 0.3, centerness_targets(anchors, gt.expand(len(anchors), 4)), torch.zeros_like(iou))
    expected = (logits.sigmoid() - target)[used].abs().mean()
    assert (iou >= 0.3).sum() > 0 and torch.isclose(losses["loss_objectness"], expected)
    # near-zero deltas decode to the anchors: IoU loss x 10, averaged over sampled anchors, in (0, 10)
    assert 0 < losses["loss_rpn_box_reg"].item() < 10
    sum(losses.values()).backward()
    assert features["0"].grad.abs().sum() > 0


def test_bound_negatives_keeps_a_random_subset_of_neg_pos_ub_per_positive():
    pos = torch.zeros(200)
    pos[:3] = 1
    neg = torch.zeros(200)
    neg[50:150] = 1
    torch.manual_seed(0)
    kept = bound_negatives(pos, neg, 1.0)
    assert kept.sum() == 3 and bool((kept <= neg).all())  # as many as positives, all of them negatives
    assert bound_negatives(pos, neg, 2.5).sum() == 7  # int(2.5 * 3)
    assert bound_negatives(torch.zeros(200), neg, 1.0).sum() == 1  # no positive counts as one
    assert torch.equal(bound_negatives(pos, neg, 40.0), neg)  # fewer negatives than the bound: all kept


def test_oln_rpn_objectness_neg_pos_ub_bounds_the_negatives_in_the_loss():
    anchors = AnchorGenerator(((32,),), ((1.0,),))
    torch.manual_seed(0)
    rpn = OLNRegionProposalNetwork(anchors, OLNRPNHead(8, 1), dict(training=1000, testing=1000),
                                   objectness_neg_pos_ub=1.0).train()
    with torch.no_grad():  # every anchor's objectness logit is 0.4: a negative's error is sigmoid(0.4), whichever
        rpn.head.cls_logits.weight.zero_()
        rpn.head.cls_logits.bias.fill_(0.4)
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    features = {"0": torch.randn(1, 8, 16, 16)}
    gt = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
    _, losses = rpn(images, features, [{"boxes": gt, "labels": torch.tensor([1])}])
    grid = rpn.anchor_generator(images, [features["0"]])[0]
    iou = box_ops.box_iou(grid, gt)[:, 0]
    pos = iou >= 0.3
    s = torch.tensor(0.4).sigmoid()
    err_pos = (s - centerness_targets(grid[pos], gt.expand(int(pos.sum()), 4))).abs()
    n = int(pos.sum())
    assert 0 < n < int((iou < 0.1).sum())  # unbounded, the sample would hold more negatives than positives
    assert torch.isclose(losses["loss_objectness"], (err_pos.sum() + n * s) / (2 * n))


def test_oln_objectness_neg_pos_ub_reaches_the_rpn_and_must_be_positive():
    cfg = dict(arch="fpn", heads="oln", classifier="agnostic", aspect_ratios=[1.0])
    assert build_detector(tiny(**cfg)).rpn.objectness_neg_pos_ub is None  # upstream: unbounded
    assert build_detector(tiny(**cfg, oln_objectness_neg_pos_ub=1.0)).rpn.objectness_neg_pos_ub == 1.0
    with pytest.raises(ValueError, match=r"model.oln_objectness_neg_pos_ub=0.0: must be > 0 \(or null for no bound\)"):
        build_detector(tiny(**cfg, oln_objectness_neg_pos_ub=0.0))


def test_tblr_decode_is_mmdets_tblr_coder_with_normaliser_1():
    anchors = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # centre (20, 40), w 20, h 40
    tblr = torch.tensor([[0.5, 0.25, 1.0, 0.1]])  # top, bottom in heights; left, right in widths
    assert torch.equal(tblr_decode(anchors, tblr), torch.tensor([[0.0, 20.0, 22.0, 50.0]]))
    assert torch.equal(tblr_decode(anchors, torch.zeros(1, 4)), torch.tensor([[20.0, 40.0, 20.0, 40.0]]))


def test_oln_rpn_box_coder_tblr_reaches_the_rpn_and_decodes_its_proposals():
    cfg = dict(arch="fpn", heads="oln", classifier="agnostic", aspect_ratios=[1.0])
    assert not build_detector(tiny(**cfg)).rpn.tblr  # Faster R-CNN deltas
    rpn = build_detector(tiny(**cfg, oln_rpn_box_coder="tblr")).rpn.eval()
    assert rpn.tblr
    with pytest.raises(ValueError, match="model.oln_rpn_box_coder='ltrb': use tblr or null"):
        build_detector(tiny(**cfg, oln_rpn_box_coder="ltrb"))
    with torch.no_grad():  # every output 0.5: each anchor's box, TBLR: its own square (centre ± half a side)
        rpn.head.bbox_pred.weight.zero_()
        rpn.head.bbox_pred.bias.fill_(0.5)
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    features = {k: torch.randn(1, rpn.head.conv[0][0].in_channels, 64 // s, 64 // s)
                for k, s in zip(("0", "1", "2", "3", "pool"), (4, 8, 16, 32, 64))}
    with torch.no_grad():
        (p,), _ = rpn(images, features)
        anchors = rpn.anchor_generator(images, list(features.values()))[0]
    inside = anchors[(anchors[:, :2] >= 0).all(1) & (anchors[:, 2:] <= 64).all(1)]
    assert len(inside) and all(bool((p[:, :4] == a).all(1).any()) for a in inside)


def test_oln_rpn_features_are_l2_normalised():
    head = OLNRPNHead(8, 1)
    x = [torch.randn(2, 8, 5, 5) * 50]
    t = torch.nn.functional.normalize(head.conv(x[0]), dim=1)
    logits, deltas = head(x)
    assert torch.allclose(logits[0], head.cls_logits(t)) and torch.allclose(deltas[0], head.bbox_pred(t))


def test_oln_final_score_is_sqrt_of_objectness_times_iou_score():
    model = build_detector(tiny(arch="fpn", classifier="agnostic", heads="oln", aspect_ratios=[1.0],
                                box_nms_thresh=0.7, box_score_thresh=0.0))
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0], [45.0, 5.0, 60.0, 30.0]])]
    objectness = [torch.tensor([0.9, 0.2, 0.5])]
    iou_logits = torch.tensor([0.0, 2.0, -1.0])
    boxes, scores, labels = model.roi_heads.score_boxes(iou_logits, torch.zeros(3, 4), proposals, objectness, [(64, 64)])
    expected = (objectness[0] * iou_logits.sigmoid()).sqrt()
    order = expected.argsort(descending=True)
    assert torch.allclose(scores[0], expected[order])
    assert torch.allclose(boxes[0], proposals[0][order])
    assert labels[0].tolist() == [1, 1, 1]
    # a near-duplicate box is suppressed at NMS 0.7
    dup = [torch.cat([proposals[0], proposals[0][:1] + 0.1])]
    _, scores, _ = model.roi_heads.score_boxes(
        torch.cat([iou_logits, torch.tensor([-3.0])]), torch.zeros(4, 4), dup, [torch.cat([objectness[0], torch.tensor([0.9])])], [(64, 64)]
    )
    assert len(scores[0]) == 3


def test_embedding_temperature_divides_logits_and_region_embeddings_alike():
    torch.manual_seed(0)
    emb = torch.randn(3, 8)
    plain = EmbeddingClassifier(16, 8, emb)
    cooled = EmbeddingClassifier(16, 8, emb, temperature=10.0)
    cooled.load_state_dict(plain.state_dict())
    x = torch.randn(5, 16)
    (lp, dp), (lc, dc) = plain(x), cooled(x)
    torch.testing.assert_close(lc, lp / 10)
    torch.testing.assert_close(lc[:, 0], torch.zeros(5))  # background stays 0
    torch.testing.assert_close(dc, dp)  # box deltas do not depend on it
    torch.testing.assert_close(cooled.embed(x), plain.embed(x) / 10)  # pseudo-label scores use the same scale


def test_embedding_temperature_must_be_positive():
    cfg = ModelConfig(arch="c4", backbone="resnet18", embedding_temperature=0.0)
    with pytest.raises(ValueError, match="model.embedding_temperature=0.0: must be > 0"):
        build_detector(cfg, torch.zeros(2, 8))


def test_mask_logits_init_std_starts_the_mask_loss_at_log2():
    torch.manual_seed(0)
    kaiming = build_detector(tiny(arch="c4", classifier="agnostic"))
    torch.manual_seed(0)
    small = build_detector(tiny(arch="c4", classifier="agnostic", mask_logits_init_std=0.001))
    w_k = kaiming.roi_heads.mask_predictor.mask_fcn_logits.weight
    w_s = small.roi_heads.mask_predictor.mask_fcn_logits.weight
    assert w_k.std() > 0.05  # Kaiming (fan_out) over 1 output channel: std sqrt(2)
    assert 0.0005 < w_s.std() < 0.002
    assert small.roi_heads.mask_predictor.mask_fcn_logits.bias.abs().max() == 0
    image = torch.rand(3, 64, 64)
    target = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 48.0]]), "labels": torch.tensor([1]),
              "masks": torch.zeros(1, 64, 64, dtype=torch.uint8)}
    target["masks"][0, 8:48, 8:40] = 1
    small.train()
    loss = small([image], [target])["loss_mask"]
    assert abs(loss.item() - math.log(2)) < 0.01  # logits near 0: BCE = log 2


def test_mask_logits_init_std_must_be_positive():
    with pytest.raises(ValueError, match="model.mask_logits_init_std=-1.0: must be > 0"):
        build_detector(tiny(classifier="agnostic", mask_logits_init_std=-1.0))
