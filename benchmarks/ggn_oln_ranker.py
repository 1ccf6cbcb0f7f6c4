"""Do upstream's OLN ranker's pseudo masks cover more unseen objects than the PA ranking's? (GGN acceptance.)

GGN keeps, per training image, the first ``pseudo.top_k`` grouping candidates that do not duplicate a seen GT
object (docs/ggn.md#33-pseudo-gt), in the PA network's ranking or, with ``pseudo.oln_ranker``, in upstream's
learned ranking ``pa / 2 + r + r · c`` by an OLN trained on base GT (docs/ggn.md#32-grouping, "Optional learned
ranker"). This runs the pseudo stage of a GGN run again with each ``--oln`` checkpoint as the ranker, in
``<out>/<k>/`` (the run's splits and PA network linked there), and reports the share of unseen objects the
kept masks cover at mask IoU ≥ 0.5 and the share of kept masks that cover one, against the run's own pseudo
stage (the PA ranking). Nothing is trained.

    python benchmarks/ggn_oln_ranker.py --run-dir runs/demo_ggn --oln A/oln_baseline/model_final.pth [--oln ...]
        [--out DIR] [--recipe demo_ggn] [--set KEY=VALUE ...]

Last line (%): ``unseen_gt=… pa_coverage=… pa_precision=… oln_coverage=a,b,… oln_precision=a,b,…
oln_coverage_mean=… oln_coverage_min=… oln_precision_mean=…``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ovis.methods import load_recipe
from ovis.methods.ggn import run_pseudo
from ovis.runs import RunLayout, link_stages


def coverage(stats: dict) -> tuple[float, float]:
    """(unseen objects covered, kept masks right), % of the pseudo stage's ``stats``."""
    return 100 * stats["unseen_recall@0.5"], 100 * stats["kept_on_unseen@0.5"] / max(1, stats["kept"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, default=Path("runs/demo_ggn"))
    ap.add_argument("--oln", type=Path, action="append", required=True, help="an OLN checkpoint (repeatable)")
    ap.add_argument("--out", type=Path, default=None, help="default: <run-dir>/oln_ranker")
    ap.add_argument("--recipe", default="demo_ggn")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    layout = RunLayout(args.run_dir)
    if not layout.pseudo_stats.is_file():
        raise SystemExit(f"{layout.pseudo_stats} not found: run the pseudo stage of {args.run_dir} first")
    pa = json.loads(layout.pseudo_stats.read_text())
    out = args.out or args.run_dir / "oln_ranker"
    ranked = []
    for k, ckpt in enumerate(args.oln):
        run_dir = link_stages(args.run_dir, out / str(k), ["splits", "teacher"])
        recipe = load_recipe(args.recipe, [*args.overrides, f"pseudo.oln_ranker={ckpt.resolve()}"])
        stats = run_pseudo(recipe, run_dir, stream=lambda line: None)
        ranked.append(coverage(stats))
        print(f"{ckpt}: unseen objects covered {ranked[-1][0]:.1f} %, kept masks right {ranked[-1][1]:.1f} % "
              f"({stats['seconds_per_image']:.2f} s/image)", flush=True)
    pa_cov, pa_prec = coverage(pa)
    cov, prec = [r[0] for r in ranked], [r[1] for r in ranked]
    print(f"PA ranking: covered {pa_cov:.1f} %, right {pa_prec:.1f} % ({pa['seconds_per_image']:.2f} s/image)")
    print(f"unseen_gt={pa['unseen_gt']} pa_coverage={pa_cov:.1f} pa_precision={pa_prec:.1f} "
          f"oln_coverage={','.join(f'{c:.1f}' for c in cov)} oln_precision={','.join(f'{p:.1f}' for p in prec)} "
          f"oln_coverage_mean={sum(cov) / len(cov):.1f} oln_coverage_min={min(cov):.1f} "
          f"oln_precision_mean={sum(prec) / len(prec):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
