"""The method registry: each method a recipe's ``method:`` may name, and the module or package that
implements it (what it must provide: :mod:`ovis.methods`; how to add one: docs/README.md#adding-a-method).

A module is named relative to ``ovis.methods`` (a leading dot, as in a relative import: ``".ggn"`` is the
package ``ovis/methods/ggn/``, a module ``ovis/methods/<name>.py`` alike), or absolutely for a method kept
outside ovis. Plain names, so that the recipe layer checks ``method:`` against them without knowing any
method; :mod:`ovis.methods` imports its own.
"""

from __future__ import annotations

__all__ = ["METHOD_MODULES"]

METHOD_MODULES: dict[str, str] = {"cpl": ".cpl", "ggn": ".ggn", "oln": ".ggn"}
