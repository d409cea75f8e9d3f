"""`mcir card`: (re)write a run folder's model card (README.md + openmodeldb.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mcir_cli.cli.app import app, console, handle_errors


@app.command()
@handle_errors
def card(
    run: Path = typer.Argument(..., metavar="RUN", help="Run folder of mcir retrain (its config.json, log.jsonl, val.json and weights are read)."),
    comparison: Optional[Path] = typer.Option(None, "--comparison", help="JSON of `mcir compare --json` with this run's model: the card's evaluation table.", rich_help_panel="Evidence"),
    license: Optional[str] = typer.Option(None, "--license", help="SPDX license id of the model (default: the card's earlier one, else the start checkpoint's where it states one, else null).", rich_help_panel="Entry"),
    author: Optional[str] = typer.Option(None, "--author", help="OpenModelDB user id (default: the card's earlier one, else the login name).", rich_help_panel="Entry"),
    pretrained_id: Optional[str] = typer.Option(None, "--pretrained-id", help="OpenModelDB id of the start model (pretrainedModelG), when it is listed there.", rich_help_panel="Entry"),
) -> None:
    """Write the model card beside a retrained model: README.md (Hugging Face form) and openmodeldb.json.

    Example: mcir card runs/dctlsa-mcir --comparison cmp.json --license Apache-2.0

    `mcir retrain` writes both at its end; this command rewrites them, e.g. with the evidence of a comparison. Values given once (--license, --author, --pretrained-id) are kept by later rewrites.
    """
    from mcir_cli.train.card import write_card

    paths = write_card(run, comparison=comparison, author=author, license=license, pretrained_id=pretrained_id)
    console.print(f"wrote {paths['README.md']} and {paths['openmodeldb.json']}", highlight=False, soft_wrap=True)
