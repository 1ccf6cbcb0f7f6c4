"""CPL robust student: heteroscedastic mask loss, σ-head detachment and freezing, λ, branches."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ovis.config import ModelConfig
from ovis.data.dataset import CocoDetection, StudentDataset
from ovis.methods.cpl import StudentHook
from ovis.models.detector import build_detector
from ovis.models.student import (
    HeteroscedasticMaskPredictor,
    RobustStudent,
    adaptive_weight,
    heteroscedastic_bce,
)

DIM = 8
BOXES = torch.tensor([[4.0, 6.0, 30.0, 40.0], [28.0, 20.0, 60.0, 58.0], [10.0, 30.0, 40.0, 60.0], [2.0, 2.0, 20.0, 20.0]])


class FixedRPN(nn.Module):
    """Proposals = the batch's four boxes, slightly shifted, plus background boxes (train and eval)."""

    def forward(self, images, features, targets=None):
        g = torch.Generator().manual_seed(5)
        xy = torch.rand(12, 2, generator=g) * 40
        rand = torch.cat([xy, xy + 4 + torch.rand(12, 2, generator=g) * 20], 1)
        return [torch.cat([BOXES + 1.0, rand]) for _ in images.image_sizes], {}


def tiny_student(fixed_rpn: bool = True, **kw) -> RobustStudent:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet18", trainable_layers=5, min_size=64, max_size=64, mask_head_channels=8,
                      rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=100,
                      rpn_post_nms_top_n_test=50, box_batch_size_per_image=16, c4_pooler_resolution=4,
                      box_score_thresh=0.0, box_detections_per_img=10)
    det = build_detector(cfg, class_embeddings=F.normalize(torch.randn(2, DIM), dim=1))
    model = RobustStudent.from_detector(det, **kw)
    if fixed_rpn:
        model.rpn = FixedRPN()
    model.roi_heads.set_pseudo_class_embeddings(F.normalize(torch.randn(3, DIM), dim=1))
    return model


def batch(with_pseudo: bool = True):
    """One 64×64 image: two GT boxes (labels 1, 2) and, optionally, two pseudo boxes (labels 3, 1)."""
    g = torch.Generator().manual_seed(1)
    boxes = BOXES
    labels = torch.tensor([1, 2, 3, 1])
    pseudo = torch.tensor([False, False, True, True])
    keep = slice(None) if with_pseudo else slice(0, 2)
    masks = torch.zeros(4, 64, 64, dtype=torch.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
        masks[k, y1:y2, x1:x2] = 1
    target = {"boxes": boxes[keep], "labels": labels[keep], "masks": masks[keep], "pseudo": pseudo[keep], "image_id": 7}
    return [torch.rand(3, 64, 64, generator=g)], [target]


def caption_only_batch(with_pseudo: bool = True):
    """One 64×64 image with no GT box, as a caption-only image reaches the student: two pseudo boxes
    (labels 3, 1), or none."""
    g = torch.Generator().manual_seed(2)
    n = 2 if with_pseudo else 0
    masks = torch.zeros(n, 64, 64, dtype=torch.uint8)
    for k, (x1, y1, x2, y2) in enumerate(BOXES[2:2 + n].int().tolist()):
        masks[k, y1:y2, x1:x2] = 1
    target = {"boxes": BOXES[2:2 + n], "labels": torch.tensor([3, 1])[:n], "masks": masks,
              "pseudo": torch.ones(n, dtype=torch.bool), "image_id": 8}
    return [torch.rand(3, 64, 64, generator=g)], [target]


GT_KEYS = ("loss_classifier_gt", "loss_box_reg_gt", "loss_mask_gt")


def test_heteroscedastic_bce_is_plain_bce_as_sigma_vanishes_and_noisy_otherwise():
    torch.manual_seed(0)
    mu, t = torch.randn(3, 1, 8, 8), torch.rand(3, 1, 8, 8)
    plain = F.binary_cross_entropy_with_logits(mu, t)
    assert torch.allclose(heteroscedastic_bce(mu, torch.full_like(mu, 1e-9), t), plain, atol=1e-7)
    eps = torch.randn_like(mu)
    noisy = heteroscedastic_bce(mu, torch.full_like(mu, 2.0), t, noise=eps)
    assert torch.allclose(noisy, F.binary_cross_entropy_with_logits(mu + 2.0 * eps, t))
    assert not torch.allclose(noisy, plain)


def test_sigma_head_init_and_no_gradient_into_mask_features():
    head = HeteroscedasticMaskPredictor(4, 6)
    assert torch.all(head.log_var.bias == 1.0) and head.log_var.weight.std() < 0.01
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    mu, sigma = head.forward_with_sigma(x)
    assert mu.shape == sigma.shape == (2, 1, 10, 10)
    assert torch.allclose(sigma, torch.exp(0.5 * head.log_var(head.features(x))))
    grads = torch.autograd.grad(sigma.sum(), [x, head.conv5_mask.weight, head.log_var.weight], allow_unused=True)
    assert grads[0] is None and grads[1] is None  # detached: σ never trains the mask features
    assert grads[2] is not None and grads[2].abs().sum() > 0
    assert torch.equal(head(x), mu)  # inference: μ only


def test_adaptive_weight():
    sigma = torch.tensor([0.5, 1.5, 2.0, 4.0], requires_grad=True)
    lam = adaptive_weight(sigma)
    assert math.isclose(float(lam), 0.01 / 2.0, rel_tol=1e-6) and not lam.requires_grad


def test_student_losses_keys_and_lambda_equals_reweighting_with_constant_sigma():
    model = tiny_student()
    model.train()
    bias = 2.0  # σ = exp(1) everywhere
    nn.init.zeros_(model.roi_heads.mask_predictor.log_var.weight)
    nn.init.constant_(model.roi_heads.mask_predictor.log_var.bias, bias)
    images, targets = batch()
    torch.manual_seed(3)
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier_gt", "loss_box_reg_gt", "loss_mask_gt",
                           "loss_classifier_pl", "loss_box_reg_pl", "loss_mask_pl"}
    assert all(torch.isfinite(v) for v in losses.values())
    lam = 0.01 / math.exp(bias / 2)
    assert math.isclose(model.last_stats["lambda_pl"], lam, rel_tol=1e-5)
    assert math.isclose(model.last_stats["sigma_mean"], math.exp(bias / 2), rel_tol=1e-5)
    # same sampling, uncertainty off with lambda_pseudo = λ: classification and box terms agree
    plain = tiny_student(uncertainty=False, lambda_pseudo=lam)
    plain.train()
    torch.manual_seed(3)
    ref = plain(images, targets)
    for k in ("loss_classifier_pl", "loss_box_reg_pl", "loss_classifier_gt", "loss_box_reg_gt", "loss_mask_gt"):
        assert torch.allclose(losses[k], ref[k], rtol=1e-5, atol=1e-8), k
    assert not torch.allclose(losses["loss_mask_pl"], ref["loss_mask_pl"])  # noise + weight 1 vs × λ
    assert ref["loss_classifier_pl"] > 0


