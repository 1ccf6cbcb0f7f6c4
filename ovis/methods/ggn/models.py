"""The networks of a GGN run: the PA network (``teacher``) and the class-agnostic detectors (``baseline``,
``student`` and, for a Mask R-CNN student, the OLN variants), built from the recipe or loaded trained."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from ovis.config import Recipe
from ovis.engine.train import CheckpointError, load_checkpoint
from ovis.models.affinity import AffinityNet
from ovis.models.detector import build_detector
from ovis.runs import RunLayout

MODELS = ("teacher", "baseline", "student", "oln", "oln_baseline")
OLN_VARIANTS = ("oln", "oln_baseline")  # a Mask R-CNN run's OLN models, with and without pseudo GT
MASK_HEAD = ("roi_heads.mask_head.", "roi_heads.mask_predictor.")  # a detector's mask-head weights


def affinity_net(recipe: Recipe, weights: str | None) -> AffinityNet:
    """The recipe's PA network, initialised from ``weights``. Its backbone BatchNorm is frozen when
    the recipe has pretrained weights (their statistics) and trains otherwise; it sees each image resized by
    ``model.affinity_input_scale`` (null: at its own size)."""
    m = recipe.model
    return AffinityNet(m.backbone, weights=weights, channels=m.decoder_channels,
                       norm="frozen_bn" if m.backbone_weights else "bn", input_scale=m.affinity_input_scale or 1.0)


def oln_recipe(recipe: Recipe) -> Recipe:
    """The recipe of the OLN variant: ``recipe`` with ``model.heads: oln`` (masks as the recipe says)."""
    return dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, heads="oln"))


def trains_oln_variant(recipe: Recipe) -> bool:
    """Whether ``run_student`` also trains the OLN variants (``OLN_VARIANTS``): yes unless the student
    already is OLN (its baseline then is OLN on base GT only)."""
    return recipe.model.heads != "oln"


def detectors(recipe: Recipe) -> tuple[str, ...]:
    """The detector stages a run trains and evaluates, in order."""
    return ("baseline", "student") + (OLN_VARIANTS if trains_oln_variant(recipe) else ())


def bare_model(recipe: Recipe, which: str) -> nn.Module:
    """Model ``which`` (of ``MODELS``) as its checkpoint's weights fill it: the PA network (the recipe's
    weights decide its BatchNorm, frozen or trained) or a class-agnostic detector without the backbone's
    pretrained initialisation (the checkpoint holds every weight)."""
    if which == "teacher":
        return affinity_net(recipe, None)
    cfg = oln_recipe(recipe).model if which in OLN_VARIANTS else recipe.model
    return build_detector(dataclasses.replace(cfg, backbone_weights=None), num_classes=1)


def load_model(recipe: Recipe, run_dir: str | Path, which: str) -> nn.Module:
    """The trained ``which`` ("teacher" = PA network, "baseline", "student", "oln" / "oln_baseline" =
    the OLN variant with / without pseudo GT) from ``<run_dir>/<which>/model_final.pth``, in eval mode on CPU."""
    if which not in MODELS:
        raise ValueError(f"load_model: which={which!r}; use one of {MODELS}")
    path = RunLayout(run_dir).checkpoint(which)
    if not path.is_file():
        stage = "teacher" if which == "teacher" else "student"
        raise FileNotFoundError(f"{path} not found; run the {stage} stage first")
    return load_file(recipe, path, which)


def load_file(recipe: Recipe, path: Path, which: str, boxes_only: bool = False,
              advice: str = "was it trained with another recipe? Re-run the stage") -> nn.Module:
    """Model ``which`` (of ``MODELS``) from the checkpoint file ``path``, in eval mode on CPU; a
    :class:`CheckpointError` with ``advice`` when the file is no checkpoint or its weights do not fit the
    recipe's model. ``boxes_only``: a detector without its mask head (a checkpoint's mask-head weights, if
    any, are left out)."""
    if boxes_only:
        recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, mask=False))
    model = bare_model(recipe, which)
    state = load_checkpoint(path, keys=("model",), advice=advice)["model"]
    if boxes_only:
        state = {k: v for k, v in state.items() if not k.startswith(MASK_HEAD)}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit the recipe's model ({recipe.name}): "
                              f"{' '.join(str(e).split())[:300]}; {advice}") from None
    return model.eval()
