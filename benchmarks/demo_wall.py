"""`make demo` in a fresh clone: wall time, set-up included, and each stage's time.

Usage: python benchmarks/demo_wall.py [--keep DIR]
Clones this repository's HEAD (committed files only) into a temporary folder (or DIR, kept), runs
`make demo` there with the caller's environment (uv's package cache is reused, as on any machine that
has run uv before), and parses the ``<recipe> | [i/6] <stage>: done in S s`` lines of `ovis demo`.
Last line: key=value pairs (seconds).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE_LINE = re.compile(r"^(\S+)\s+\| \[\d+/\d+\] (\w+): done in ([\d.]+) s$")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", type=Path, help="clone into this (new) folder and keep it")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ovis-demo-wall-") as tmp:
        where = args.keep or Path(tmp) / "ovis"
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(where)], check=True)
        start = time.perf_counter()
        proc = subprocess.run(["make", "demo"], cwd=where, capture_output=True, text=True)
        wall = time.perf_counter() - start
        print(proc.stdout[-6000:])
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"make demo failed with exit code {proc.returncode}")
    stages: dict[str, float] = {}
    totals: dict[str, float] = {}
    for line in proc.stdout.splitlines():
        m = STAGE_LINE.match(line.strip())
        if m:
            stages[f"{m[1]}_{m[2]}_s"] = float(m[3])
            totals[f"{m[1]}_stages_s"] = totals.get(f"{m[1]}_stages_s", 0.0) + float(m[3])
    figures = {"commit": commit, "demo_s": f"{wall:.1f}", **{k: f"{v:.1f}" for k, v in {**totals, **stages}.items()}}
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
