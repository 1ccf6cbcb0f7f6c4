"""CPL / XPM (docs/cpl.md): the method's declaration (``PIPELINE_STAGES``, the training stages and their tasks,
``TRAINING_STAGES``) and the stage functions the notebooks and ``ovis train`` call.

- grounding → :func:`grounding_task` (``ovis.models.grounding``; caption pretraining, docs/cpl.md#21-caption-pretraining);
- teacher → :func:`teacher_task`, :func:`run_teacher`, :func:`teacher_figures` (docs/cpl.md#22-teacher): R-C4
  embedding Mask R-CNN on base-class masks, initialised from the grounding checkpoint
  (:func:`grounding_to_detector` maps its keys, :mod:`.grounding`), projection frozen;
- pseudo → :func:`run_pseudo`, :func:`pseudo_figures`, :func:`pseudo_browser` (docs/cpl.md#23-pseudo-labels,
  ``ovis.pseudo.cross_modal``);
- student → :func:`student_task`, :func:`run_student`, :func:`student_figures` (docs/cpl.md#24-robust-student,
  ``ovis.models.student``), initialised from ``teacher/model_final.pth``;
- eval → :func:`load_model`, :func:`run_eval` (docs/cpl.md#25-inference, docs/protocols.md#41-open-vocabulary-ap): generalized, constrained-novel and
  constrained-base runs per model, each with its own vocabulary (:mod:`.evaluation`).

``run_teacher``, ``run_student`` and the σ-head hook are in :mod:`.training`, the figures in :mod:`.figures`, the
training datasets in :mod:`.datasets`, the networks the checkpoints fill in :mod:`.models`. The teacher and
student themselves (:func:`build_teacher`, :func:`build_student`, :func:`load_model`, :func:`class_embeddings`)
are built by ``ovis.pseudo.detectors``, which the pseudo-labeler shares.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ovis.config import Recipe
from ovis.data.dataset import CaptionImages, StudentDataset, collate_fn
from ovis.methods import TrainingStage
from ovis.methods.cpl.datasets import aspect_ratios, train_dataset
from ovis.methods.cpl.evaluation import EVAL_SETTINGS, run_eval
from ovis.methods.cpl.figures import student_figures, teacher_figures
from ovis.methods.cpl.grounding import GROUNDING_CHECKPOINT, grounding_to_detector
from ovis.methods.cpl.models import TEACHER_CHECKPOINT, grounding_model, student_model, teacher_model
from ovis.methods.cpl.pseudo import run_pseudo
from ovis.methods.cpl.training import StudentHook, run_student, run_teacher
from ovis.models.grounding import GroundingModel
from ovis.models.text import StaticTokenEmbedding, build_text_encoder
from ovis.pseudo.cross_modal import (
    PseudoLabeler,
    pseudo_browser,
    pseudo_figures,
    pseudo_vocabulary,
)
from ovis.pseudo.detectors import (
    build_student,
    build_teacher,
    class_embeddings,
    load_model,
    need_file,
    read_partition,
)
from ovis.runs import STAGES, RunLayout

if TYPE_CHECKING:
    from ovis.engine.train import TrainTask

__all__ = [
    "EVAL_SETTINGS",
    "GROUNDING_CHECKPOINT",
    "PIPELINE_STAGES",
    "TRAINING_STAGES",
    "PseudoLabeler",
    "StudentHook",
    "build_student",
    "build_teacher",
    "class_embeddings",
    "grounding_task",
    "grounding_to_detector",
    "load_model",
    "pseudo_browser",
    "pseudo_figures",
    "pseudo_vocabulary",
    "run_eval",
    "run_pseudo",
    "run_student",
    "run_teacher",
    "student_figures",
    "student_task",
    "teacher_figures",
    "teacher_task",
]

# The training tasks TRAINING_STAGES declares, defined here so that their ``module:function`` specs (what a
# torchrun worker imports) stay ``ovis.methods.cpl.method:<task>``.


def grounding_task(recipe: Recipe, run_dir: str | Path, stage: str = "grounding") -> TrainTask:
    """The loop's task for caption pretraining: ``<run_dir>/splits/train_base.json`` images with
    ``<run_dir>/splits/captions.json`` captions, images from ``data.train_images`` resized by
    ``model.min_size``/``max_size``; model from ``model.backbone``, ``backbone_weights`` (BN trained
    only when there are none), ``text_encoder``, ``input_format``, ``stride_in_1x1``; optimiser
    settings from ``recipe.<stage>`` (``grounding``), whose ``cache_features`` keeps the frozen backbone's
    maps (:meth:`GroundingModel.cache_backbone`) and decodes each image once. Batches are grouped by aspect ratio."""
    from ovis.engine.train import TrainTask

    cfg = getattr(recipe, stage, None)
    if cfg is None or not hasattr(cfg, "max_iter"):
        raise ValueError(f"grounding_task: recipe has no training section {stage!r}")
    layout = RunLayout(run_dir)
    ann_file, captions_file = layout.split("train_base.json"), layout.split("captions.json")
    for f in (ann_file, captions_file):
        if not f.is_file():
            raise FileNotFoundError(f"grounding: {f} not found; run the splits stage first "
                                    f"(`ovis splits --recipe {recipe.name} --run-dir {run_dir}`) with data.train_captions set")
    captions = json.loads(captions_file.read_text())
    m = recipe.model
    cache = bool(getattr(cfg, "cache_features", False))  # a GroundingConfig section
    dataset = CaptionImages(ann_file, recipe.data.path(recipe.data.train_images), captions, min_size=m.min_size,
                            max_size=m.max_size, flip_prob=cfg.flip_prob, decode_once=cache)
    encoder = build_text_encoder(m.text_encoder)
    if not isinstance(encoder, StaticTokenEmbedding):
        raise ValueError(f"model.text_encoder={m.text_encoder!r}: grounding needs static token embeddings; "
                         "use 'minilm' or 'bert-base-uncased'")
    model = GroundingModel(m.backbone, encoder, weights=m.backbone_weights, input_format=m.input_format,
                           stride_in_1x1=m.stride_in_1x1, train_bn=not m.backbone_weights, norm=m.norm)
    if m.embedding_dim is not None and m.embedding_dim != model.embedding_dim:
        raise ValueError(f"model.embedding_dim={m.embedding_dim} but text encoder {m.text_encoder!r} gives "
                         f"{model.embedding_dim}-d token embeddings; set model.embedding_dim: null")
    if cache:  # the dataset decodes each image (and flip) once, the model keeps its map
        model.cache_backbone()
    return TrainTask(model, dataset, cfg, aspect_ratios=dataset.aspect_ratios())


def teacher_task(recipe: Recipe, run_dir: str | Path, stage: str = "teacher") -> TrainTask:
    """Teacher training (docs/cpl.md#22-teacher): ``splits/train_base.json`` base masks (labels 1..K in the
    partition's base order), flip ``teacher.flip_prob``; backbone, res5 and projection from
    ``grounding/model_final.pth``; ``teacher.freeze`` (the projection) kept frozen by the loop."""
    from ovis.engine.train import TrainTask, load_checkpoint

    run_dir = Path(run_dir)
    cfg = recipe.teacher
    base_ids = [c["id"] for c in read_partition(run_dir)["base"]]
    ds = train_dataset(recipe, need_file(RunLayout(run_dir).split("train_base.json"), "run the splits stage first"),
                        base_ids, cfg.flip_prob)
    model = build_teacher(recipe, run_dir)
    if cfg.init is None:
        ckpt = load_checkpoint(need_file(run_dir / GROUNDING_CHECKPOINT, "run the grounding stage first (run_teacher does)"))
        model.load_state_dict(grounding_to_detector(ckpt["model"], model), strict=False)
    return TrainTask(model, ds, cfg, collate_fn=collate_fn, aspect_ratios=aspect_ratios(ds))


def student_task(recipe: Recipe, run_dir: str | Path, stage: str = "student") -> TrainTask:
    """Student training (docs/cpl.md#24-robust-student): init from ``teacher/model_final.pth`` (``student.init``
    overrides), ``student.freeze`` (backbone, rpn) frozen; offline pseudo masks from
    ``pseudo/train_pseudo.json``, or (``student.online_pseudo``) the frozen teacher labels every
    batch from the captions of ``splits/train_base.json`` (its caption-only images included). The σ-head freezes after
    ``student.uncertainty_train_iter`` iterations; σ/λ are logged to ``student/robust.jsonl``.
    DDP runs with ``find_unused_parameters`` (the σ-head freezes mid-run, caption-less images skip
    the pseudo branch)."""
    from ovis.engine.dist import is_main_process
    from ovis.engine.train import TrainTask

    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    s = recipe.student
    init = s.init or TEACHER_CHECKPOINT
    cfg = dataclasses.replace(s, init=init, find_unused_parameters=True)
    need_file(run_dir / init if not Path(init).is_absolute() else Path(init), "train the teacher first")
    base_ids = [c["id"] for c in read_partition(run_dir)["base"]]
    pv = pseudo_vocabulary(recipe, run_dir)
    pseudo_ids = [c["id"] for c in pv.categories]
    if s.online_pseudo:
        ds = train_dataset(recipe, need_file(layout.split("train_base.json"), "run the splits stage first"),
                            base_ids, cfg.flip_prob, caption_only=True)
        caps = {int(k): v for k, v in json.loads(layout.split("captions.json").read_text()).items()}
        data = StudentDataset(ds, base_ids, pseudo_ids, captions=caps)
    else:
        path = need_file(layout.pseudo_gt, "run the pseudo stage first (run_pseudo)")
        ds = train_dataset(recipe, path, None, cfg.flip_prob)
        data = StudentDataset(ds, base_ids, pseudo_ids)
    model = build_student(recipe, run_dir, pv.names)
    if s.online_pseudo:
        from ovis.pseudo.cross_modal import build_labeler

        label = {cid: k + 1 for k, cid in enumerate(pseudo_ids)}
        model.set_online_labeler(build_labeler(recipe, run_dir), {c: label[pv.file_id(c)] for c in pv.vocab.category_names})
    hook = StudentHook(s.uncertainty_train_iter, run_dir / stage / "robust.jsonl", s.log_period, is_main_process)
    return TrainTask(model, data, cfg, collate_fn=collate_fn, aspect_ratios=data.aspect_ratios(), after_step=hook)


PIPELINE_STAGES = STAGES  # all six (ovis.methods: the hooks each one's notebook calls)

# the engine training stages (``<run_dir>/<name>/``), their tasks and models, and the pipeline stage that trains them
TRAINING_STAGES = {
    # caption grounding runs before the teacher and never reads the teacher section
    "grounding": TrainingStage(grounding_task, "teacher", grounding_model, own_sections=("model", "grounding")),
    "teacher": TrainingStage(teacher_task, "teacher", teacher_model),
    "student": TrainingStage(student_task, "student", student_model),
}
