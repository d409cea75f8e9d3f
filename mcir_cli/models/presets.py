"""Tasks, presets (`presets/*.toml`) and their recipes: what a preset is, read and checked
in one place; `models` builds networks from them."""

from __future__ import annotations

import difflib
import importlib
import importlib.resources
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcir_cli.choices import EMBEDDINGS, LOSSES, OPTIMIZERS, SCHEDULES
from mcir_cli.data.layouts import infer_scale
from mcir_cli.data.realesrgan.settings import split_table
from mcir_cli.errors import McirError, ScaleNeeded
from mcir_cli.models.paper import PaperFigures, parse_paper

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger("mcir")


TASKS = ("sr", "dehaze", "derain", "deblur", "denoise", "jpeg")


def check_task_name(task: str | None) -> None:
    """--task must name a known task (it decides the scoring convention)."""
    if task is not None and task not in TASKS:
        raise McirError(f"--task must be one of {', '.join(TASKS)} (got {task!r})")


def check_noise_sigma(sigma: float | None) -> None:
    """--noise-sigma: a finite σ >= 0 on the 0-255 scale."""
    if sigma is not None and not (math.isfinite(sigma) and sigma >= 0):
        raise McirError(f"--noise-sigma must be a number >= 0 on the 0-255 scale (got {sigma})")


# --------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Hyperparameters:
    """The training hyperparameters a preset's `Recipe` and a run's `config.TrainConfig`
    share, declared once (in config.json's order); the defaults are a run's."""

    batch: int = 16
    patch: int = 48  # LR patch for SR, image patch otherwise
    optimizer: str = "adam"
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | multistep | cosine
    milestones: tuple[int, ...] = ()
    gamma: float = 0.5
    eta_min: float = 0.0
    warmup: int = 0
    grad_clip: float | None = None
    ema_decay: float = 0.0  # > 0: an EMA of the weights is validated and written (KAIR E_decay, BasicSR ema_decay)
    loss: str = "l1"
    qf_loss: float = 0.0  # FBCNN: weight of the L1 loss on its predicted quality factor (QF_lossfn_weight)


@dataclass(frozen=True)
class Recipe(Hyperparameters):
    """The original training recipe of a preset (what its paper/repository used): its
    hyperparameters, from scratch (a preset's defaults differ from a run's in these two)."""

    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "multistep"
    iterations: int = 500_000


@dataclass(frozen=True)
class SPNSettings:
    """SPN defaults: the paper's λ, w and steps; the authors' released embedding and
    negative init (mcir study measured no better choice for fine-tuning: docs/evidence.md).
    steps may also be "auto" (fitted to the run) or "paper"."""

    lam: float = 1e-4
    weight: float = 0.1
    steps: tuple[int, ...] | str = (100, 500, 1000, 2000)
    embedding: str = "vgg16"
    negative_init: str = "mix"
    negative_mix: float = 0.1


@dataclass(frozen=True)
class IOSpec:
    """How a network expects its images: value ranges in and out, optional mean/std."""

    in_range: tuple[float, float] = (0.0, 1.0)
    out_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    clone_input: bool = False  # the network writes into its input (RCAN)

    @property
    def is_identity(self) -> bool:
        return (
            self.in_range == (0.0, 1.0)
            and self.out_range == (0.0, 1.0)
            and self.mean is None
            and not self.clone_input
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "in_range": list(self.in_range),
            "out_range": list(self.out_range),
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
        }


@dataclass(frozen=True)
class Preset:
    name: str
    task: str
    scale: int
    architecture: str
    kwargs: dict[str, Any]
    description: str = ""
    source: str = ""
    params: int | None = None  # official parameter count (all state-dict parameters)
    io: IOSpec | None = None
    recipe: Recipe = field(default_factory=Recipe)
    spn: SPNSettings = field(default_factory=SPNSettings)
    weights_file: str | None = None  # relative to $MCIR_WEIGHTS
    weights_url: str | None = None
    path: Path | None = None
    degradation: str | None = None  # the [degradation] table's type: inputs made on the fly
    degradation_settings: dict[str, Any] = field(default_factory=dict)  # the settings it gives
    paper: PaperFigures | None = None  # the MCIR paper's figures for this model ([paper])


def presets_dir() -> Path:
    """The shipped presets: inside the installed package, or `presets/` in a checkout."""
    packaged = Path(str(importlib.resources.files("mcir_cli"))) / "presets"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "presets"


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def lam_key(key: str) -> str:
    """A settings key as its field's name: "lambda" (the paper's λ as presets' [spn], run
    files and --arm spell it; a Python keyword) is the field `lam`; any other key is itself."""
    return "lam" if key == "lambda" else key


