"""The `mcir` Typer app, its consoles and the one-line error handling every command shares.

Each command parses flags, calls one API function, and renders the result with Rich.
User errors (`McirError`, and OS errors such as an unwritable folder) print one red line
and exit with code 2; anything else is a bug: one line, exit 1, the traceback with
MCIR_DEBUG=1.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn

from mcir_cli.errors import McirError

# tables stay readable in pipes and logs, where Rich would otherwise wrap at 80 columns
_PIPE_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
console = Console(width=_PIPE_WIDTH)
err_console = Console(stderr=True)

# --res-scale, on every command that loads checkpoints (models.settle_res_scale)
RES_SCALE_HELP = ("EDSR only: the residual scaling it was trained with, which no checkpoint stores (default: "
                  "mcir's own metadata, else guessed from the width: 0.1 at 256 features, else 1, with a warning).")

app = typer.Typer(
    name="mcir",
    help="Retrain image-restoration models with model contrastive learning (MCIR) and prove the gain.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="List presets and supported architectures; inspect checkpoints.\n\n"
                         "Alone, `mcir models` prints the presets table.\n\nExample: mcir models inspect EDSR_Lx4.pth --res-scale 0.1")
app.add_typer(models_app, name="models")
data_app = typer.Typer(help="What a dataset folder is: the published layout found, task, scale, pairs.\n\n"
                       "Example: mcir data inspect DIV2K/ --scale 4", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        import torch

        from mcir_cli import __version__

        console.print(f"mcir {__version__} (torch {torch.__version__})", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Retrain image-restoration models with model contrastive learning (MCIR) and prove the gain."""


def _setup_logging(verbose: bool = False) -> None:
    logger = logging.getLogger("mcir")
    if not logger.handlers:
        handler = RichHandler(console=err_console, show_path=False, show_time=False)
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


def _fail(message: str, code: int) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """A UserWarning (an image's alpha dropped, ...) as one line, like mcir's own notes:
    its source file and line say nothing to a user."""
    err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into one line and exit code 2; never a traceback for those."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _setup_logging()
        try:
            with warnings.catch_warnings():
                default = warnings.showwarning
                warnings.showwarning = lambda m, c, *rest: (_show_warning if issubclass(c, UserWarning)
                                                            else default)(m, c, *rest)
                return func(*args, **kwargs)
        except McirError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except OSError as exc:  # a folder that cannot be written, a full disk, ...
            if os.environ.get("MCIR_DEBUG"):
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            _fail(f"{where}{exc.strerror or type(exc).__name__}", 2)
        except Exception as exc:  # noqa: BLE001 - a bug: one line, the traceback on request
            if os.environ.get("MCIR_DEBUG"):
                raise
            text = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            _fail(f"unexpected {text} (MCIR_DEBUG=1 shows the traceback; please report it)", 1)

    return wrapper


def progress_bar(*columns: ProgressColumn, transient: bool = True, quiet_in_pipes: bool = True) -> Progress:
    """Every command's progress bars, on stderr: each task's description, its bar, done/total
    and the time left, then `columns`. `transient`: gone when done; `quiet_in_pipes`: no
    bar (and no remnants) in logs and pipes."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        *columns,
        console=err_console,
        transient=transient,
        disable=quiet_in_pipes and not err_console.is_terminal,
    )


# click's usage errors (unknown option, missing value), from whichever click typer uses
_UsageError = typer.BadParameter.__mro__[1]


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    """The `mcir` entry point: usage errors are one line, like every other error; a
    SIGTERM unwinds like Ctrl-C (temporary files removed) and exits 143."""
    signal.signal(signal.SIGTERM, _terminated)
    try:
        code = app(standalone_mode=False)
    except _UsageError as exc:
        if not exc.format_message():  # no arguments: the help was shown
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        where = f" (see {ctx.command_path} --help)" if ctx is not None else " (see mcir --help)"
        err_console.print(f"[bold red]error:[/] {escape(exc.format_message())}{where}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("[yellow]aborted[/]")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)

