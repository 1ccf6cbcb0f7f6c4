"""Upstream's optional learned ranker of the grouping candidates (docs/ggn.md#32-grouping, "Optional learned
ranker"; ``pseudo.oln_ranker``): an OLN trained on base GT scores each candidate's box, and the candidates
are ranked by ``pa / 2 + r + r · c`` instead of the PA score alone, before the NMS."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import box_iou

from ovis.config import Recipe
from ovis.engine.train import CheckpointError
from ovis.methods.ggn.models import load_file
from ovis.models.heads import OLNRegionProposalNetwork, OLNRoIHeads
from ovis.pseudo.grouping import Grouping

IOU_BLOCK = 1 << 24  # at most this many box-anchor IoUs in memory (a COCO image has ~10⁵ anchors)


class OlnRanker:
    """An OLN-Box detector (the recipe's model with OLN heads and no mask head) loaded from the checkpoint
    file ``path``, scoring boxes as upstream's ``pa_lib/oln_ranker.py`` does. The file may hold a mask head
    too (a Mask R-CNN run's ``oln_baseline``); it is not used."""

    def __init__(self, recipe: Recipe, path: str | Path, device: torch.device | str = "cpu"):
        path = Path(path)
        train = "train an OLN on base GT with this recipe's model (ovis train --stage oln_baseline) and set " \
                "pseudo.oln_ranker to its model_final.pth"
        if not path.is_file():
            what = "a folder, not a file" if path.is_dir() else f"file not found (from {Path.cwd()})"
            raise FileNotFoundError(f"pseudo.oln_ranker={str(path)!r}: {what}; {train}")
        try:
            self.model = load_file(recipe, path, "oln_baseline", boxes_only=True, advice=train).to(device)
        except CheckpointError as e:
            raise CheckpointError(f"pseudo.oln_ranker: {e}") from None
        self.device = torch.device(device)

    @torch.no_grad()
    def box_scores(self, image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(r, c) of each box ``[n, 4]`` (xyxy, pixels of ``image`` [3, H, W] in [0, 1]), both in [0, 1].

        r: the RoI head's score of the box as given, √(1 · sigmoid(IoU logit)); upstream passes the boxes as
        proposals of score 1 to OLN's box head, whose score is the geometric mean of the proposal's score
        and its IoU estimate. c: the RPN objectness (centerness) of the anchor with the highest IoU to the box.
        """
        if len(boxes) == 0:
            return torch.zeros(0), torch.zeros(0)
        transform = cast(GeneralizedRCNNTransform, self.model.transform)
        backbone = cast(nn.Module, self.model.backbone)
        rpn = cast(OLNRegionProposalNetwork, self.model.rpn)
        roi_heads = cast(OLNRoIHeads, self.model.roi_heads)
        images, _ = transform([image.to(self.device)])
        boxes = resize_boxes(boxes.to(self.device, torch.float32), list(image.shape[-2:]), list(images.image_sizes[0]))
        features = backbone(images.tensors)
        levels = list(features.values())
        objectness, _ = rpn.head(levels)
        anchors = rpn.anchor_generator(images, levels)[0]
        flat = torch.cat([o.permute(0, 2, 3, 1).reshape(-1) for o in objectness])  # the anchors' order: level, y, x
        step = max(1, IOU_BLOCK // len(anchors))
        c = flat[torch.cat([box_iou(b, anchors).argmax(1) for b in boxes.split(step)])].sigmoid()
        _, feats = roi_heads.box_features(features, [boxes], images.image_sizes)
        iou_logits, _ = roi_heads.box_predictor(feats)
        return iou_logits.flatten().sigmoid().sqrt().cpu(), c.cpu()

    def scores(self, image: torch.Tensor, grouping: Grouping) -> np.ndarray:
        """The ranking score ``pa / 2 + r + r · c`` of each candidate of ``grouping`` (higher is better); a grouping
        at another size than ``image`` (``model.affinity_input_scale``) has its boxes scaled to the image."""
        (gh, gw), (h, w) = grouping.labels.shape, image.shape[-2:]
        boxes = torch.from_numpy(grouping.boxes) * torch.tensor([w / gw, h / gh, w / gw, h / gh], dtype=torch.float64)
        r, c = (t.double().numpy() for t in self.box_scores(image, boxes))
        return grouping.score / 2 + r + r * c
