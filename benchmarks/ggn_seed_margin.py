"""How much of GGN's margin over the base-only baseline is the training seed? (GGN acceptance diagnostic.)

From a GGN run whose splits, teacher and pseudo stages are done, trains the baseline (base GT only)
and the GGN student (base + pseudo GT) once per seed (``student.seed``) in ``<out>/seed<k>/`` (the
run's ``splits``, ``teacher`` and ``pseudo`` linked in, nothing of the run changed) and evaluates
both. A seed already trained there is not retrained, only evaluated. Prints unseen mask AR@100 per seed.

    python benchmarks/ggn_seed_margin.py --run-dir runs/demo_ggn --seeds 0,1,2 [--out DIR] [--set KEY=VALUE ...]

Last line: ``seeds=… baseline_mean=… ggn_mean=… margin_mean=… margin_min=… margin_max=…`` (mask
AR@100 on unseen classes, %; margin = GGN − baseline).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ovis.config import load_recipe
from ovis.engine.train import run_stage
from ovis.methods import ggn

SHARED = ("splits", "teacher", "pseudo")


def seed_dir(run_dir: Path, out: Path, seed: int) -> Path:
    """``<out>/seed<k>/`` with the run's finished splits, teacher and pseudo stages linked in."""
    d = out / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        src = (run_dir / name).resolve()
        if not (src / "stage.json").is_file():
            raise SystemExit(f"{src}: the {name} stage is not done; run `ovis reproduce <recipe> --stages "
                             "splits,teacher,pseudo` first")
        link = d / name
        if not link.exists():
            link.symlink_to(src, target_is_directory=True)
    return d


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, default=Path("runs/demo_ggn"))
    p.add_argument("--recipe", default="demo_ggn")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated student.seed values")
    p.add_argument("--out", type=Path, default=None, help="default <run-dir>/seed_margin")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = args.out or args.run_dir / "seed_margin"
    if not load_recipe(args.recipe, args.overrides).model.mask:
        raise SystemExit(f"{args.recipe}: model.mask is false; the margin is in mask AR@100")
    logging.getLogger("ovis").setLevel(logging.WARNING)
    rows = []
    for seed in seeds:
        recipe = load_recipe(args.recipe, [*args.overrides, f"student.seed={seed}"])
        d = seed_dir(args.run_dir, out, seed)
        for stage in ("baseline", "student"):
            run_stage(recipe, stage, d, device=recipe.launch.device, progress=False)
        res = ggn.evaluate_models(recipe, d, ("baseline", "student"), d / "eval", stream=lambda _: None)
        ar = {r["model"]: 100 * r["metrics"]["AR@100"] for r in res if r["iou_type"] == "segm"}
        rows.append((seed, ar["baseline"], ar["student"]))
        print(f"seed {seed}: mask AR@100 baseline {ar['baseline']:.1f}  GGN {ar['student']:.1f}  "
              f"margin {ar['student'] - ar['baseline']:+.1f}", flush=True)
    margins = [g - b for _, b, g in rows]
    n = len(rows)
    print(f"seeds={','.join(map(str, seeds))} baseline_mean={sum(b for _, b, _ in rows) / n:.1f} "
          f"ggn_mean={sum(g for _, _, g in rows) / n:.1f} margin_mean={sum(margins) / n:.1f} "
          f"margin_min={min(margins):.1f} margin_max={max(margins):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
