"""The two methods' stage functions; ``for_recipe`` picks the module a recipe's method uses.

Each method module provides the same stage functions, which the notebooks call:
``run_teacher``, ``teacher_figures``, ``run_pseudo``, ``pseudo_figures``, ``pseudo_browser``,
``run_student``, ``student_figures``, ``load_model``, ``run_eval``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ovis.config import Recipe

METHOD_MODULES = {"cpl": "ovis.methods.cpl", "ggn": "ovis.methods.ggn", "oln": "ovis.methods.ggn"}


def for_recipe(recipe: Recipe) -> ModuleType:
    """The module implementing ``recipe.method``'s stages."""
    if recipe.method not in METHOD_MODULES:
        raise ValueError(f"recipe {recipe.name}: unknown method {recipe.method!r}; known: {', '.join(METHOD_MODULES)}")
    return importlib.import_module(METHOD_MODULES[recipe.method])
