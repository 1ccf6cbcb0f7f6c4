"""What the seed-margin scripts share: their command line and one run folder per student seed, beside a
finished run whose shared stages are linked in (``ovis.runs.link_stages``). Not a benchmark itself."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

from ovis.config import Recipe
from ovis.methods import cpl, load_recipe
from ovis.methods.train import run_stage
from ovis.runs import link_stages


def parse_args(description: str, recipe: str, argv: list[str] | None = None,
               parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.Namespace:
    """The seed scripts' options (and those of ``parents``, a script's own)."""
    p = argparse.ArgumentParser(description=description, parents=list(parents))
    p.add_argument("--run-dir", type=Path, default=Path("runs") / recipe)
    p.add_argument("--recipe", default=recipe)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated student.seed values")
    p.add_argument("--out", type=Path, default=None, help="default <run-dir>/seed_margin")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    return args


def seed_runs(args: argparse.Namespace, shared: Sequence[str]) -> Iterator[tuple[int, Recipe, Path]]:
    """``(seed, recipe with student.seed=seed, <out>/seed<k>/)`` for each seed, the run's ``shared``
    stages linked in; ovis's log quietened to warnings."""
    logging.getLogger("ovis").setLevel(logging.WARNING)
    out = args.out or args.run_dir / "seed_margin"
    for seed in args.seeds:
        recipe = load_recipe(args.recipe, [*args.overrides, f"student.seed={seed}"])
        try:
            folder = link_stages(args.run_dir, out / f"seed{seed}", shared)
        except FileNotFoundError as e:
            raise SystemExit(f"{e}; run `ovis reproduce {args.recipe} --stages splits,teacher,pseudo` first") from None
        yield seed, recipe, folder


def cpl_student_ap50(recipe: Recipe, folder: Path) -> dict[str, dict[str, float]]:
    """Trains the CPL student in ``folder`` (unless trained there), runs the eval stage and returns the
    generalized mask AP50 (%) of teacher and student: ``{"teacher" | "student": {"base", "novel"}}``."""
    run_stage(recipe, "student", folder, device=recipe.launch.device, progress=False)
    rows = cpl.run_eval(recipe, folder, stream=lambda _: None)
    gen = [r for r in rows if r["setting"] == "generalized" and r["iou_type"] == "segm"]
    if any(r[k] is None for r in gen for k in ("AP50_base", "AP50_novel")):
        raise SystemExit(f"{folder}: the validation file has no base or no novel GT; no margin to measure")
    return {r["model"]: {"base": 100 * r["AP50_base"], "novel": 100 * r["AP50_novel"]} for r in gen}
