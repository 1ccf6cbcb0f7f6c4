"""What the GT-box scoring scripts share (cpl_grounding_zero_shot, cpl_teacher_recall): a detector's RoI-head
class logits for an image's ground-truth boxes, scored as RoIs, and the best class among them. Not a benchmark
itself."""

from __future__ import annotations

import torch

from ovis.config import ModelConfig


def resize_scale(image: torch.Tensor, cfg: ModelConfig) -> float:
    """The factor ``model.transform`` resizes ``image`` (``C×H×W``) by under ``cfg.min_size`` / ``cfg.max_size``."""
    h, w = image.shape[-2:]
    return min(cfg.min_size / min(h, w), cfg.max_size / max(h, w))


@torch.no_grad()
def gt_box_logits(model: torch.nn.Module, image: torch.Tensor, boxes: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """``model``'s box-predictor class logits (``N×(1+classes)``, column 0 background) for ``boxes`` (``N×4``,
    the original image's pixels) as RoIs: the image transformed and through the backbone, the boxes scaled to
    the resized image."""
    images, _ = model.transform([image])
    _, feats = model.roi_heads.box_features(model.backbone(images.tensors), [boxes * resize_scale(image, cfg)],
                                            images.image_sizes)
    logits, _ = model.roi_heads.box_predictor(feats)
    return logits


def best_class(logits: torch.Tensor, first: int = 1) -> torch.Tensor:
    """Each row's highest-scoring label among ``first`` and above (default: every class, background left out)."""
    return logits[:, first:].argmax(1) + first
