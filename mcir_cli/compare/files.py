"""Evaluation result JSONs read and validated: the files `evaluate.py` writes and
`compare` reads, in the form

    {"conventions": {"y_channel": bool, "crop_border": int, "quantize": "uint8"},
     "model": {"checkpoint": str, "sha256": str, "architecture": str, "scale": int,
               "label": str},
     "datasets": {"<name>": {"psnr": float, "ssim": float,
                             "images": [{"name": str, "psnr": float, "ssim": float}]}}}

A malformed file is a one-line `McirError` naming it and what is wrong; `results.py`
compares what this returns.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcir_cli.errors import McirError


def _number(value: Any) -> float:
    """A score from JSON: a number, or the strings "inf"/"Infinity"/"nan" (strict JSON
    writers cannot emit non-finite floats). Raises ValueError/TypeError otherwise."""
    if isinstance(value, bool):
        raise TypeError("boolean is not a score")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return float(value.strip().lower().replace("infinity", "inf"))
    raise TypeError(f"not a number: {value!r}")


def _validate_dataset(ds_name: str, ds: Any, bad: Callable[[str], McirError]) -> dict:
    """One dataset entry, checked and normalised (scores as floats, names unique)."""
    if not isinstance(ds, dict):
        raise bad(f"dataset '{ds_name}' is not an object")
    for key in ("psnr", "ssim", "images"):
        if key not in ds:
            raise bad(f"missing key 'datasets.{ds_name}.{key}'")
    if not isinstance(ds["images"], list):
        raise bad(f"'datasets.{ds_name}.images' is not a list")
    try:
        psnr, ssim = _number(ds["psnr"]), _number(ds["ssim"])
    except (TypeError, ValueError) as exc:
        raise bad(f"dataset '{ds_name}': {exc}") from None
    images = []
    seen: set[str] = set()
    for i, img in enumerate(ds["images"]):
        if not isinstance(img, dict) or not all(k in img for k in ("name", "psnr", "ssim")):
            raise bad(f"'datasets.{ds_name}.images[{i}]' needs name, psnr and ssim")
        name = str(img["name"])
        if name in seen:
            raise bad(f"dataset '{ds_name}' lists image '{name}' twice")
        seen.add(name)
        try:
            images.append({"name": name, "psnr": _number(img["psnr"]),
                           "ssim": _number(img["ssim"])})
        except (TypeError, ValueError) as exc:
            raise bad(f"dataset '{ds_name}', image '{name}': {exc}") from None
    return {"psnr": psnr, "ssim": ssim, "images": images}


def _object(value: Any, keys: tuple[str, ...], bad: Callable[[str], McirError], name: str = "") -> dict:
    """`value`, checked to be a JSON object holding `keys`; `name` is where it sits in the
    file ("conventions"; "": the top level)."""
    if not isinstance(value, dict):
        raise bad(f"'{name}' is not an object" if name else "top level is not a JSON object")
    for key in keys:
        if key not in value:
            raise bad(f"missing key '{name}.{key}'" if name else f"missing key '{key}'")
    return value


def validate_result(data: Any, source: str | Path | None) -> dict:
    """Check a result dict's structure and return a normalised copy (floats, label)."""

    def bad(problem: str) -> McirError:
        return McirError(f"not an mcir evaluation result: {problem}", source)

    _object(data, ("conventions", "model", "datasets"), bad)
    conv = _object(data["conventions"], ("y_channel", "crop_border", "quantize"), bad, "conventions")
    model = dict(_object(data["model"], (), bad, "model"))
    if "checkpoint" not in model and "label" not in model:
        raise bad("missing key 'model.checkpoint'")
    label = model.get("label")
    if not isinstance(label, str) or not label.strip():
        from mcir_cli.models.loading import checkpoint_label  # lazy: torch; `mcir --help` imports compare/

        ckpt = str(model.get("checkpoint") or "")
        label = (checkpoint_label(ckpt) if ckpt else "") or "model"
    model["label"] = label.strip()
    datasets = _object(data["datasets"], (), bad, "datasets")
    out_sets = {str(name): _validate_dataset(name, ds, bad) for name, ds in datasets.items()}
    out = dict(data)  # keeps extra keys evaluate writes (task, noise, mcir_version, ...)
    out.update(conventions=dict(conv), model=model, datasets=out_sets)
    return out


def load_result(path: str | Path) -> dict:
    """Read and validate one evaluation result JSON; returns a normalised dict (scores as
    floats, `model.label` filled from the checkpoint stem when missing). Raises McirError
    (one line naming the file) for a missing, unreadable, invalid or incomplete file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise McirError("no such file", path) from None
    except IsADirectoryError:
        raise McirError("is a folder, expected an evaluation result JSON", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise McirError(f"cannot read: {exc}", path) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise McirError(f"invalid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}",
                        path) from None
    out = validate_result(data, path)
    out["_source"] = str(path)  # tells results of the same label apart in messages
    return out
