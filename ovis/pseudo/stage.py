"""The old address of the `ovis pseudo` command, which dispatches to a recipe's method and so lives in
the method layer (``ovis.methods.pseudo_cli``); kept while ``ovis.cli`` names this module."""

from ovis.methods.pseudo_cli import main

__all__ = ["main"]
