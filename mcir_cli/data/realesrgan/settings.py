"""The settings of Real-ESRGAN's second-order degradation (`--degradation realesrgan`):
one frozen value with the published defaults, read from a TOML `[degradation]` table and
checked in one place (an unknown key or a range whose low end exceeds its high end is one
line naming the file and the key).

Defaults and key names are Real-ESRGAN's `options/train_realesrnet_x4plus.yml` (top level
and `datasets.train`), so a section can be pasted from a BasicSR option file."""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcir_cli.errors import McirError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEGRADATIONS = ("realesrgan",)
KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
_KERNEL_PROB = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)


@dataclass(frozen=True)
class RealESRGANSettings:
    """Real-ESRGAN's train_realesrnet_x4plus.yml values. `crop_pad_size` (400) and the odd
    kernel sizes 7..blur_kernel_size are constants of its realesrgan_dataset.py."""

    # the first degradation: blur (datasets.train), resize, noise, JPEG (top level)
    blur_kernel_size: int = 21
    kernel_list: tuple[str, ...] = KERNEL_TYPES
    kernel_prob: tuple[float, ...] = _KERNEL_PROB
    sinc_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[float, float] = (30.0, 95.0)
    # the second degradation
    second_blur_prob: float = 0.8
    blur_kernel_size2: int = 21
    kernel_list2: tuple[str, ...] = KERNEL_TYPES
    kernel_prob2: tuple[float, ...] = _KERNEL_PROB
    sinc_prob2: float = 0.1
    blur_sigma2: tuple[float, float] = (0.2, 1.5)
    betag_range2: tuple[float, float] = (0.5, 4.0)
    betap_range2: tuple[float, float] = (1.0, 2.0)
    resize_prob2: tuple[float, float, float] = (0.3, 0.4, 0.3)
    resize_range2: tuple[float, float] = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple[float, float] = (1.0, 25.0)
    poisson_scale_range2: tuple[float, float] = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: tuple[float, float] = (30.0, 95.0)
    # the end: sinc filter (with the last resize) and JPEG, in a random order
    final_sinc_prob: float = 0.8
    gt_usm: bool = True  # the target (and the degradation's source) is USM-sharpened
    crop_pad_size: int = 400  # HR crop degraded before the paired training crop

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


_RANGES = ("blur_sigma", "betag_range", "betap_range", "resize_range", "noise_range", "poisson_scale_range",
           "jpeg_range")
_PROBS = ("sinc_prob", "gaussian_noise_prob", "gray_noise_prob")


def _keys(names: tuple[str, ...]) -> tuple[str, ...]:
    return (*names, *(n + "2" for n in names))


def settings_from_dict(raw: dict[str, Any] | None, where: str | Path | None = None) -> RealESRGANSettings:
    """The published defaults with `raw`'s values, each checked (one line naming `where`
    and the key)."""
    fields = {f.name: f for f in dataclasses.fields(RealESRGANSettings)}
    values: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        if key not in fields:
            raise McirError(f"unknown key {key!r} in [degradation] (the keys are Real-ESRGAN's option names, "
                            "e.g. blur_sigma, noise_range, jpeg_range2)", where)
        values[key] = _typed(key, value, where)
    settings = RealESRGANSettings(**values)
    _check(settings, where)
    return settings


def _typed(key: str, value: Any, where: str | Path | None) -> Any:
    default = getattr(RealESRGANSettings, key)
    number = (int, float)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, number) and not isinstance(value, bool)
    elif key.startswith("kernel_list"):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, number) and not isinstance(v, bool) for v in value)
    if not ok:
        raise McirError(f"[degradation] {key} must be like {default!r} (got {value!r})", where)
    if isinstance(value, (list, tuple)):
        return tuple(v if isinstance(v, str) else float(v) for v in value)
    return float(value) if isinstance(default, float) else value


