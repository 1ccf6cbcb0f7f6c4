"""Tiny budgets that run each method's stages end to end in seconds on CPU (shared by the e2e tests)."""

from __future__ import annotations

DATA = {"data.demo_num_train": 6, "data.demo_num_val": 4, "data.demo_image_size": 64}

CPL = {
    **DATA,
    "model.min_size": 64, "model.max_size": 64, "model.mask_head_channels": 8, "model.c4_pooler_resolution": 4,
    "model.rpn_pre_nms_top_n_train": 100, "model.rpn_post_nms_top_n_train": 30,
    "model.rpn_pre_nms_top_n_test": 50, "model.rpn_post_nms_top_n_test": 10, "model.box_batch_size_per_image": 16,
    "grounding.max_iter": 2, "grounding.batch_size": 2, "grounding.num_workers": 0,
    "teacher.max_iter": 2, "teacher.batch_size": 2,
    "student.max_iter": 2, "student.uncertainty_train_iter": 1, "student.log_period": 1,
    "eval.max_images": 2, "eval.detections_per_img": 10,
}

GGN = {
    **DATA,
    "model.decoder_channels": 16, "model.fpn_channels": 16, "model.representation_size": 32,
    "model.mask_head_channels": 16, "model.min_size": 64, "model.max_size": 64,
    "model.box_batch_size_per_image": 32, "model.box_detections_per_img": 50,
    "model.rpn_pre_nms_top_n_train": 100, "model.rpn_post_nms_top_n_train": 50,
    "model.rpn_pre_nms_top_n_test": 100, "model.rpn_post_nms_top_n_test": 50,
    "teacher.max_iter": 2, "teacher.batch_size": 1, "teacher.checkpoint_period": 2, "teacher.log_period": 1,
    "student.max_iter": 2, "student.batch_size": 1, "student.checkpoint_period": 2, "student.log_period": 1,
    "pseudo.max_images": 4, "pseudo.workers": 0, "pseudo.top_k": 2, "eval.max_images": 2, "eval.workers": 1,
}


def as_overrides(tiny: dict, **extra) -> list[str]:
    """``KEY=VALUE`` strings for ``--set`` / ``reproduce(overrides=...)``."""
    return [f"{k}={v}" for k, v in {**tiny, **extra}.items()]