def test_pseudo_box_loss_switch_and_background_row():
    model = tiny_student(pseudo_box_loss=False)
    emb = model.roi_heads.pseudo_class_embeddings
    assert emb.shape == (4, DIM) and torch.all(emb[0] == 0)  # a real background row before 3 names
    model.train()
    losses = model(*batch())
    assert "loss_box_reg_pl" not in losses and {"loss_classifier_pl", "loss_mask_pl"} <= set(losses)


def test_images_without_pseudo_boxes_skip_the_pseudo_branch():
    model = tiny_student()
    model.train()
    losses = model(*batch(with_pseudo=False))
    for k in ("loss_classifier_pl", "loss_box_reg_pl", "loss_mask_pl"):
        assert losses[k].item() == 0.0
    assert losses["loss_classifier_gt"].item() > 0 and model.last_stats == {}


@pytest.mark.parametrize("fixed_rpn", [True, False])
def test_caption_only_images_skip_the_gt_branch(fixed_rpn):
    """A caption-only image beside a GT image leaves the GT losses as the GT image alone gives them;
    upstream runs its GT branch on ``is_det`` images only. The RoI sampler keeps every proposal here, so
    the comparison does not hang on the random draws, which the batch's size shifts (one per image in
    the transform)."""
    model = tiny_student(fixed_rpn=fixed_rpn)
    model.roi_heads.fg_bg_sampler.batch_size_per_image = 512  # > the ≤ 50 proposals + GT boxes
    model.roi_heads.fg_bg_sampler.positive_fraction = 1.0
    model.train()
    gt_images, gt_targets = batch(with_pseudo=False)
    cap_images, cap_targets = caption_only_batch()
    alone = model(gt_images, gt_targets)
    mixed = model(cap_images + gt_images, cap_targets + gt_targets)
    for k in GT_KEYS:
        assert alone[k] > 0 and torch.allclose(mixed[k], alone[k], rtol=1e-5, atol=1e-7), k
    assert alone["loss_classifier_pl"] == 0 and mixed["loss_classifier_pl"] > 0


