"""`ovis reproduce`: run a recipe's stage notebooks in order with papermill, headlessly.

Each stage is a parameterized notebook in ``notebooks/``; its executed copy (parameters in the
metadata, per-cell timings, outputs saved while it runs) goes to ``<run_dir>/notebooks/``. A stage
whose outputs exist for the same resolved recipe hash is skipped; a failing stage stops the run,
names the stage and the failing cell, keeps what earlier stages wrote, and exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ovis.config import Recipe, RecipeError, list_recipes, load_recipe
from ovis.data.coco import read_json, validate_coco
from ovis.data.splits import check_data_files
from ovis.locks import FolderInUse, folder_lock, held_lock_fds
from ovis.methods import method_module, method_training_stages, pipeline_stages, training_stages
from ovis.registry import METHOD_MODULES
from ovis.runs import STAGES, RunLayout, default_run_dir, stage_done

if TYPE_CHECKING:
    from torch import nn

NOTEBOOKS = {
    "splits": "00_splits.ipynb",
    "teacher": "01_teacher.ipynb",
    "pseudo": "02_pseudo_masks.ipynb",
    "student": "03_student.ipynb",
    "eval": "04_eval.ipynb",
    "curves": "05_curves.ipynb",
}


class StageFailed(RuntimeError):
    """A stage notebook raised; the message names the stage, the cell and the error."""


@dataclass
class StageResult:
    stage: str
    status: str  # ran | skipped
    seconds: float
    notebook: Path | None


def notebook_dir() -> Path:
    """The stage notebooks: ``$OVIS_NOTEBOOKS`` or the repository's ``notebooks/``."""
    env = os.environ.get("OVIS_NOTEBOOKS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "notebooks"


def parse_stages(spec: str | None) -> list[str]:
    if not spec:
        return list(STAGES)
    stages = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGES)}")
    return [s for s in STAGES if s in stages]


def notebook_parameters(stage: str) -> dict[str, dict]:
    """The ``parameters`` cell of a stage notebook: name → {default, inferred_type_name, help}."""
    import papermill

    return papermill.inspect_notebook(str(notebook_dir() / NOTEBOOKS[stage]))


