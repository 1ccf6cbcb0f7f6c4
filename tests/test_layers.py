"""The import graph of ovis/: no circles, no layer importing one above it, and no method's modules used
outside the method (the registry finds it).

Every ``import`` statement counts, wherever it stands (module level, inside a function, under
``TYPE_CHECKING``), absolute or relative: a function-local import is a dependency all the same.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

from ovis.registry import METHOD_MODULES

ROOT = Path(__file__).resolve().parents[1] / "ovis"

# The layers, bottom to top: a module may import its own layer and the ones below it, never one above.
# Each entry names modules or packages; a module belongs to the longest entry that is it or a package
# above it. Every module of ovis/ must fall into one (a new module is placed here on purpose).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # atomic writes, JSON reading, run-folder locks: import no ovis module
    ("io", ("ovis.io", "ovis.locks")),
    # the recipe schema, and the protocol and method names it checks
    ("config", ("ovis.config", "ovis.protocols", "ovis.registry")),
    # run folders, stage markers (hashes of recipe sections) and a stage's lifecycle (skip, redo, mark done)
    ("runs", ("ovis.runs", "ovis.stages")),
    # COCO files, datasets, splits, captions, demo data
    ("data", ("ovis.data",)),
    # evaluation under the named protocols (no torch)
    ("eval", ("ovis.eval",)),
    # drawing primitives (images, masks, the mask browser) that the stages' figures use
    ("draw", ("ovis.viz.draw", "ovis.viz.widgets", "ovis.viz.splits")),
    # networks, losses, text encoders: no datasets, no training loop
    ("models", ("ovis.models",)),
    # the training loop, checkpoints, distributed set-up, launchers, inference
    ("engine", ("ovis.engine",)),
    # generic pseudo-labelling (affinity grouping, the cross-modal labeler, CPL's run detectors): no method
    ("pseudo", ("ovis.pseudo",)),
    # the methods' stages and tasks, and the registry that picks them
    ("methods", ("ovis.methods",)),
    # commands, the notebook pipeline, the demo driver, the curves stage and the notebooks' live helpers
    ("top", ("ovis.cli", "ovis.demo", "ovis.pipeline", "ovis.viz")),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imported_modules(source: str, module: str, is_package: bool, known: set[str] | dict[str, Path]) -> set[str]:
    """The ovis modules ``source`` (the text of ``module``) imports, each resolved to a module in ``known``
    (``from pkg import name``: the module ``pkg.name`` when there is one, else ``pkg``)."""

    def nearest(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    package = module if is_package else module.rpartition(".")[0]
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(nearest(a.name) for a in node.names if a.name.split(".")[0] == "ovis")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "ovis":
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else nearest(base))
    return {m for m in found if m is not None and m != module}


@functools.cache  # the tree does not change during a test session; callers do not modify it
def graph() -> dict[str, set[str]]:
    return {m: imported_modules(p.read_text(encoding="utf-8"), m, p.name == "__init__.py", MODULES)
            for m, p in MODULES.items()}


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (length of the matching entry, rank)
    for rank, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and (best is None or len(entry) > best[0]):
                best = (len(entry), rank)
    return None if best is None else best[1]


def test_the_walker_sees_relative_function_local_and_type_checking_imports():
    known = {"ovis", "ovis.data", "ovis.data.coco", "ovis.engine", "ovis.engine.train", "ovis.methods",
             "ovis.methods.cpl", "ovis.pseudo", "ovis.pseudo.x", "ovis.pseudo.grouping", "ovis.config"}
    source = (
        "from typing import TYPE_CHECKING\n"
        "import numpy\n"
        "from ..data import coco\n"
        "from . import grouping\n"
        "if TYPE_CHECKING:\n"
        "    from ovis.config import Recipe\n"
        "def f():\n"
        "    import ovis.engine.train as engine\n"
        "    from ovis.methods.cpl import load_model\n"
    )
    assert imported_modules(source, "ovis.pseudo.x", False, known) == {
        "ovis.data.coco", "ovis.pseudo.grouping", "ovis.config", "ovis.engine.train", "ovis.methods.cpl"}


def test_every_module_has_a_layer():
    # the root package only holds the version: `import ovis` stays free of the rest
    assert graph()["ovis"] == set()
    unplaced = [m for m in MODULES if m != "ovis" and layer_of(m) is None]
    assert not unplaced, f"modules in no layer of tests/test_layers.py LAYERS: {unplaced}"


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                cycles.append(path[path.index(n):] + [n])
            elif n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_layer_imports_a_higher_one():
    names = [name for name, _ in LAYERS]
    upward = []
    for module, imports in sorted(graph().items()):
        if module == "ovis":
            continue
        own = layer_of(module)
        for target in sorted(imports):
            theirs = layer_of(target)
            if own is not None and theirs is not None and theirs > own:
                upward.append(f"{module} ({names[own]}) imports {target} ({names[theirs]})")
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)



def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of a module, its classes and functions."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def named_modules(source: str, known: set[str] | dict[str, Path]) -> set[str]:
    """The ovis modules that string constants of ``source`` name (``"ovis.methods.cpl:teacher_task"``,
    ``["-m", "ovis.methods.train"]``), docstrings left out: an import by name (importlib, ``-m``, a
    ``module:function`` spec) is a dependency that no import statement shows."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            for name in re.findall(r"\bovis(?:\.\w+)+", node.value):
                while name and name not in known:
                    name = name.rpartition(".")[0]
                if name:
                    found.add(name)
    return found


