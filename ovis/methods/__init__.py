"""The methods' layer: what a method provides, and the registry lookups that find it.

``ovis.registry.METHOD_MODULES`` names each method's module or package (relative to this package, or
absolute); :func:`for_recipe` imports the one a recipe's ``method`` names and checks that it provides:

- ``PIPELINE_STAGES``: the pipeline stages (``ovis.runs.STAGES``, in that order) it runs; ``ovis
  reproduce`` runs these by default and refuses others;
- for each of them, the functions its notebook calls on the method (:data:`HOOKS`; ``splits`` and
  ``curves`` call none);
- ``TRAINING_STAGES``: engine training stage name → :class:`TrainingStage` (its task builder, the
  pipeline stage that trains it, the model its checkpoint fills, the recipe sections it reads);
- ``SECTIONS``: the recipe sections it owns besides the core ones of :mod:`ovis.config` (name → dataclass,
  in recipe order; a dataclass may declare ``RULES``, the values its keys may take).

Importing this package installs :func:`method_sections` as the config layer's lookup of a method's
sections (``ovis.config.use_method_sections``): the config layer, below this one, builds a recipe's
method sections without importing any method. ``load_recipe`` and ``recipe_from_dict`` are re-exported
here for callers that import nothing else of the methods layer (a notebook, a command line).

``ovis train`` (:mod:`ovis.methods.train`) resolves a recipe's training stage here; the engine receives
the builder. A new method is a folder (a package) plus one line of ``METHOD_MODULES``
(docs/README.md#adding-a-method).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from ovis.config import CORE_KEYS, Recipe, use_method_sections
from ovis.config import load_recipe as load_recipe
from ovis.config import recipe_from_dict as recipe_from_dict
from ovis.registry import METHOD_MODULES
from ovis.runs import STAGES, stage_sections

if TYPE_CHECKING:
    from torch import nn

    from ovis.engine.train import TaskBuilder

# pipeline stage -> the functions its notebook (ovis.pipeline.NOTEBOOKS) calls on the recipe's method:
# run_teacher / run_student(recipe, run_dir, launcher=, nproc=, nodes=, partition=, force=) -> dict,
# run_pseudo(recipe, run_dir, force=) -> dict of statistics, run_eval(recipe, run_dir, force=),
# <stage>_figures(recipe, run_dir, n=) -> list of matplotlib figures, pseudo_browser(recipe, run_dir) -> an
# object with show(n_static=, live=)
HOOKS: dict[str, tuple[str, ...]] = {
    "splits": (),
    "teacher": ("run_teacher", "teacher_figures"),
    "pseudo": ("run_pseudo", "pseudo_figures", "pseudo_browser"),
    "student": ("run_student", "student_figures"),
    "eval": ("run_eval",),
    "curves": (),
}

# recipe, run folder -> the model a training stage's checkpoint fills (see TrainingStage.model)
ModelBuilder = Callable[[Recipe, Path], "nn.Module | None"]


@dataclass(frozen=True)
class TrainingStage:
    """One engine training stage of a method, trained into ``<run_dir>/<name>/``.

    ``task`` builds its ``TrainTask`` (an ``ovis.engine.train.TaskBuilder``); ``part_of`` is the
    pipeline stage (``ovis.runs.STAGES``) whose notebook trains it; ``model`` builds, from the recipe and
    the run folder, the model whose tensors its ``model_final.pth`` holds, as the stages that read the
    checkpoint build it, pretrained weights not loaded (the checkpoint replaces them), or returns None
    for a recipe the stage cannot train with (the stage itself says why); ``ovis reproduce`` checks
    each checkpoint against it before a later stage reads it. ``own_sections`` replaces that
    stage's own recipe sections for a stage that reads fewer of them (caption grounding runs before
    the teacher and never reads the teacher section); ``config`` names the recipe section with its
    ``TrainConfig`` when it is not the one named like the stage (GGN's baseline trains with ``student``).
    """

    task: TaskBuilder
    part_of: str
    model: ModelBuilder
    own_sections: tuple[str, ...] | None = None
    config: str | None = None

    def __post_init__(self) -> None:
        if self.part_of not in STAGES:
            raise ValueError(f"TrainingStage.part_of={self.part_of!r}: expected one of {', '.join(STAGES)}")

    @property
    def sections(self) -> tuple[str, ...]:
        """The recipe sections its checkpoint depends on (its recipe hash)."""
        return stage_sections(self.part_of, self.own_sections)

    def recipe_hash(self, recipe: Recipe) -> str:
        """The hash its checkpoint (``model_final.pth``) records for ``recipe``."""
        return recipe.hash(self.sections)


def _import(method: str) -> ModuleType:
    if method not in METHOD_MODULES:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHOD_MODULES)}")
    return importlib.import_module(METHOD_MODULES[method], __name__)


def method_module(method: str) -> ModuleType:
    """The module implementing ``method``'s stages, checked to provide what the pipeline calls."""
    module = _import(method)
    where = f"method {method!r} ({module.__name__})"
    stages = getattr(module, "PIPELINE_STAGES", None)
    if not isinstance(stages, tuple) or not stages or list(stages) != [s for s in STAGES if s in stages]:
        raise ValueError(f"{where}: PIPELINE_STAGES must be a non-empty tuple of pipeline stages in the order "
                         f"{', '.join(STAGES)}; got {stages!r}")
    missing = [f"{hook} ({stage})" for stage in stages for hook in HOOKS[stage] if not callable(getattr(module, hook, None))]
    trained = getattr(module, "TRAINING_STAGES", None)
    if not isinstance(trained, dict) or not all(isinstance(st, TrainingStage) for st in trained.values()):
        missing.append("TRAINING_STAGES (a dict of name -> TrainingStage)")
        trained = {}
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}")
    stray = [f"{name} (part_of={st.part_of!r})" for name, st in trained.items() if st.part_of not in stages]
    if stray:
        raise ValueError(f"{where}: training stage(s) {', '.join(stray)} of a pipeline stage it does not run "
                         f"(PIPELINE_STAGES: {', '.join(stages)})")
    method_sections(method)  # SECTIONS checked as a recipe reads them
    return module