def _check(s: RealESRGANSettings, where: str | Path | None) -> None:
    """Ranges low <= high, probabilities in [0, 1], kernels and choices that exist."""
    def bad(key: str, what: str) -> McirError:
        return McirError(f"[degradation] {key}: {what}", where)

    for key in _keys(_RANGES):
        lo_hi = getattr(s, key)
        if len(lo_hi) != 2 or not all(math.isfinite(v) for v in lo_hi):
            raise bad(key, f"a range is two finite numbers [low, high] (got {list(lo_hi)})")
        if lo_hi[0] > lo_hi[1]:
            raise bad(key, f"low end {lo_hi[0]:g} exceeds high end {lo_hi[1]:g}")
        if lo_hi[0] < 0 or (key.startswith("jpeg") and not 1 <= lo_hi[0] <= lo_hi[1] <= 100):
            raise bad(key, f"out of range (got {list(lo_hi)}; JPEG qualities are 1-100, the rest >= 0)")
    for key in ("resize_range", "resize_range2"):
        lo, hi = getattr(s, key)
        if not lo <= 1 <= hi or lo <= 0:
            raise bad(key, f"the down range is [low, 1], the up range [1, high]: need 0 < low <= 1 <= high (got [{lo:g}, {hi:g}])")
    for key in (*_keys(_PROBS), "second_blur_prob", "final_sinc_prob"):
        if not 0 <= getattr(s, key) <= 1:
            raise bad(key, f"a probability is in [0, 1] (got {getattr(s, key)})")
    for suffix in ("", "2"):
        kinds, probs = getattr(s, "kernel_list" + suffix), getattr(s, "kernel_prob" + suffix)
        unknown = [k for k in kinds if k not in KERNEL_TYPES]
        if unknown or not kinds:
            raise bad("kernel_list" + suffix, f"kernels are some of {', '.join(KERNEL_TYPES)} (got {list(kinds)})")
        _check_weights(bad, "kernel_prob" + suffix, probs, len(kinds))
        size = getattr(s, "blur_kernel_size" + suffix)
        if size < 7 or size % 2 == 0:
            raise bad("blur_kernel_size" + suffix, f"an odd size >= 7 (got {size})")
        _check_weights(bad, "resize_prob" + suffix, getattr(s, "resize_prob" + suffix), 3)
    if s.crop_pad_size < 1:
        raise bad("crop_pad_size", f"a size >= 1 (got {s.crop_pad_size})")


def _check_weights(bad: Any, key: str, weights: tuple[float, ...], n: int) -> None:
    if len(weights) != n or any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise bad(key, f"{n} weights >= 0 with a positive sum (got {list(weights)})")


def split_table(table: dict[str, Any], where: str | Path | None) -> tuple[str, dict[str, Any]]:
    """A `[degradation]` table -> (its `type`, default realesrgan; the settings it gives,
    checked, as given): what a preset, a run file or --degradation-config holds."""
    settings = dict(table)
    kind = settings.pop("type", DEGRADATIONS[0])
    if kind not in DEGRADATIONS:
        raise McirError(f"[degradation] type must be one of {', '.join(DEGRADATIONS)} (got {kind!r})", where)
    settings_from_dict(settings, where)
    return kind, settings


def read_table_file(path: str | Path) -> tuple[str, dict[str, Any]]:
    """A TOML file's `[degradation]` table (or, without one, its top-level keys)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # TOMLDecodeError is a ValueError
        raise McirError(f"cannot read the degradation settings ({type(exc).__name__}: {str(exc)[:120]})", path) from None
    table = raw.get("degradation", raw)
    if not isinstance(table, dict):
        raise McirError("[degradation] must be a table of settings", path)
    return split_table(table, path)


def check_degradation(name: str | None, settings: dict[str, Any] | None, task: str | None) -> None:
    """A run's --degradation: a known one, for super-resolution, its settings valid."""
    if name is None:
        return
    if name not in DEGRADATIONS:
        raise McirError(f"--degradation must be {' or '.join(DEGRADATIONS)}, or none (got {name!r})")
    if task not in (None, "sr"):
        raise McirError(f"--degradation {name} makes super-resolution inputs; --task is {task}")
    settings_from_dict(settings)


def resolve_degradation(base: dict[str, Any], preset: Any) -> None:
    """make_config's --degradation, in its `base` values: every setting written out (the
    preset's [degradation] table, then the ones given), so config.json alone rebuilds the
    same batches on a resume."""
    if base.get("degradation") == "none":  # a preset's degradation turned off: its folders' own LR
        base["degradation"] = base["degradation_settings"] = None
        return
    if preset is not None and preset.degradation and base.get("degradation") in (None, preset.degradation):
        base["degradation"] = preset.degradation
        base["degradation_settings"] = {**preset.degradation_settings, **(base.get("degradation_settings") or {})}
    if base.get("degradation"):
        base["degradation_settings"] = settings_from_dict(base.get("degradation_settings")).to_json()
        base["recipe_note"] = (base.get("recipe_note", "") + "; inputs made on the fly from the HR images by "
                               "Real-ESRGAN's second-order degradation, on the run's device (settings in config.json)")
    elif base.get("degradation_settings"):
        raise McirError("degradation settings were given without --degradation realesrgan")


def degradation_flags(name: str | None, settings_file: str | Path | None) -> dict[str, Any]:
    """--degradation NAME and --degradation-config FILE as make_config overrides (the file's
    type when the flag is not given)."""
    settings = None
    if settings_file is not None:
        kind, settings = read_table_file(settings_file)
        if name is not None and name != kind:
            raise McirError(f"its [degradation] type is {kind}, but --degradation {name} was given", settings_file)
        name = kind
    return {"degradation": name, "degradation_settings": settings}
