"""User-facing errors.

Anything a user can cause (a bad folder, a truncated image, a checkpoint of an unknown
architecture) raises `McirError` with one line that names the file and the problem. The
CLI prints that line and exits with code 2; no traceback, nothing written.
"""

from __future__ import annotations

from pathlib import Path


class McirError(Exception):
    """A problem with the user's input, reported as one line (CLI exit code 2)."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        text = f"{path}: {message}" if path is not None else message
        super().__init__(" ".join(text.split()))


class ScaleNeeded(McirError):
    """A preset that comes in several scales, named without one (`--model swinir-light`
    without --scale): `models.presets.preset_scale` answers it with the one scale the data
    folders hold, and raises it again when they hold none or several."""