def for_recipe(recipe: Recipe, stage: str | None = None) -> ModuleType:
    """The module implementing ``recipe.method``'s stages; with ``stage``, one the method runs."""
    if recipe.method not in METHOD_MODULES:
        raise ValueError(f"recipe {recipe.name}: unknown method {recipe.method!r}; known: {', '.join(METHOD_MODULES)}")
    module = method_module(recipe.method)
    if stage is not None and stage not in module.PIPELINE_STAGES:
        raise ValueError(f"recipe {recipe.name}: method {recipe.method!r} has no {stage} stage; "
                         f"its stages: {', '.join(module.PIPELINE_STAGES)}")
    return module


def method_sections(method: str) -> dict[str, type]:
    """The recipe sections ``method`` owns (its ``SECTIONS``), in recipe order. Reads only ``SECTIONS``: a
    package that loads its stages on first use (``ovis.methods.cpl``) is read without importing torch."""
    module = _import(method)
    sections = getattr(module, "SECTIONS", None)
    if not isinstance(sections, dict) or not all(isinstance(c, type) and dataclasses.is_dataclass(c)
                                                 for c in sections.values()):
        raise ValueError(f"method {method!r} ({module.__name__}) lacks SECTIONS (a dict of recipe section name -> "
                         "dataclass)")
    if clash := [s for s in sections if s in CORE_KEYS or s == "sections"]:
        raise ValueError(f"method {method!r} ({module.__name__}): SECTIONS {clash} are core recipe keys "
                         "(ovis.config.CORE_KEYS); name them otherwise")
    return dict(sections)


use_method_sections(method_sections)


def pipeline_stages(method: str) -> tuple[str, ...]:
    """The pipeline stages ``method`` runs (its ``PIPELINE_STAGES``)."""
    return tuple(method_module(method).PIPELINE_STAGES)


def method_training_stages(method: str) -> dict[str, TrainingStage]:
    """``method``'s training stages, in the order its module declares them."""
    return dict(method_module(method).TRAINING_STAGES)


def all_training_stages() -> dict[str, TrainingStage]:
    """Every method's training stages by name (the first method's declaration of a shared name; the
    methods must agree on its pipeline stage, sections and config, which make its recipe hash)."""
    out: dict[str, TrainingStage] = {}
    for method in METHOD_MODULES:
        for name, st in method_training_stages(method).items():
            first = out.setdefault(name, st)
            if (first.part_of, first.sections, first.config) != (st.part_of, st.sections, st.config):
                raise ValueError(f"training stage {name!r}: method {method!r} declares it with part_of={st.part_of!r}, "
                                 f"sections={st.sections}, config={st.config!r}; another method with "
                                 f"part_of={first.part_of!r}, sections={first.sections}, config={first.config!r}")
    return out


def training_stages(stage: str, method: str | None = None) -> list[str]:
    """The engine training stages of pipeline stage ``stage`` that ``method`` declares, or over all
    methods (``"teacher"`` → grounding, teacher; ``"student"`` → student, baseline, oln, oln_baseline)."""
    declared = method_training_stages(method) if method is not None else all_training_stages()
    return [name for name, st in declared.items() if st.part_of == stage]


def training_stage(stage: str) -> TrainingStage:
    """The declaration of engine training stage ``stage`` (any method's: they agree on its hash)."""
    stages = all_training_stages()
    if stage not in stages:
        from ovis.engine.train import TaskError

        raise TaskError(f"unknown training stage {stage!r}; expected one of {list(stages)}")
    return stages[stage]


def task_builder(method: str, stage: str) -> TaskBuilder:
    """The task builder ``method`` declares for training stage ``stage``."""
    stages = method_training_stages(method) if method in METHOD_MODULES else {}
    if stage not in stages:
        from ovis.engine.train import TaskError

        known = ", ".join(f"{m}/{s}" for m in METHOD_MODULES for s in method_training_stages(m))
        raise TaskError(f"no training task registered for method {method!r}, stage {stage!r} (known: {known}); "
                        "pass --task module:function")
    return stages[stage].task