def load_preset_file(path: str | Path) -> Preset:
    """Parse one preset TOML; a malformed file is a one-line error naming it."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise McirError(f"cannot read preset ({exc})", path) from None
    try:
        arch = data["architecture"]
        io = data.get("io")
        recipe = {k: _tuple(v) for k, v in data.get("recipe", {}).items()}
        spn = {lam_key(k): _tuple(v) for k, v in data.get("spn", {}).items()}
        weights = data.get("weights", {})
        degradation, degradation_settings = _degradation(data.get("degradation"), path)
        preset = Preset(
            name=data.get("name", path.stem),
            task=data["task"],
            scale=int(data.get("scale", 1)),
            architecture=arch["id"],
            kwargs=dict(arch.get("kwargs", {})),
            description=data.get("description", ""),
            source=data.get("source", ""),
            params=data.get("params"),
            io=None
            if io is None
            else IOSpec(
                in_range=tuple(io.get("in_range", io.get("range", (0.0, 1.0)))),
                out_range=tuple(io.get("out_range", io.get("range", (0.0, 1.0)))),
                mean=_tuple(io.get("mean")),
                std=_tuple(io.get("std")),
            ),
            recipe=Recipe(**recipe),
            spn=SPNSettings(**spn),
            weights_file=weights.get("file"),
            weights_url=weights.get("url"),
            path=path,
            degradation=degradation,
            degradation_settings=degradation_settings,
            paper=parse_paper(data.get("paper"), data["task"], path),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise McirError(f"malformed preset ({type(exc).__name__}: {exc})", path) from None
    _check_preset(preset)
    return preset


def _degradation(table: Any, path: Path) -> tuple[str | None, dict[str, Any]]:
    if table is None:
        return None, {}
    if not isinstance(table, dict):
        raise McirError("malformed preset ([degradation] must be a table)", path)
    return split_table(table, path)




def _check_preset(preset: Preset) -> None:
    """Reject values the rest of mcir would only trip over later (one line, naming the file)."""

    def bad(what: str) -> McirError:
        return McirError(f"malformed preset ({what})", preset.path)

    if preset.task not in TASKS:
        raise bad(f"task {preset.task!r} is not one of {', '.join(TASKS)}")
    if preset.scale < 1:
        raise bad(f"scale must be >= 1, got {preset.scale}")
    if preset.params is not None and (isinstance(preset.params, bool) or not isinstance(preset.params, int)):
        raise bad(f"params must be an integer, got {preset.params!r}")
    r = preset.recipe
    for field_name, value, allowed in (
        ("recipe.optimizer", r.optimizer, OPTIMIZERS),
        ("recipe.schedule", r.schedule, SCHEDULES),
        ("recipe.loss", r.loss, LOSSES),
        ("spn.embedding", preset.spn.embedding, EMBEDDINGS),
    ):
        if value not in allowed:
            raise bad(f"{field_name} {value!r} is not one of {', '.join(allowed)}")
    if len(r.betas) != 2:
        raise bad(f"recipe.betas needs two values, got {list(r.betas)}")
    if not (r.qf_loss >= 0 and math.isfinite(r.qf_loss)):
        raise bad(f"recipe.qf_loss must be a weight >= 0, got {r.qf_loss}")
    if r.lr <= 0 or r.batch < 1 or r.patch < 1 or r.iterations < 1:
        raise bad("recipe.lr, batch, patch and iterations must be positive")
    if list(r.milestones) != sorted(r.milestones):
        raise bad(f"recipe.milestones must be increasing, got {list(r.milestones)}")
    io = preset.io
    if io is not None:
        if len(io.in_range) != 2 or len(io.out_range) != 2:
            raise bad("io ranges need two values [low, high]")
        if io.in_range[0] >= io.in_range[1] or io.out_range[0] >= io.out_range[1]:
            raise bad("io ranges must be [low, high] with low < high")
        if io.std is not None and io.mean is None:
            raise bad("io.std given without io.mean")
        if io.mean is not None and io.std is not None and len(io.mean) != len(io.std):
            raise bad("io.mean and io.std must have the same length")


def list_presets() -> list[Preset]:
    return [load_preset_file(p) for p in sorted(presets_dir().glob("*.toml"), key=lambda p: p.stem)]


def get_preset(name: str, scale: int | None = None) -> Preset:
    """Resolve `--model NAME [--scale s]`: an exact preset name, NAME-x{s}, or a TOML path."""
    candidate = Path(name)
    if candidate.suffix == ".toml":
        if not candidate.exists():
            raise McirError("preset file not found", candidate)
        preset = load_preset_file(candidate)
    else:
        by_name = {p.stem: p for p in presets_dir().glob("*.toml")}
        key = name.strip().lower().replace("_", "-")
        if scale is not None and f"{key}-x{scale}" in by_name:
            key = f"{key}-x{scale}"
        if key not in by_name:
            scaled = sorted(
                (k for k in by_name if k.startswith(key + "-x") and k[len(key) + 2 :].isdigit()),
                key=lambda k: int(k[len(key) + 2 :]),
            )
            if scaled:
                have = ", ".join(scaled)
                if scale is None:
                    raise ScaleNeeded(f"preset {name!r} comes in several scales ({have}): add --scale")
                raise McirError(f"preset {name!r} has no x{scale} variant (available: {have})")
            close = [k for k in sorted(by_name) if k.startswith(key)][:3]
            close += [
                k for k in difflib.get_close_matches(key, list(by_name), n=3, cutoff=0.5)
                if k not in close
            ][: 3 - len(close)]
            hint = f"; did you mean {', '.join(close)}?" if close else "; `mcir models` lists them"
            raise McirError(f"unknown model preset {name!r}{hint}")
        preset = load_preset_file(by_name[key])
    if scale is not None and preset.scale != scale:
        raise McirError(f"preset {preset.name} is x{preset.scale}, but --scale {scale} was given")
    return preset


def preset_scale(model: str | None, scale: int | None, data: Sequence[str | Path]) -> int | None:
    """The scale to take `--model` at: `scale` when given (or without a preset), None for
    a preset of one scale (its own); for a preset in several scales (`--model
    swinir-light`), the one scale the data folders hold (`infer_scale`), checked to be
    one of its variants. Raises `ScaleNeeded` when the folders hold none or several."""
    if not model or scale is not None:
        return scale
    try:
        get_preset(model)
        return None
    except ScaleNeeded:
        found = infer_scale(data)
        if found is None:
            raise
    get_preset(model, found)  # the preset has no such variant: say so
    return found
