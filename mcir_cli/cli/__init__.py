"""The `mcir` command line: a thin Typer layer over the Python API.

Each command module parses flags, calls one API function and renders the result with
Rich; `app.py` holds what they share (consoles, one-line errors, the entry point).
"""

# importing the command modules registers their commands, in the order `mcir --help` lists them
from mcir_cli.cli import evaluate, retrain, study, compare, plot, demo, models, data  # noqa: F401, I001
from mcir_cli.cli import restore  # noqa: F401, E402
from mcir_cli.cli.app import app, main

__all__ = ["app", "main"]