@functools.cache
def named_by_strings() -> dict[str, set[str]]:
    """Each module of ovis/ → the other ovis modules its strings name."""
    return {m: named_modules(p.read_text(encoding="utf-8"), MODULES) - {m} for m, p in MODULES.items()}


def test_the_name_finder_sees_specs_and_commands_but_not_docstrings():
    known = {"ovis", "ovis.methods", "ovis.methods.cpl", "ovis.methods.train"}
    source = ('"""Trains what ovis.methods.cpl declares."""\n'
              'TASK = "ovis.methods.cpl:teacher_task"\n'
              'def f():\n    """see ovis.methods.train"""\n    return ["-m", f"ovis.methods.train{1}"]\n')
    assert named_modules(source, known) == {"ovis.methods.cpl", "ovis.methods.train"}


def test_no_layer_names_a_higher_one_in_a_string():
    # e.g. the engine naming method tasks as "ovis.methods.cpl:teacher_task", or ovis.runs naming a method's stages
    names = [name for name, _ in LAYERS]
    upward = []
    for module, named in sorted(named_by_strings().items()):
        own = layer_of(module)
        if module == "ovis" or own is None:
            continue
        for target in sorted(named):
            theirs = layer_of(target)
            if theirs is not None and theirs > own:
                upward.append(f"{module} ({names[own]}) names {target} ({names[theirs]}) in a string")
    assert not upward, "modules named by higher layers' strings:\n" + "\n".join(upward)
    engine_and_runs = [ROOT / "runs.py", *sorted((ROOT / "engine").glob("*.py"))]
    assert not [p.name for p in engine_and_runs if named_modules(p.read_text(encoding="utf-8"), {"ovis.methods"})]


def method_of(module: str, methods: set[str]) -> str | None:
    """The method package (of ``methods``) that ``module`` is or belongs to."""
    return next((m for m in methods if module == m or module.startswith(m + ".")), None)


def test_a_method_is_imported_by_its_own_modules_only():
    # everything else, the other methods included, reaches a method through the registry (ovis.methods.for_recipe)
    methods = {f"ovis.methods{name}" for name in METHOD_MODULES.values() if name.startswith(".")}
    assert {"ovis.methods.cpl", "ovis.methods.ggn"} <= methods
    assert method_of("ovis.methods.ggn.extract", methods) == "ovis.methods.ggn" and not method_of("ovis.methods", methods)
    foreign = []
    for module, imports in sorted(graph().items()):
        for target in sorted(imports | named_by_strings()[module]):
            owner = method_of(target, methods)
            if owner is not None and owner != method_of(module, methods):
                foreign.append(f"{module} imports or names {target}")
    assert not foreign, "method modules used from outside their method:\n" + "\n".join(foreign)
