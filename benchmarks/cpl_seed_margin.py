"""How much of the CPL student's margin over its teacher is the training seed? (CPL acceptance diagnostic.)

From a CPL run whose splits, grounding, teacher and pseudo stages are done, trains the robust student
once per seed (``student.seed``) in ``<out>/seed<k>/`` (the run's finished stages linked in, nothing
of the run changed) and runs the eval stage there: generalized mask AP50 on base and novel classes,
teacher and student. A student already trained there is not retrained, only evaluated.

    python benchmarks/cpl_seed_margin.py --run-dir runs/demo_cpl --seeds 0,1,2 [--out DIR] [--set KEY=VALUE ...]

Last line (generalized mask AP50, %): ``seeds=… teacher_base=… teacher_novel=… student_base_mean=…
student_novel_mean=… margin_mean=… margin_min=… margin_max=… base_drop_max=…`` (margin = student −
teacher novel AP50; base_drop = teacher − student base AP50, points).
"""

from __future__ import annotations

from seed_study import cpl_student_ap50, parse_args, seed_runs

SHARED = ("splits", "grounding", "teacher", "pseudo")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], "demo_cpl", argv)
    ap50: list[dict[str, dict[str, float]]] = []  # per seed: {model: {"base", "novel"}} in %
    for seed, recipe, d in seed_runs(args, SHARED):
        ap50.append(cpl_student_ap50(recipe, d))
        t, s = ap50[-1]["teacher"], ap50[-1]["student"]
        print(f"seed {seed}: generalized mask AP50 base / novel: teacher {t['base']:.1f} / {t['novel']:.1f}, "
              f"student {s['base']:.1f} / {s['novel']:.1f}", flush=True)

    def stats(name: str, values: list[float]) -> str:
        return (f"{name}_mean={sum(values) / len(values):.1f} {name}_min={min(values):.1f} "
                f"{name}_max={max(values):.1f}")

    teacher = ap50[0]["teacher"]  # the teacher is shared: the same numbers on every seed
    margins = [r["student"]["novel"] - r["teacher"]["novel"] for r in ap50]
    drops = [r["teacher"]["base"] - r["student"]["base"] for r in ap50]
    print(f"seeds={','.join(map(str, args.seeds))} teacher_base={teacher['base']:.1f} teacher_novel={teacher['novel']:.1f} "
          f"student_base_mean={sum(r['student']['base'] for r in ap50) / len(ap50):.1f} "
          f"student_novel_mean={sum(r['student']['novel'] for r in ap50) / len(ap50):.1f} "
          + stats("margin", margins) + f" base_drop_max={max(drops):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
