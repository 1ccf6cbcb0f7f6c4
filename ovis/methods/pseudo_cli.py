"""`ovis pseudo`: extract a recipe's pseudo masks, one shard per rank / Slurm array task, then merge.

Each shard is resumable and the merge is idempotent: run the same command once per shard (or once
under torchrun / a Slurm array, which set the shard from the environment); the shard that finds
all others finished writes ``pseudo/train_pseudo.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ovis.config import RecipeError, load_recipe
from ovis.methods import for_recipe
from ovis.runs import default_run_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ovis pseudo", description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", required=True, help="packaged recipe name or a YAML file")
    ap.add_argument("--run-dir", type=Path, help="default runs/<recipe>")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--shard", type=int, help="this shard's index (default: rank or SLURM_ARRAY_TASK_ID)")
    ap.add_argument("--num-shards", type=int, help="number of shards (default: world size or the array size)")
    ap.add_argument("--force", action="store_true", help="extract again even if the stage finished")
    args = ap.parse_args(argv)
    if (args.shard is None) != (args.num_shards is None):
        ap.error("--shard and --num-shards go together")
    if args.num_shards is not None and not 0 <= args.shard < args.num_shards:
        ap.error(f"--shard {args.shard} is outside 0..{args.num_shards - 1}")
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        run_dir = args.run_dir or default_run_dir(recipe)
        stats = for_recipe(recipe, "pseudo").run_pseudo(recipe, run_dir, shard=args.shard, num_shards=args.num_shards,
                                              force=args.force)
    except (RecipeError, ValueError) as e:  # a recipe, split file or checkpoint that cannot be used
        print(f"ovis pseudo: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
