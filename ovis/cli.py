"""The `ovis` command: one subcommand per stage, each handled by the module that does the work."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module with `main(argv) -> int`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "splits": ("ovis.data.splits", "build base/novel (or seen/unseen) COCO splits"),
    "demo-data": ("ovis.data.synthetic", "generate the embedded demo dataset"),
    "train": ("ovis.methods.train", "train a detector / affinity network from a recipe"),
    "pseudo": ("ovis.methods.pseudo_cli", "extract pseudo masks (sharded) and merge them"),
    "eval": ("ovis.eval.cli", "evaluate detections under a named protocol"),
    "curves": ("ovis.viz.curves", "draw training curves and the ours-vs-paper report"),
    "reproduce": ("ovis.pipeline", "run the stage notebooks of a recipe with papermill"),
    "demo": ("ovis.demo", "reproduce both demo recipes side by side, then print their summary"),
    "lab": ("ovis.pipeline", "open JupyterLab on notebooks/"),
}
# Each command that writes a folder locks it (ovis.locks) where it has parsed its arguments, so that
# every spelling argparse accepts (--out X, --out=X, --ou X) names the folder it locks.


def usage() -> str:
    lines = ["usage: ovis COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`ovis COMMAND --help` lists a command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ovis: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    entry = getattr(module, "lab_main" if name == "lab" else "main")
    try:
        return int(entry(rest) or 0)
    except OSError as e:  # the file system said no: an output path that is a file, no permission, ...
        where = f" ({e.filename})" if e.filename and str(e.filename) not in str(e) else ""
        print(f"ovis {name}: error: {e}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
