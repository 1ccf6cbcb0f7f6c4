"""Detector heads on top of torchvision's RPN / RoIHeads (docs/cpl.md#22-teacher, docs/ggn.md#34-mask-r-cnn, docs/ggn.md#35-oln).

- :class:`EmbeddingClassifier`: region feature → ``projection`` into the text space → dot products
  with fixed class embeddings; row 0 is a zero vector, so the background logit is exactly 0.
- :class:`AgnosticClassifier`: one foreground class, 2-way softmax.
- :class:`ClassAgnosticRoIHeads`: one box 4-vector and one mask channel for every class, CE with a
  background weight summed over sampled RoIs / #RoIs, optional shared res5 trunk (R-C4).
- :class:`EmbeddingRoIHeads`: adds region embeddings and vocabulary swapping.
- OLN (:class:`OLNRPNHead`, :class:`OLNRegionProposalNetwork`, :class:`OLNBoxPredictor`,
  :class:`OLNRoIHeads`): centerness objectness, IoU-loss RPN without proposal NMS, IoU-score box head.
  The OLN RPN returns proposals as ``[n, 5]`` (box, objectness) so the RoI heads can form the final
  score √(objectness · IoU score).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss
from torchvision.models.detection.rpn import (
    RegionProposalNetwork,
    RPNHead,
    concat_box_prediction_layers,
)
from torchvision.ops import boxes as box_ops

# the mask branch at inference, RoIs at a time: all 300 of a demo image at once (28x28 maps, 64 channels)
# spill out of cache, 1.3-1.6x slower on 2 CPU cores (benchmarks/detector_speed.py, infer_ms_per_img)
MASK_CHUNK = 64
OLN_RPN_IOU_LOSS_WEIGHT = 10.0  # oln_box.py: IoULoss(linear=True, loss_weight=10)
OLN_OBJECTNESS_POS_IOU = 0.3  # objectness assigner: positive IoU >= 0.3, negative < 0.1
OLN_OBJECTNESS_NEG_IOU = 0.1


class EmbeddingClassifier(nn.Module):
    """Open-vocabulary box predictor: logits = ⟨projection(f), t_c⟩ / temperature with t_0 = 0 (background).

    ``temperature`` 1 is upstream's teacher; grounding's own temperature (10) keeps a frozen grounding
    projection's scores at the scale grounding trained them at (docs/deviations.md#99-demo-recipes).

    Input ``[R, C]`` region features; output ``(logits [R, K+1], deltas [R, 4])``. Class embeddings
    ``[K, d]`` are a non-persistent buffer (not a parameter, not saved in checkpoints): set them with
    :meth:`set_class_embeddings`; predicted labels 1..K index that list.
    """

    def __init__(self, in_features: int, embedding_dim: int, class_embeddings: Tensor | None = None,
                 temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.projection = nn.Linear(in_features, embedding_dim)
        self.bbox_pred = nn.Linear(in_features, 4)
        nn.init.normal_(self.projection.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.projection.bias)
        nn.init.zeros_(self.bbox_pred.bias)
        self.register_buffer("class_embeddings", torch.zeros(1, embedding_dim), persistent=False)
        if class_embeddings is not None:
            self.set_class_embeddings(class_embeddings)

    @property
    def num_classes(self) -> int:
        """K, the vocabulary size (background not counted)."""
        return self.class_embeddings.shape[0] - 1

    def set_class_embeddings(self, embeddings: Tensor) -> None:
        """Swap the vocabulary: ``embeddings [K, d]`` (as given: normalise beforehand if wanted)."""
        d = self.projection.out_features
        if embeddings.ndim != 2 or embeddings.shape[1] != d:
            raise ValueError(f"class embeddings must be [K, {d}], got {list(embeddings.shape)}")
        w = self.projection.weight
        emb = embeddings.detach().to(device=w.device, dtype=w.dtype)
        self.class_embeddings = torch.cat([emb.new_zeros(1, d), emb])

    def embed(self, x: Tensor) -> Tensor:
        """Region features ``[R, C]`` → region embeddings ``[R, d]`` (not normalised), divided by the temperature."""
        return self.projection(x.flatten(1)) / self.temperature

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        return self.embed(x) @ self.class_embeddings.T, self.bbox_pred(x)


class AgnosticClassifier(nn.Module):
    """One foreground class: ``(logits [R, 2], deltas [R, 4])``."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, 2)
        self.bbox_pred = nn.Linear(in_features, 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


class OLNBoxPredictor(nn.Module):
    """OLN box head output: ``(iou_logits [R], deltas [R, 4])``; no classification branch."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.iou_score = nn.Linear(in_features, 1)
        self.bbox_pred = nn.Linear(in_features, 4)
        nn.init.normal_(self.iou_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.iou_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        return self.iou_score(x)[:, 0], self.bbox_pred(x)


def background_weighted_ce(logits: Tensor, labels: Tensor, background_weight: float) -> Tensor:
    """Σ_i w(y_i)·CE_i / #RoIs with w(0) = background_weight, else 1 (maskrcnn-benchmark, not a weighted mean)."""
    weight = logits.new_ones(logits.shape[1])
    weight[0] = background_weight
    return F.cross_entropy(logits, labels, weight=weight, reduction="sum") / max(labels.numel(), 1)


def paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of ``a[i]`` with ``b[i]`` for boxes ``[N, 4]`` (x1, y1, x2, y2) → ``[N]``."""
    wh = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = box_ops.box_area(a) + box_ops.box_area(b) - inter
    return inter / union.clamp(min=1e-6)


def tblr_decode(anchors: Tensor, tblr: Tensor) -> Tensor:
    """Boxes ``[N, 4]`` (x1, y1, x2, y2) from distances ``[N, 4]`` (top, bottom, left, right) of the box sides to
    each anchor's centre, in units of the anchor's height (top, bottom) and width (left, right): mmdet's
    ``TBLRBBoxCoder`` with normaliser 1, OLN-RPN's box coder (docs/ggn.md#35-oln)."""
    cx, cy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    w, h = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    top, bottom, left, right = tblr.unbind(1)
    return torch.stack([cx - left * w, cy - top * h, cx + right * w, cy + bottom * h], 1)


def centerness_targets(anchors: Tensor, gt_boxes: Tensor) -> Tensor:
    """OLN objectness target √(min(l,r)/max(l,r) · min(t,b)/max(t,b)) of each anchor centre with
    respect to its GT box (l, t, r, b = distances to the box sides); 0 when the centre is outside."""
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    lr = torch.stack([cx - gt_boxes[:, 0], gt_boxes[:, 2] - cx], 1)
    tb = torch.stack([cy - gt_boxes[:, 1], gt_boxes[:, 3] - cy], 1)
    lo_x, hi_x, lo_y, hi_y = lr.min(1).values, lr.max(1).values, tb.min(1).values, tb.max(1).values
    ratio = (lo_x / hi_x.clamp(min=1e-6)) * (lo_y / hi_y.clamp(min=1e-6))
    inside = (lo_x > 0) & (lo_y > 0)
    return torch.where(inside, ratio.clamp(min=0).sqrt(), torch.zeros_like(ratio))


class ClassAgnosticRoIHeads(RoIHeads):
    """torchvision RoIHeads with class-agnostic box regression and a single mask channel.

    Extra arguments: ``res5`` (R-C4: a res5 stage applied to the pooled 14×14 features and shared by
    the box and mask branches; in training the mask branch reuses the res5 maps of the positive RoIs),
    ``background_weight`` (CE weight of class 0), ``smooth_l1_beta`` (box loss; 0 = L1) and
    ``agnostic_labels`` (treat every GT label as foreground class 1).
    """

    def __init__(
        self,
        *args,
        res5: nn.Module | None = None,
        background_weight: float = 1.0,
        smooth_l1_beta: float = 1.0,
        agnostic_labels: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.res5 = res5
        self.background_weight = background_weight
        self.smooth_l1_beta = smooth_l1_beta
        self.agnostic_labels = agnostic_labels

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("RoI heads in training mode need targets (boxes, labels, masks)")
            return [], self.training_losses(features, proposals, image_shapes, targets)
        return self.detect(features, proposals, image_shapes), {}

    def _roi_maps(self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes, pool: nn.Module) -> Tensor:
        x = pool(features, boxes, image_shapes)
        return x if self.res5 is None else self.res5(x)

    def box_features(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """RoI maps (after res5 for C4) and box-head vectors ``[R, D]`` for boxes in input-image pixels."""
        maps = self._roi_maps(features, boxes, image_shapes, self.box_roi_pool)
        return maps, self.box_head(maps)

    def regress_boxes(self, deltas: Tensor, proposals: list[Tensor]) -> Tensor:
        """Each proposal's class-agnostically regressed box ``[R, 4]``, over all images (``[0, 4]`` for none)."""
        return self.box_coder.decode_single(deltas, torch.cat(proposals))

    def predict_masks(
        self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> list[Tensor]:
        """Mask probabilities ``[n_i, 1, M, M]`` per image for the given boxes (not pasted), computed
        :data:`MASK_CHUNK` RoIs at a time."""
        pooled = self.mask_roi_pool(features, boxes, image_shapes)
        logits = [self.mask_predictor(self.mask_head(x if self.res5 is None else self.res5(x)))
                  for x in pooled.split(MASK_CHUNK)]
        return list(torch.cat(logits).sigmoid().split([len(b) for b in boxes]))

    def training_losses(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        if self.agnostic_labels:
            targets = [{**t, "labels": torch.ones_like(t["labels"])} for t in targets]
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        matched_gt = [
            t["boxes"][m] if len(t["boxes"]) else p.new_zeros(len(p), 4)
            for t, m, p in zip(targets, matched_idxs, proposals)
        ]
        maps, feats = self.box_features(features, proposals, image_shapes)
        losses = self.box_losses(self.box_predictor(feats), labels, regression_targets, proposals, matched_gt)
        if self.has_mask():
            pos = [torch.where(lab > 0)[0] for lab in labels]
            pos_boxes = [p[i] for p, i in zip(proposals, pos)]
            if self.res5 is not None:  # C4: res5 maps are shared with the box branch (maskrcnn-benchmark)
                offsets = torch.tensor([0] + [len(p) for p in proposals[:-1]], device=maps.device).cumsum(0)
                mask_maps = maps[torch.cat([i + o for i, o in zip(pos, offsets)])]
            else:
                mask_maps = self.mask_roi_pool(features, pos_boxes, image_shapes)
            mask_logits = self.mask_predictor(self.mask_head(mask_maps))
            channel0 = [torch.zeros_like(t["labels"]) for t in targets]  # one class-agnostic mask channel
            pos_matched = [m[i] for m, i in zip(matched_idxs, pos)]
            gt_masks = [t["masks"] for t in targets]
            losses["loss_mask"] = maskrcnn_loss(mask_logits, pos_boxes, gt_masks, channel0, pos_matched)
        return losses

    def box_losses(
        self,
        outputs: tuple[Tensor, Tensor],
        labels: list[Tensor],
        regression_targets: list[Tensor],
        proposals: list[Tensor],
        matched_gt_boxes: list[Tensor],
    ) -> dict[str, Tensor]:
        """Background-weighted CE and smooth-L1 on positives, both summed and divided by #sampled RoIs."""
        class_logits, deltas = outputs
        labels_all = torch.cat(labels)
        if labels_all.numel() and int(labels_all.max()) >= class_logits.shape[1]:
            raise ValueError(
                f"target label {int(labels_all.max())} is outside the classifier's {class_logits.shape[1] - 1} "
                "classes: labels must index the class embeddings (1..K), 0 is background"
            )
        pos = labels_all > 0
        box_loss = F.smooth_l1_loss(
            deltas[pos], torch.cat(regression_targets)[pos], beta=self.smooth_l1_beta, reduction="sum"
        ) / max(labels_all.numel(), 1)
        return {
            "loss_classifier": background_weighted_ce(class_logits, labels_all, self.background_weight),
            "loss_box_reg": box_loss,
        }

    def detect(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Softmax scores, score threshold, per-class NMS, top-k; masks for the kept boxes."""
        _, feats = self.box_features(features, proposals, image_shapes)
        logits, deltas = self.box_predictor(feats)
        # class-agnostic regression: the same box for every class
        boxes, scores, labels = self.postprocess_detections(
            logits, deltas.repeat(1, logits.shape[1]), proposals, image_shapes
        )
        return self._results(features, boxes, scores, labels, image_shapes)

    def _results(self, features, boxes, scores, labels, image_shapes) -> list[dict[str, Tensor]]:
        results = [{"boxes": b, "labels": lab, "scores": s} for b, s, lab in zip(boxes, scores, labels)]
        if self.has_mask():
            for r, m in zip(results, self.predict_masks(features, boxes, image_shapes)):
                r["masks"] = m
        return results


class EmbeddingRoIHeads(ClassAgnosticRoIHeads):
    """RoI heads of the open-vocabulary detector (box predictor = :class:`EmbeddingClassifier`)."""

    box_predictor: EmbeddingClassifier

    def set_class_embeddings(self, embeddings: Tensor) -> None:
        self.box_predictor.set_class_embeddings(embeddings)

    def region_embeddings(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        """Projected region features ``[R, d]`` of all proposals, concatenated over images (not normalised)."""
        return self.box_predictor.embed(self.box_features(features, proposals, image_shapes)[1])

    def region_embeddings_and_boxes(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[Tensor, list[Tensor]]:
        """Region embeddings ``[R, d]`` and each proposal's class-agnostically regressed, clipped box."""
        feats = self.box_features(features, proposals, image_shapes)[1]
        boxes = self.regress_boxes(self.box_predictor.bbox_pred(feats.flatten(1)), proposals)
        per_image = boxes.split([len(p) for p in proposals])
        clipped = [box_ops.clip_boxes_to_image(b, s) for b, s in zip(per_image, image_shapes)]
        return self.box_predictor.embed(feats), clipped


class OLNRoIHeads(ClassAgnosticRoIHeads):
    """OLN-Box RoI head: L1 box regression and an IoU score (L1 on its sigmoid) for positives; no
    classification loss. Final score = √(RPN objectness · sigmoid(IoU score)), NMS, top-k.

    Proposals must carry the RPN objectness as a fifth column (:class:`OLNRegionProposalNetwork`).
    """

    box_predictor: OLNBoxPredictor

    @staticmethod
    def _split(proposals: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        if any(p.ndim != 2 or p.shape[1] != 5 for p in proposals):
            raise ValueError("OLN RoI heads need proposals [n, 5] = (x1, y1, x2, y2, objectness) from the OLN RPN")
        return [p[:, :4] for p in proposals], [p[:, 4] for p in proposals]

    def training_losses(self, features, proposals, image_shapes, targets) -> dict[str, Tensor]:
        return super().training_losses(features, self._split(proposals)[0], image_shapes, targets)

    def box_losses(self, outputs, labels, regression_targets, proposals, matched_gt_boxes) -> dict[str, Tensor]:
        iou_logits, deltas = outputs
        labels_all = torch.cat(labels)
        pos = labels_all > 0
        n = max(labels_all.numel(), 1)
        box_loss = F.smooth_l1_loss(
            deltas[pos], torch.cat(regression_targets)[pos], beta=self.smooth_l1_beta, reduction="sum"
        ) / n
        iou_target = paired_iou(torch.cat(proposals)[pos], torch.cat(matched_gt_boxes)[pos])
        iou_loss = (iou_logits[pos].sigmoid() - iou_target).abs().sum() / n
        return {"loss_box_reg": box_loss, "loss_iou_score": iou_loss}

    def detect(self, features, proposals, image_shapes) -> list[dict[str, Tensor]]:
        boxes_in, objectness = self._split(proposals)
        _, feats = self.box_features(features, boxes_in, image_shapes)
        iou_logits, deltas = self.box_predictor(feats)
        boxes, scores, labels = self.score_boxes(iou_logits, deltas, boxes_in, objectness, image_shapes)
        return self._results(features, boxes, scores, labels, image_shapes)

    def score_boxes(
        self,
        iou_logits: Tensor,
        deltas: Tensor,
        proposals: list[Tensor],
        objectness: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Decode boxes, score √(objectness · sigmoid(iou)), threshold, NMS, keep the top detections."""
        boxes = self.regress_boxes(deltas, proposals)
        scores = (torch.cat(objectness) * iou_logits.sigmoid()).sqrt()
        sizes = [len(p) for p in proposals]
        out_b, out_s, out_l = [], [], []
        for b, s, shape in zip(boxes.split(sizes), scores.split(sizes), image_shapes):
            b = box_ops.clip_boxes_to_image(b, shape)
            keep = box_ops.remove_small_boxes(b, min_size=1e-2)
            b, s = b[keep], s[keep]
            keep = torch.where(s > self.score_thresh)[0]
            b, s = b[keep], s[keep]
            keep = box_ops.nms(b, s, self.nms_thresh)[: self.detections_per_img]
            out_b.append(b[keep])
            out_s.append(s[keep])
            out_l.append(torch.ones(len(keep), dtype=torch.int64, device=b.device))
        return out_b, out_s, out_l


class OLNRPNHead(RPNHead):
    """RPN head whose ReLU'd 3×3 conv features are L2-normalised over channels before the 1×1 convs."""

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for feature in x:
            t = F.normalize(self.conv(feature), dim=1)
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


def bound_negatives(pos: Tensor, neg: Tensor, neg_pos_ub: float) -> Tensor:
    """One image's sampled negatives (0/1 mask ``neg``), a random ``int(neg_pos_ub · max(1, #pos))`` of them
    kept when there are more: mmdet's ``RandomSampler`` upper bound."""
    keep = int(neg_pos_ub * max(1, int(pos.sum())))
    idx = torch.where(neg.bool())[0]
    if len(idx) <= keep:
        return neg
    out = torch.zeros_like(neg)
    out[idx[torch.randperm(len(idx), device=idx.device)[:keep]]] = 1
    return out


class OLNRegionProposalNetwork(RegionProposalNetwork):
    """OLN-RPN (docs/ggn.md#35-oln): centerness objectness (L1 on the sigmoid; assigner 0.3/0.1, 256 samples,
    positive fraction 1.0 filled with negatives), box branch trained with IoU loss ×10 (assigner
    0.7/0.3, 256 samples, 50 % positives), and **no NMS and no overall cap**: every level's top
    ``pre_nms_top_n`` anchors by objectness go on to the RoI head, as upstream (``_get_bboxes_single``
    returns them all). Returns proposals ``[n, 5]`` (box, objectness), sorted by objectness.
    ``objectness_neg_pos_ub`` bounds the objectness sample's negatives per image at that many per
    positive (at least one positive counted), as mmdet's ``RandomSampler(neg_pos_ub)``; None: unbounded.
    ``tblr``: the box branch predicts upstream's TBLR distances instead of Faster R-CNN's deltas.
    """

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        head: nn.Module,
        pre_nms_top_n: dict[str, int],
        batch_size_per_image: int = 256,
        objectness_neg_pos_ub: float | None = None,
        tblr: bool = False,
    ) -> None:
        # nms_thresh and post_nms_top_n are unused: OLN proposals skip NMS and keep every level's top-k
        super().__init__(
            anchor_generator, head, 0.7, 0.3, batch_size_per_image, 0.5, pre_nms_top_n, pre_nms_top_n, 1.0
        )
        self.objectness_matcher = det_utils.Matcher(
            OLN_OBJECTNESS_POS_IOU, OLN_OBJECTNESS_NEG_IOU, allow_low_quality_matches=False
        )
        self.objectness_sampler = det_utils.BalancedPositiveNegativeSampler(batch_size_per_image, 1.0)
        self.objectness_neg_pos_ub = objectness_neg_pos_ub
        self.tblr = tblr

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Boxes ``[N, 4]`` from the box branch's outputs ``[N, 4]`` at ``anchors``: upstream's TBLR distances
        (:func:`tblr_decode`) or Faster R-CNN's deltas."""
        return tblr_decode(anchors, deltas) if self.tblr else self.box_coder.decode_single(deltas, anchors)

    def forward(
        self, images: ImageList, features: dict[str, Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        feats = list(features.values())
        objectness, deltas = self.head(feats)
        anchors = self.anchor_generator(images, feats)
        num_anchors_per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = self.decode(deltas.detach(), torch.cat(anchors)).view(len(anchors), -1, 4)
        boxes, scores = self.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)
        out = [torch.cat([b, s[:, None]], 1) for b, s in zip(boxes, scores)]
        if not self.training:
            return out, {}
        if targets is None:
            raise ValueError("the OLN RPN in training mode needs targets with boxes")
        return out, self.oln_losses(objectness, deltas, anchors, targets)

    def filter_proposals(
        self,
        proposals: Tensor,
        objectness: Tensor,
        image_shapes: list[tuple[int, int]],
        num_anchors_per_level: list[int],
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Top-k per level, clip, drop tiny boxes, sort by objectness — no NMS, no overall cap."""
        num_images = proposals.shape[0]
        objectness = objectness.detach().reshape(num_images, -1)
        top = self._get_top_n_idx(objectness, num_anchors_per_level)
        rows = torch.arange(num_images, device=proposals.device)[:, None]
        probs, proposals = objectness[rows, top].sigmoid(), proposals[rows, top]
        out_b, out_s = [], []
        for b, s, shape in zip(proposals, probs, image_shapes):
            b = box_ops.clip_boxes_to_image(b, shape)
            keep = box_ops.remove_small_boxes(b, self.min_size)
            b, s = b[keep], s[keep]
            keep = torch.where(s >= self.score_thresh)[0]
            b, s = b[keep], s[keep]
            order = s.argsort(descending=True)
            out_b.append(b[order])
            out_s.append(s[order])
        return out_b, out_s

    @staticmethod
    def _assign(
        anchors: list[Tensor], targets: list[dict[str, Tensor]], matcher: det_utils.Matcher
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: labels (1 positive, 0 negative, -1 ignored) and the matched GT box of each anchor."""
        labels, matched = [], []
        for a, t in zip(anchors, targets):
            gt = t["boxes"]
            if gt.numel() == 0:
                labels.append(a.new_zeros(len(a)))
                matched.append(torch.zeros_like(a))
                continue
            idx = matcher(box_ops.box_iou(gt, a))
            lab = (idx >= 0).to(a.dtype)
            lab[idx == matcher.BETWEEN_THRESHOLDS] = -1.0
            labels.append(lab)
            matched.append(gt[idx.clamp(min=0)])
        return labels, matched

    def oln_losses(
        self, objectness: Tensor, deltas: Tensor, anchors: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        all_anchors = torch.cat(anchors)
        box_labels, box_gt = self._assign(anchors, targets, self.proposal_matcher)
        box_pos, box_neg = self.fg_bg_sampler(box_labels)
        pos, n_box = torch.where(torch.cat(box_pos))[0], int(torch.cat(box_pos).sum() + torch.cat(box_neg).sum())
        pred = self.decode(deltas[pos], all_anchors[pos])
        iou = paired_iou(pred, torch.cat(box_gt)[pos])
        loss_box = OLN_RPN_IOU_LOSS_WEIGHT * (1 - iou).sum() / max(n_box, 1)

        obj_labels, obj_gt = self._assign(anchors, targets, self.objectness_matcher)
        obj_pos, obj_neg = self.objectness_sampler(obj_labels)
        if self.objectness_neg_pos_ub is not None:
            obj_neg = [bound_negatives(p, n, self.objectness_neg_pos_ub) for p, n in zip(obj_pos, obj_neg)]
        pos = torch.cat(obj_pos).bool()
        sampled = pos | torch.cat(obj_neg).bool()
        target = all_anchors.new_zeros(len(all_anchors))
        target[pos] = centerness_targets(all_anchors[pos], torch.cat(obj_gt)[pos])
        err = (objectness.flatten()[sampled].sigmoid() - target[sampled]).abs()
        return {"loss_objectness": err.sum() / max(int(sampled.sum()), 1), "loss_rpn_box_reg": loss_box}
