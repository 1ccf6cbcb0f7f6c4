"""GGN / OLN on the ovis engine (docs/ggn.md): the method's declaration (``PIPELINE_STAGES``, the training
stages and their tasks, ``TRAINING_STAGES``) and the stage functions the notebooks and ``ovis`` call.

1. teacher: the pairwise-affinity (PA) network trained on seen-class masks at original resolution
   (:mod:`.training`).
2. pseudo: PA → grouping → ranked candidate masks per training image, stored per shard
   (``pseudo/shards/candidates.<s>-of-<n>.json``, resumable; :mod:`.extract`), then merged into
   ``pseudo/train_pseudo.json`` = base GT + top-k pseudo masks (gt_iou < thresh) and ``stats.json``
   (:mod:`.pseudo_gt`).
3. student: a class-agnostic Mask R-CNN (``model.heads: standard``) or OLN (``heads: oln``) on base GT +
   pseudo GT, ``baseline``: the same recipe on base GT only (``<run_dir>/baseline/``), and for a Mask R-CNN
   student its OLN variants (``heads: oln``), on base + pseudo GT (``<run_dir>/oln/``) and on base GT only
   (``<run_dir>/oln_baseline/``), so every run reports baseline vs GGN, and OLN with and without pseudo GT,
   side by side (:mod:`.training`; the networks: :mod:`.models`).
4. eval: every model on ``splits/val.json`` under the recipe's open-world protocol
   (``eval/<model>/<iou_type>/metrics.json``, side by side in ``eval/metrics.json``; :mod:`.evaluation`).

The notebooks' figures and the pseudo-mask browser are in :mod:`.figures`; the run's split files and
datasets in :mod:`.datasets`. Pseudo annotations get ``category_id`` = the smallest seen category id of
``train_base.json`` (COCO VOC split: 1, "person", as upstream, docs/ggn.md#6-pitfalls item 19); the
student is class-agnostic, so every label becomes 1 anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from ovis.config import Recipe
from ovis.engine.train import TrainTask
from ovis.methods import TrainingStage
from ovis.methods.ggn.datasets import aspect_ratios, split_file, train_dataset
from ovis.methods.ggn.evaluation import comparison_table, evaluate_models, run_eval, side_by_side
from ovis.methods.ggn.extract import extract_shard, grouping_params
from ovis.methods.ggn.figures import pseudo_browser, pseudo_figures, student_figures, teacher_figures
from ovis.methods.ggn.models import (
    MODELS,
    OLN_VARIANTS,
    affinity_net,
    bare_model,
    load_model,
    oln_recipe,
    trains_oln_variant,
)
from ovis.methods.ggn.pseudo_gt import merge_pseudo, run_pseudo
from ovis.methods.ggn.training import run_student, run_teacher
from ovis.models.detector import build_detector
from ovis.pseudo.shards import resolve_shards
from ovis.runs import STAGES, RunLayout

__all__ = [
    "MODELS",
    "OLN_VARIANTS",
    "PIPELINE_STAGES",
    "TRAINING_STAGES",
    "affinity_net",
    "bare_model",
    "baseline_task",
    "comparison_table",
    "evaluate_models",
    "extract_shard",
    "grouping_params",
    "load_model",
    "merge_pseudo",
    "oln_baseline_task",
    "oln_recipe",
    "oln_task",
    "pseudo_browser",
    "pseudo_figures",
    "resolve_shards",
    "run_eval",
    "run_pseudo",
    "run_student",
    "run_teacher",
    "side_by_side",
    "student_figures",
    "student_task",
    "teacher_figures",
    "teacher_task",
    "trains_oln_variant",
]

# The training tasks TRAINING_STAGES declares, defined here so that their ``module:function`` specs (what a
# torchrun worker imports) stay ``ovis.methods.ggn.method:<task>``.


def teacher_task(recipe: Recipe, run_dir: str | Path, stage: str) -> TrainTask:
    """PA network on seen-class masks of ``splits/train_base.json``, original resolution (docs/ggn.md#31-pa-network).

    Flip only if ``recipe.teacher.flip_prob`` > 0 (the paper recipe: 0).
    """
    ds = train_dataset(recipe, split_file(run_dir, "train_base.json"), recipe.teacher.flip_prob)
    ds.check_image_files()  # before the stage writes anything
    model = affinity_net(recipe, recipe.model.backbone_weights)
    return TrainTask(model, ds, recipe.teacher, aspect_ratios=aspect_ratios(ds))


def _detector_task(recipe: Recipe, ann_file: Path) -> TrainTask:
    if recipe.model.classifier != "agnostic":
        raise ValueError(f"recipe {recipe.name}: the GGN/OLN student is class-agnostic; set model.classifier=agnostic "
                         f"(got {recipe.model.classifier!r})")
    ds = train_dataset(recipe, ann_file, recipe.student.flip_prob, with_masks=recipe.model.mask)
    ds.check_image_files()  # before the stage writes anything
    model = build_detector(recipe.model, num_classes=1)
    return TrainTask(model, ds, recipe.student, aspect_ratios=aspect_ratios(ds))


def student_task(recipe: Recipe, run_dir: str | Path, stage: str) -> TrainTask:
    """Class-agnostic Mask R-CNN / OLN (``recipe.model``) on base GT + pseudo GT (``pseudo/train_pseudo.json``)."""
    path = RunLayout(run_dir).pseudo_gt
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the pseudo stage first (ovis.methods.ggn.run_pseudo)")
    return _detector_task(recipe, path)


def baseline_task(recipe: Recipe, run_dir: str | Path, stage: str) -> TrainTask:
    """The student's recipe without pseudo GT: base-class GT of ``splits/train_base.json`` only."""
    return _detector_task(recipe, split_file(run_dir, "train_base.json"))


def oln_task(recipe: Recipe, run_dir: str | Path, stage: str) -> TrainTask:
    """The OLN variant (``oln_recipe``) on base GT + pseudo GT, trained with ``recipe.student``."""
    return student_task(oln_recipe(recipe), run_dir, stage)


def oln_baseline_task(recipe: Recipe, run_dir: str | Path, stage: str) -> TrainTask:
    """The OLN variant on base GT only (``splits/train_base.json``), trained with ``recipe.student``."""
    return baseline_task(oln_recipe(recipe), run_dir, stage)


def _model_of(which: str) -> Callable[[Recipe, Path], nn.Module]:
    """The ``TrainingStage.model`` of ``which``: :func:`bare_model`."""
    return lambda recipe, run_dir: bare_model(recipe, which)


PIPELINE_STAGES = STAGES  # all six (ovis.methods: the hooks each one's notebook calls)

# the engine training stages (``<run_dir>/<name>/``), their tasks and models, and the pipeline stage that trains
# them; the baseline and the OLN variants have no recipe section: they train with recipe.student
TRAINING_STAGES = {
    "teacher": TrainingStage(teacher_task, "teacher", _model_of("teacher")),
    "student": TrainingStage(student_task, "student", _model_of("student")),
    "baseline": TrainingStage(baseline_task, "student", _model_of("baseline"), config="student"),
    "oln": TrainingStage(oln_task, "student", _model_of("oln"), config="student"),
    "oln_baseline": TrainingStage(oln_baseline_task, "student", _model_of("oln_baseline"), config="student"),
}
