"""What `mcir restore` will write, decided and checked before any work.

Inputs are image files and folders (searched recursively, hidden names skipped); each
output keeps the image's path relative to the folder given (`photos/2024/a.jpg` with
`-o out` -> `out/2024/a.png`). One input file with `-o NAME.png` writes that file. Refused
in one line: a missing input, a folder with no images, an output folder inside an input
folder, an output that would be an input, two inputs with the same output.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mcir_cli._helpers.fsutil import confined, refuse_inside_inputs, writable_target
from mcir_cli.data.imageio import IMAGE_EXTENSIONS
from mcir_cli.data.photos import FORMAT_SUFFIXES
from mcir_cli.errors import McirError

# --format values -> Pillow's format names ("same": the input's own format)
FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP", "tiff": "TIFF", "same": None}
_BY_SUFFIX = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF",
              ".tiff": "TIFF", ".bmp": "BMP"}
_KINDS = "PNG/JPEG/WebP/TIFF/BMP"


@dataclass(frozen=True)
class Job:
    """One image to restore: where it is read, where it goes, and as what format."""

    source: Path
    target: Path
    format: str  # a photos.FORMAT_SUFFIXES key


def format_name(fmt: str | None) -> str | None:
    """`--format` checked: its Pillow name, None for `same` (or not given)."""
    if fmt is None:
        return None
    key = fmt.lower().lstrip(".")
    if key not in FORMATS:
        raise McirError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    return FORMATS[key]


def _images_in(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in sorted(files)
                  if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS]
    if not found:
        raise McirError(f"no images ({_KINDS}) in this folder", folder)
    return found


def _sources(inputs: list[Path]) -> list[tuple[Path, Path]]:
    """(image file, its path relative to the input given) for every input."""
    pairs: list[tuple[Path, Path]] = []
    for item in inputs:
        if item.is_dir():
            pairs += [(f, f.relative_to(item)) for f in _images_in(item)]
        elif item.is_file():
            if item.suffix.lower() not in IMAGE_EXTENSIONS:
                raise McirError(f"not an image file ({_KINDS} by its name)", item)
            pairs.append((item, Path(item.name)))
        else:
            raise McirError("input not found", item)
    return pairs


def _check_output(inputs: list[Path], output: Path) -> None:
    refuse_inside_inputs(output, inputs, "output folder")
    if output.exists() and not output.is_dir():
        raise McirError("the output exists and is a file, not a folder", output)


def plan_jobs(inputs: list[str | Path], output: str | Path, fmt: str | None = None) -> list[Job]:
    """Every (source, target, format) of a restore, checked: see the module's docstring."""
    inputs, output = [Path(p) for p in inputs], Path(output)
    if not inputs:
        raise McirError("give at least one input image or folder")
    wanted = format_name(fmt)
    pairs = _sources(inputs)
    if len(inputs) == 1 and inputs[0].is_file() and output.suffix.lower() in _BY_SUFFIX:
        jobs = [_single_file_job(pairs[0][0], output, fmt, wanted)]
    else:
        if output.suffix.lower() in _BY_SUFFIX and not output.is_dir():  # an image file's name, not a folder
            what = f"{len(inputs)} inputs" if len(inputs) > 1 else "a folder input"
            raise McirError(f"-o names one {_BY_SUFFIX[output.suffix.lower()]} file, but there are {what}: "
                            "give a folder for -o (or restore one image at a time)", output)
        _check_output(inputs, output)
        jobs = []
        for source, rel in pairs:
            kind = wanted or ("PNG" if fmt is None else _BY_SUFFIX[source.suffix.lower()])
            suffix = source.suffix if fmt is not None and wanted is None else FORMAT_SUFFIXES[kind]
            jobs.append(Job(source, confined(output, *rel.parent.parts, rel.stem + suffix), kind))
        writable_target(jobs[0].target, "restored images")
    _check_distinct(jobs, {os.path.realpath(source) for source, _ in pairs})
    return jobs


def _single_file_job(source: Path, output: Path, fmt: str | None, wanted: str | None) -> Job:
    """`mcir restore photo.jpg -o photo_x4.png`: the output's name says the format."""
    named = _BY_SUFFIX[output.suffix.lower()]
    expected = wanted or (_BY_SUFFIX[source.suffix.lower()] if fmt is not None else named)
    if expected != named:
        raise McirError(f"--format {fmt} but the output's name says {named}", output)
    writable_target(output, "restored image")
    return Job(source, output, named)


def _check_distinct(jobs: list[Job], sources: set[str]) -> None:
    seen: dict[str, Path] = {}
    for job in jobs:
        key = os.path.realpath(job.target)
        if key in sources:
            raise McirError("the output would replace an input image (inputs are never written)", job.target)
        if key in seen:
            raise McirError(f"{seen[key]} and {job.source} would both be written to {job.target}", job.source)
        seen[key] = job.source
