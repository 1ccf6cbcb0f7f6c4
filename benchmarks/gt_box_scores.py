"""What the GT-box scoring scripts share (cpl_grounding_zero_shot, cpl_teacher_recall): a detector's RoI-head
class logits for an image's ground-truth boxes, scored as RoIs, and the best class among them. Not a benchmark
itself."""

from __future__ import annotations

import torch
from torchvision.models.detection.transform import resize_boxes


@torch.no_grad()
def gt_box_logits(model: torch.nn.Module, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """``model``'s box-predictor class logits (``N×(1+classes)``, column 0 background) for ``boxes`` (``N×4``,
    the original image's pixels) as RoIs: the image transformed and through the backbone, the boxes resized
    with it (torchvision's ``resize_boxes``)."""
    images, _ = model.transform([image])
    boxes = resize_boxes(boxes, list(image.shape[-2:]), list(images.image_sizes[0]))
    _, feats = model.roi_heads.box_features(model.backbone(images.tensors), [boxes], images.image_sizes)
    logits, _ = model.roi_heads.box_predictor(feats)
    return logits


def best_class(logits: torch.Tensor, first: int = 1) -> torch.Tensor:
    """Each row's highest-scoring label among ``first`` and above (default: every class, background left out)."""
    return logits[:, first:].argmax(1) + first
