"""CPL's detectors of a run folder (docs/cpl.md#22-teacher, docs/cpl.md#24-robust-student): the teacher
and the robust student, built with the recipe's text encoder and the run's base classes, and loaded
from their checkpoints.

Below the method layer, so that the pseudo-labeler (``ovis.pseudo.cross_modal``) can load the teacher
without importing ``ovis.methods.cpl``, which builds its stages on both.

Class embeddings: the teacher uses the text encoder's static token embeddings of class names
unnormalised; the student and pseudo-labelling L2-normalise them (docs/cpl.md#6-pitfalls, item 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN

from ovis.config import Recipe
from ovis.data.coco import CocoFormatError, read_json
from ovis.engine.train import load_checkpoint
from ovis.models.detector import build_detector, set_class_embeddings
from ovis.models.student import RobustStudent
from ovis.models.text import TextEncoder, build_text_encoder
from ovis.runs import RunLayout

__all__ = [
    "build_student",
    "build_teacher",
    "class_embeddings",
    "load_model",
    "need_file",
    "read_partition",
    "text_encoder",
]


@lru_cache(maxsize=4)
def _encoder(name: str) -> TextEncoder:
    return build_text_encoder(name)


def text_encoder(recipe: Recipe) -> TextEncoder:
    """The recipe's text encoder (``model.text_encoder``), one instance per process."""
    return _encoder(recipe.model.text_encoder)


def class_embeddings(recipe: Recipe, names: Sequence[str], normalize: bool) -> Tensor:
    """Text embeddings ``[K, d]`` of class names (teacher: ``normalize=False``; student: True)."""
    return text_encoder(recipe).encode(list(names), normalize=normalize)


def read_partition(run_dir: Path) -> dict:
    """The run's ``splits/partition.json`` (``base`` and ``novel`` category lists)."""
    path = RunLayout(run_dir).split("partition.json")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the splits stage first")
    partition = read_json(path)
    if not isinstance(partition, dict) or not all(isinstance(partition.get(k), list) for k in ("base", "novel")):
        raise CocoFormatError(f"{path}: expected an object with 'base' and 'novel' category lists (re-run the splits stage)")
    return partition


def need_file(path: Path, what: str) -> Path:
    """``path``, or FileNotFoundError saying ``what`` to do when it is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; {what}")
    return path


def build_teacher(recipe: Recipe, run_dir: str | Path) -> MaskRCNN:
    """The R-C4 embedding detector with the base classes' unnormalised name embeddings."""
    base = read_partition(Path(run_dir))["base"]
    return build_detector(recipe.model, class_embeddings=class_embeddings(recipe, [c["name"] for c in base], False))


def build_student(recipe: Recipe, run_dir: str | Path, pseudo_names: Sequence[str] | None = None) -> RobustStudent:
    """The robust student: teacher layout, base embeddings L2-normalised for the GT branch and,
    when given, the pseudo vocabulary's names (L2-normalised) for the pseudo branch."""
    s = recipe.student
    detector = build_teacher(recipe, run_dir)
    base = read_partition(Path(run_dir))["base"]
    set_class_embeddings(detector, class_embeddings(recipe, [c["name"] for c in base], True))
    model = RobustStudent.from_detector(detector, s.uncertainty, s.pseudo_box_loss, s.lambda_pseudo)
    if pseudo_names is not None:
        model.roi_heads.set_pseudo_class_embeddings(class_embeddings(recipe, list(pseudo_names), True))
    return model


def load_model(recipe: Recipe, run_dir: str | Path, which: str = "student") -> nn.Module:
    """The trained ``teacher`` or ``student`` of a run (eval mode, CPU), weights from
    ``<run_dir>/<which>/model_final.pth``. Its vocabulary is the base classes until
    :func:`ovis.models.detector.set_class_embeddings` swaps it."""
    run_dir = Path(run_dir)
    if which not in ("teacher", "student"):
        raise ValueError(f"load_model: which={which!r}; use 'teacher' or 'student'")
    path = need_file(RunLayout(run_dir).checkpoint(which), f"train the {which} first (run_{which})")
    model = build_teacher(recipe, run_dir) if which == "teacher" else build_student(recipe, run_dir)
    model.load_state_dict(load_checkpoint(path, keys=("model",))["model"])
    return model.eval()