def _failing_cell(executed: Path) -> str:
    """'code cell N (first line)' of the cell that raised, numbered as in the source notebook."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "injected-parameters" not in c.metadata.get("tags", [])]
    for i, cell in enumerate(cells, 1):
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
            return f"code cell {i} ({first[:60]})"
    return "an unknown cell"


def _kernel_manager_class(log: Path) -> type:
    """papermill's kernel manager, starting the kernel with this process's folder locks open
    (:func:`ovis.locks.held_lock_fds`): the run folder stays locked while the kernel lives, even when
    ``ovis reproduce`` is killed (jupyter_client closes every other inherited file). The kernel
    process's own stderr (IPKernelApp's log, such as the "KeyboardInterrupt caught in kernel" of
    jupyter_client's SIGINT at shutdown, and C-level warnings) goes to ``log``, not to the terminal;
    what the cells print is in the executed notebook."""
    from jupyter_client import AsyncKernelManager

    class LockSharingKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw: Any) -> None:  # type: ignore[override]
            kw["pass_fds"] = (*kw.get("pass_fds", ()), *held_lock_fds())
            with open(log, "ab") as stderr:  # the kernel keeps its own copy of the file
                kw["stderr"] = stderr
                await super().start_kernel(**kw)

    return LockSharingKernelManager


def run_stage(stage: str, recipe: Recipe, recipe_ref: str, run_dir: Path, overrides: list[str],
              force: bool = False, kernel: str = "python3") -> StageResult:
    """Execute one stage notebook; skip it when its outputs match the recipe hash."""
    import papermill
    from papermill.exceptions import PapermillExecutionError
    from traitlets.config import Config

    if not force and stage_done(run_dir, stage, recipe):
        return StageResult(stage, "skipped", 0.0, None)
    out = RunLayout(run_dir).notebooks / NOTEBOOKS[stage]
    out.parent.mkdir(parents=True, exist_ok=True)
    params = {"recipe": recipe_ref, "run_dir": str(run_dir), "overrides": list(overrides), "force": force,
              "live_widgets": False}  # nobody watches a headless run, and widget traffic can hang nbclient
    accepted = notebook_parameters(stage)
    params = {k: v for k, v in params.items() if k in accepted}
    start = time.perf_counter()
    try:
        # the kernel talks over IPC sockets in a private folder: no TCP ports (and no IPKernelApp
        # warning about unencrypted TCP on every stage)
        with tempfile.TemporaryDirectory(prefix="ovis-kernel-") as sockets:
            config = Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(sockets, "kernel")}})
            papermill.execute_notebook(
                str(notebook_dir() / NOTEBOOKS[stage]), str(out), parameters=params, kernel_name=kernel,
                progress_bar=False, request_save_on_cell_execute=True, cwd=os.getcwd(), config=config,
                kernel_manager_class=_kernel_manager_class(out.with_suffix(".kernel.log")),
            )
    except PapermillExecutionError as e:
        where = _failing_cell(out)
        raise StageFailed(f"stage {stage} failed in {where} of {NOTEBOOKS[stage]}: {e.ename}: {e.evalue} "
                          f"(executed copy: {out})") from None
    return StageResult(stage, "ran", time.perf_counter() - start, out)


def trained_model(recipe: Recipe, run_dir: Path, stage: str) -> nn.Module | None:
    """The model whose weights ``<run_dir>/<stage>/model_final.pth`` of engine training stage ``stage``
    must hold, as the recipe's method declares it (``TrainingStage.model``), or None for a stage the
    method does not train or a recipe the stage cannot build its model for."""
    declared = method_training_stages(recipe.method).get(stage)
    return declared.model(recipe, run_dir) if declared else None


def _shape(t: Any) -> str:
    return f"({', '.join(str(n) for n in t.shape)})"


def check_state_dict(path: Path, state: Any, model: nn.Module) -> None:
    """``state`` (the ``model`` entry of checkpoint ``path``) holds every tensor of ``model`` with its shape
    and nothing else; otherwise a CheckpointError names the file and the first tensor that differs."""
    import torch

    from ovis.engine.train import CheckpointError

    hint = "; was it trained under another recipe? Delete it and run its stage again"
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: 'model' is a {type(state).__name__}, not a state dict{hint}")
    needed = model.state_dict()
    for key, value in state.items():
        if key not in needed:
            what = _shape(value) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(f"{path}: parameter {key!r} {what} is not in the recipe's model{hint}")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: parameter {key!r} is a {type(value).__name__}, not a tensor{hint}")
        if value.shape != needed[key].shape:
            raise CheckpointError(f"{path}: parameter {key!r} has shape {_shape(value)}, the recipe's model needs "
                                  f"{_shape(needed[key])}{hint}")
    missing = [k for k in needed if k not in state]
    if missing:
        raise CheckpointError(f"{path}: parameter {missing[0]!r} {_shape(needed[missing[0]])} of the recipe's model is "
                              f"missing ({len(missing)} of {len(needed)} missing){hint}")


def check_run_files(run_dir: Path, stage: str, checked: set[tuple[Path, int, int]], recipe: Recipe) -> None:
    """Read and check what the stages before ``stage`` left in the run folder, as ``stage`` will read it:
    every JSON file (COCO instances files fully, with ``validate_coco``) and every ``model_final.pth``,
    whose tensors must be those of the model the recipe builds for it (:func:`trained_model`, names and
    shapes). A corrupt one, or a checkpoint of another model, stops ``reproduce`` with one line naming
    it before the stage's kernel starts or writes its notebook. ``checked`` holds the (path, size, mtime)
    already found good."""
    from ovis.engine.train import load_checkpoint

    layout = RunLayout(run_dir)
    folders = [f for s in STAGES[: STAGES.index(stage)] for f in dict.fromkeys([s, *training_stages(s)])]
    files = [(f, p) for f in folders for p in sorted(layout.folder(f).glob("*.json")) + [layout.checkpoint(f)]
             if p.is_file()]
    for folder, path in files:
        key = (path, path.stat().st_size, path.stat().st_mtime_ns)
        if key in checked:
            continue
        if path.suffix == ".pth":
            state = load_checkpoint(path, mmap=True, keys=("model",))
            model = trained_model(recipe, run_dir, folder)
            if model is not None:
                check_state_dict(path, state["model"], model)
        else:
            data = read_json(path)
            if isinstance(data, dict) and "images" in data and "annotations" in data:
                validate_coco(data, str(path), need_file_names=True)
        checked.add(key)


def reproduce(recipe_ref: str, stages: list[str] | None = None, run_dir: str | Path | None = None,
              overrides: list[str] | None = None, force: bool = False, log=print) -> list[StageResult]:
    """Run ``stages`` (default: all those the recipe's method runs, ``PIPELINE_STAGES``) of a recipe;
    returns what ran and what was skipped. Holds the run dir's lock throughout (its notebook kernels
    inherit it): a concurrent run into it fails at once."""
    overrides = list(overrides or [])
    recipe = load_recipe(recipe_ref, overrides)
    run_dir = Path(run_dir) if run_dir else default_run_dir(recipe)
    results = []
    own = pipeline_stages(recipe.method)
    todo = stages or list(own)
    if any(s not in own for s in todo):
        raise ValueError(f"recipe {recipe.name}: method {recipe.method!r} has no "
                         f"{', '.join(s for s in todo if s not in own)} stage; its stages: {', '.join(own)}")
    if "splits" in todo and (force or not stage_done(run_dir, "splits", recipe)):
        check_data_files(recipe.data)  # a bad data file stops the run before a kernel starts or a file is written
    checked: set[tuple[Path, int, int]] = set()
    with folder_lock(run_dir):
        for i, stage in enumerate(todo, 1):
            if force or not stage_done(run_dir, stage, recipe):
                check_run_files(run_dir, stage, checked, recipe)
            log(f"[{i}/{len(todo)}] {stage}: running {NOTEBOOKS[stage]} ...")
            result = run_stage(stage, recipe, recipe_ref, run_dir, overrides, force)
            what = "skipped (outputs match recipe hash)" if result.status == "skipped" else f"done in {result.seconds:.1f} s"
            log(f"[{i}/{len(todo)}] {stage}: {what}")
            results.append(result)
    return results


HEADLINE = {"ovr": ("AP50_base", "AP50_novel", "AP50_all"), "open_world": ("AR@10", "AR@100", "AR@300", "AUC")}


def summary(recipes: list[str], runs_root: Path = Path("runs")) -> str:
    """Markdown table of the headline metrics of finished runs: teacher vs student (CPL), baseline vs
    GGN (GGN/OLN), one row per evaluated model, setting and IoU type; then the report paths."""
    from ovis.viz.curves import find_eval_results, protocol_kind

    rows = ["| recipe | model / setting | protocol | metrics (%) |", "|---|---|---|---|"]
    for name in recipes:
        for res in find_eval_results(runs_root / name):
            if res["label"] == "eval":  # the copy of the main model's result
                continue
            keys = HEADLINE.get(protocol_kind(res["protocol"]), ())
            m = res["metrics"]
            values = ", ".join(f"{k} {100 * m[k]:.1f}" for k in keys if m.get(k) is not None and m[k] >= 0)
            rows.append(f"| {name} | {res['label']} | {res['protocol']} | {values} |")
    reports = [RunLayout(runs_root / name).report for name in recipes]
    return "\n".join(rows + [""] + [f"report: {p}" for p in reports if p.exists()])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="ovis reproduce", description=__doc__.splitlines()[0])
    ap.add_argument("recipe", nargs="?", help="packaged recipe name (see --list) or a YAML file")
    ap.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)} (default: the method's)")
    ap.add_argument("--run-dir", type=Path, help="default runs/<recipe>")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted recipe override, e.g. teacher.max_iter=100 (repeatable)")
    ap.add_argument("--force", action="store_true", help="re-run stages even if their outputs match")
    ap.add_argument("--list", action="store_true", help="list recipes, stages and each method's stages")
    ap.add_argument("--params", action="store_true", help="list each stage notebook's parameters")
    args = ap.parse_args(argv)
    if args.list:
        for name in list_recipes():
            r = load_recipe(name)
            print(f"{name:<14} {r.method:<4} {r.description}")
        print(f"stages: {' -> '.join(f'{s} ({NOTEBOOKS[s]})' for s in STAGES)}")
        for method in METHOD_MODULES:
            print(f"method {method} ({method_module(method).__name__}): {' -> '.join(pipeline_stages(method))}")
        return 0
    try:
        stages = parse_stages(args.stages) if args.stages else None  # None: the recipe's method's
        if args.params:
            for stage in stages or STAGES:
                print(f"{stage} ({NOTEBOOKS[stage]}):")
                for name, p in notebook_parameters(stage).items():
                    print(f"  {name} = {p['default']}  {p.get('help') or ''}".rstrip())
            return 0
        if not args.recipe:
            ap.error("a recipe is required (see --list)")
        reproduce(args.recipe, stages, args.run_dir, args.overrides, args.force)
    except (RecipeError, ValueError, FolderInUse) as e:
        print(f"ovis reproduce: error: {e}", file=sys.stderr)
        return 2
    except StageFailed as e:
        print(f"ovis reproduce: {e}", file=sys.stderr)
        return 1
    return 0


def lab_main(argv: list[str] | None = None) -> int:
    """`ovis lab`: JupyterLab on the stage notebooks."""
    return subprocess.call([sys.executable, "-m", "jupyterlab", f"--notebook-dir={notebook_dir()}", *(argv or [])])


if __name__ == "__main__":
    sys.exit(main())
