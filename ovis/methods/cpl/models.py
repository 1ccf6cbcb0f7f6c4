"""The networks the training stages' checkpoints fill (``TrainingStage.model``), pretrained weights left out."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from ovis.config import Recipe
from ovis.models.grounding import GroundingModel
from ovis.models.text import StaticTokenEmbedding, build_text_encoder
from ovis.pseudo.detectors import build_student, build_teacher
from ovis.runs import FINAL

TEACHER_CHECKPOINT = f"teacher/{FINAL}"  # relative to the run folder: the student's default init


def without_pretrained(recipe: Recipe) -> Recipe:
    """``recipe`` without the backbone's pretrained weights: a checkpoint fills every tensor."""
    return dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, backbone_weights=None))


def grounding_model(recipe: Recipe, run_dir: Path) -> GroundingModel | None:
    """The caption-grounding network as its checkpoint fills it (the teacher maps its weights), or None
    for a text encoder grounding cannot train with (:func:`grounding_task` says so)."""
    m = without_pretrained(recipe).model
    encoder = build_text_encoder(m.text_encoder)
    if not isinstance(encoder, StaticTokenEmbedding):
        return None
    return GroundingModel(m.backbone, encoder, weights=None, input_format=m.input_format,
                          stride_in_1x1=m.stride_in_1x1, norm=m.norm)


def teacher_model(recipe: Recipe, run_dir: Path) -> nn.Module:
    """The teacher as its checkpoint fills it (as :func:`load_model` builds it)."""
    return build_teacher(without_pretrained(recipe), run_dir)


def student_model(recipe: Recipe, run_dir: Path) -> nn.Module:
    """The student as its checkpoint fills it (as :func:`load_model` builds it)."""
    return build_student(without_pretrained(recipe), run_dir)
