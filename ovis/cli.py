"""The `ovis` command: one subcommand per stage, each handled by the module that does the work."""

from __future__ import annotations

import contextlib
import importlib
import sys

from ovis.locks import folder_lock

# subcommand -> (module with `main(argv) -> int`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "splits": ("ovis.data.splits", "build base/novel (or seen/unseen) COCO splits"),
    "demo-data": ("ovis.data.synthetic", "generate the embedded demo dataset"),
    "train": ("ovis.engine.train", "train a detector / affinity network from a recipe"),
    "pseudo": ("ovis.pseudo.stage", "extract pseudo masks (sharded) and merge them"),
    "eval": ("ovis.eval.cli", "evaluate detections under a named protocol"),
    "curves": ("ovis.viz.curves", "draw training curves and the ours-vs-paper report"),
    "reproduce": ("ovis.pipeline", "run the stage notebooks of a recipe with papermill"),
    "lab": ("ovis.pipeline", "open JupyterLab on notebooks/"),
}
# commands that write one folder named by an option: a second concurrent run into it fails at once
LOCKED_OPTION = {"splits": "--out"}


def usage() -> str:
    lines = ["usage: ovis COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`ovis COMMAND --help` lists a command's arguments."]
    return "\n".join(lines)


def _option_value(argv: list[str], option: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(option + "="):
            return arg[len(option) + 1:]
    return None


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
    folder = _option_value(rest, LOCKED_OPTION[name]) if name in LOCKED_OPTION else None
    try:
        with folder_lock(folder) if folder else contextlib.nullcontext():
            return int(entry(rest) or 0)
    except OSError as e:  # the file system said no: an output path that is a file, no permission, ...
        where = f" ({e.filename})" if e.filename and str(e.filename) not in str(e) else ""
        print(f"ovis {name}: error: {e}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