def test_a_batch_without_gt_boxes_gives_zero_gt_losses_that_back_propagate():
    model = tiny_student()
    model.train()
    losses = model(*caption_only_batch())
    for k in GT_KEYS:
        assert losses[k].item() == 0.0 and losses[k].requires_grad, k
    assert losses["loss_classifier_pl"] > 0 and losses["loss_mask_pl"] > 0
    sum(losses.values()).backward()
    assert model.roi_heads.box_predictor.bbox_pred.weight.grad.abs().sum() > 0  # from the pseudo branch
    model.zero_grad(set_to_none=True)
    empty = model(*caption_only_batch(with_pseudo=False))  # nothing to learn from: both branches give zeros
    assert set(empty) == set(losses) and all(v.item() == 0.0 for v in empty.values())
    sum(empty.values()).backward()  # still a graph (DDP steps every rank alike)
    head = model.roi_heads.mask_predictor.mask_fcn_logits.weight
    assert head.grad is not None and head.grad.abs().sum() == 0


def test_sigma_head_stops_updating_after_uncertainty_train_iter(tmp_path):
    model = tiny_student()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("roi_heads."))
    model.train()
    hook = StudentHook(freeze_after=2, log_path=tmp_path / "robust.jsonl", log_period=1)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=1e-4)
    log_var = model.roi_heads.mask_predictor.log_var
    snapshots = []
    for it in range(1, 4):
        snapshots.append(log_var.weight.detach().clone())
        opt.zero_grad(set_to_none=True)
        sum(model(*batch()).values()).backward()
        opt.step()
        hook(it, model)
    assert not torch.equal(snapshots[0], snapshots[1])  # trained during the first iterations
    assert not log_var.weight.requires_grad
    assert torch.equal(snapshots[2], log_var.weight)  # iteration 3 ran after freezing at 2: unchanged
    rows = (tmp_path / "robust.jsonl").read_text().splitlines()
    assert len(rows) == 3 and '"lambda_pl"' in rows[0]


def test_hook_averages_each_statistic_over_the_steps_that_report_it(tmp_path):
    hook = StudentHook(freeze_after=100, log_path=tmp_path / "robust.jsonl", log_period=3)
    model = tiny_student()
    for it, stats in enumerate([{"lambda_pl": 0.01, "sigma_mean": 1.0}, {"lambda_pl": 0.03},  # no positive RoI
                                {"lambda_pl": 0.02, "sigma_mean": 0.5}, {}], start=1):  # no pseudo box at all
        model.last_stats = stats
        hook(it, model)
    (row,) = [json.loads(line) for line in (tmp_path / "robust.jsonl").read_text().splitlines()]
    assert row["iteration"] == 3 and not row["sigma_head_frozen"]
    assert math.isclose(row["lambda_pl"], 0.02) and math.isclose(row["sigma_mean"], 0.75)


def test_student_inference_uses_mu_only():
    model = tiny_student().eval()
    with torch.no_grad():
        out = model(batch()[0])
    assert out[0]["masks"].shape[1:] == (1, 64, 64) and len(out[0]["boxes"]) <= 10


def test_student_dataset_relabels_gt_and_pseudo(tmp_path):
    from ovis.data.synthetic import generate_demo_dataset
    from ovis.io import write_json_atomic

    paths = generate_demo_dataset(tmp_path / "d", num_train=2, num_val=1, image_size=64)
    import json

    coco = json.loads(paths.train_instances.read_text())
    anns = coco["annotations"]
    pseudo = dict(anns[0], id=999, pseudo=True, score=0.7, category_id=5)
    coco["annotations"] = anns + [pseudo]
    write_json_atomic(coco, tmp_path / "p.json")
    ds = CocoDetection(tmp_path / "p.json", paths.train_images)
    base_ids = sorted({a["category_id"] for a in anns})
    sd = StudentDataset(ds, base_ids, [9, 5])
    idx = ds.ids.index(pseudo["image_id"])
    _, t = sd[idx]
    assert t["labels"][t["pseudo"]].tolist() == [2]  # category 5 is the 2nd pseudo-vocabulary entry
    gt_cats = [a["category_id"] for a in anns if a["image_id"] == pseudo["image_id"] and not a.get("iscrowd")]
    assert sorted(t["labels"][~t["pseudo"]].tolist()) == sorted(base_ids.index(c) + 1 for c in gt_cats)
    with pytest.raises(ValueError, match="neither base classes"):
        StudentDataset(ds, base_ids[1:], [9])[idx]
