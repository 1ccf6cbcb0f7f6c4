"""How much of GGN's and OLN's margins over the base-only baseline is the training seed? (GGN acceptance diagnostic.)

From a GGN run whose splits, teacher and pseudo stages are done, trains the baseline (base GT only),
the GGN student (base + pseudo GT) and the two OLN variants (``oln_baseline``: base GT only,
``oln``: base + pseudo GT) once per seed (``student.seed``) in ``<out>/seed<k>/`` (the run's
``splits``, ``teacher`` and ``pseudo`` linked in, nothing of the run changed) and evaluates them. A
model already trained there is not retrained, only evaluated. Prints unseen AR@100 per seed.

    python benchmarks/ggn_seed_margin.py --run-dir runs/demo_ggn --seeds 0,1,2 [--out DIR] [--set KEY=VALUE ...]
        [--without-oln]

Last line (AR@100 on unseen classes, %): ``seeds=… baseline_mean=… ggn_mean=… margin_mean=…
margin_min=… margin_max=…`` for mask AR (margin = GGN − baseline), then, unless ``--without-oln`` (which
trains only the baseline and GGN), ``oln_box_margin_*`` (box AR, OLN baseline − baseline: OLN heads on base
GT) and ``oln_pseudo_box_margin_*`` (box AR, OLN − GGN: OLN heads on base + pseudo GT).
"""

from __future__ import annotations

import argparse

from seed_study import parse_args, seed_runs

from ovis.methods import ggn, load_recipe
from ovis.methods.train import run_stage

SHARED = ("splits", "teacher", "pseudo")


def main(argv: list[str] | None = None) -> int:
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--without-oln", action="store_true", help="train and evaluate only the baseline and GGN")
    args = parse_args(__doc__.splitlines()[0], "demo_ggn", argv, parents=[own])
    if not load_recipe(args.recipe, args.overrides).model.mask:
        raise SystemExit(f"{args.recipe}: model.mask is false; the margin is in mask AR@100")
    models = ("baseline", "student", *(() if args.without_oln else ggn.OLN_VARIANTS))
    mask, box = [], []  # per seed: {model: unseen AR@100 %}
    for seed, recipe, d in seed_runs(args, SHARED):
        for stage in models:
            run_stage(recipe, stage, d, device=recipe.launch.device, progress=False)
        res = ggn.evaluate_models(recipe, d, models, d / "eval", stream=lambda _: None)
        mask.append({r["model"]: 100 * r["metrics"]["AR@100"] for r in res if r["iou_type"] == "segm"})
        box.append({r["model"]: 100 * r["metrics"]["AR@100"] for r in res if r["iou_type"] == "bbox"})
        print(f"seed {seed}: AR@100 mask / box: " + ", ".join(
            f"{m} {mask[-1][m]:.1f} / {box[-1][m]:.1f}" for m in models), flush=True)

    def stats(name: str, values: list[float]) -> str:
        return (f"{name}_mean={sum(values) / len(values):.1f} {name}_min={min(values):.1f} "
                f"{name}_max={max(values):.1f}")

    mean = {m: sum(ar[m] for ar in mask) / len(mask) for m in ("baseline", "student")}
    line = (f"seeds={','.join(map(str, args.seeds))} baseline_mean={mean['baseline']:.1f} ggn_mean={mean['student']:.1f} "
            + stats("margin", [ar["student"] - ar["baseline"] for ar in mask]))
    if not args.without_oln:
        line += (" " + stats("oln_box_margin", [ar["oln_baseline"] - ar["baseline"] for ar in box]) + " "
                 + stats("oln_pseudo_box_margin", [ar["oln"] - ar["student"] for ar in box]))
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
