"""A run's configuration: the one place where flags, presets and defaults become a
validated `TrainConfig` (saved as config.json, reused by --resume and `mcir study`)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcir_cli.choices import RATIO_BAND
from mcir_cli.data.realesrgan.settings import resolve_degradation, split_table
from mcir_cli.errors import McirError
from mcir_cli.models.presets import Hyperparameters, Recipe, SPNSettings, get_preset, lam_key, preset_scale, tomllib
from mcir_cli.train.checks import validate_config

PAPER_STEPS = (100, 500, 1000, 2000)  # the paper's update periods, for 500k-step runs
MIN_UPDATES = 4  # --negative-steps auto: the slowest negative updates at least this often
# --negative-steps auto's floor (mcir's choice): no negative faster than every 2 steps, and
# the paper's 1:5:10:20 kept below that: 2/10/20/40 for runs under 160 steps
MIN_PERIOD = 2
# settings a resume may change: they decide when to log, save and validate and how data
# is loaded, never a number the training computes (patches depend on their index only)
RESUME_SETTINGS = ("workers", "save_every", "log_every", "val_every", "tensorboard")


@dataclass(frozen=True)
class _Inputs:
    """config.json's first fields: what a run starts from, where it writes, how long it runs."""

    data: list[str]
    output: str
    checkpoint: str | None = None
    model: str | None = None
    scale: int | None = None
    res_scale: float | None = None  # EDSR's, not stored in its weights (models.settle_res_scale)
    task: str | None = None
    val: tuple[str, ...] | str | None = None  # validation folders (a str in older config.json)
    iters: int = 1000
    schedule_iters: int | None = None  # the horizon of the lr schedule: iters at the run's start


@dataclass(frozen=True)
class TrainConfig(Hyperparameters, _Inputs):
    """Everything a run depends on; validated when built, saved as config.json; a value
    (`dataclasses.replace` makes a changed one, validated again). Its fields, in
    config.json's order: those of `_Inputs`, the `Hyperparameters` a preset's `Recipe`
    shares (recipes.py), then the SPN and run settings below (a dataclass takes its bases'
    fields from the last base first)."""

    lam: float = 1e-4
    lam_auto: bool = False
    ratio_band: tuple[float, float] = RATIO_BAND
    negative_steps: tuple[int, ...] = PAPER_STEPS
    negative_weight: float = 0.1
    negative_init: str = "mix"  # the authors' code (the paper is silent)
    negative_mix: float = 0.1
    batched_negatives: str = "auto"
    embedding: str = "vgg16"
    embedding_weights: str | None = None
    embedding_init: str = "pretrained"
    seed: int = 0
    device: str = "auto"
    amp: str | None = None  # None = auto: fp32 everywhere (speed.precision_decision says why)
    train_bn: bool = False
    noise_sigma: float | None = None
    jpeg_quality: str | None = None  # "10", or "10-95" for a blind model (jpeg.parse_quality)
    degradation: str | None = None  # "realesrgan": inputs made on the fly from the HR images
    degradation_settings: dict[str, Any] | None = None  # all of them, resolved by make_config
    val_every: int = 0  # 0: only at the end
    save_every: int = 0  # 0: only at the end
    log_every: int = 1
    workers: int = 0
    cache: str = "auto"
    collapse_factor: float = 10.0
    max_collapses: int = 3
    val_drop: float = 1.0  # a validation this many dB below the start is a collapse
    tensorboard: bool = False
    allow_random_init: bool = False
    recipe_note: str = ""  # where lr/schedule/iters came from (make_config), logged at start
    tile: int | None = None
    compile: str = "auto"  # auto: CUDA runs long enough to repay compile time (speed.py)
    compile_backend: str = "inductor"  # API only: "aot_eager" checks tracing without codegen
    channels_last: str = "auto"  # auto: CUDA, convolution-dominated networks (speed.py)

    def __post_init__(self) -> None:
        if self.schedule_iters is None:
            object.__setattr__(self, "schedule_iters", self.iters)  # frozen: set once, here
        validate_config(self)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: tuple(v) if isinstance(v, list) and k != "data" else v for k, v in data.items() if k in names}
        return cls(**kwargs)


def fitted_steps(iters: int, paper: tuple[int, ...] = PAPER_STEPS) -> tuple[int, ...]:
    """`--negative-steps auto`: the paper's periods when the run is long enough for the
    slowest to update MIN_UPDATES times, else the same ratios (1:5:10:20) shrunk until
    it does, but not below MIN_PERIOD for the fastest (shrunk further, to 1, 2, 3, 4, the
    negatives were the previous steps' weights, four nearly equal lags, the paper's
    ratios lost): runs under 160 steps get 2/10/20/40, whose slow negatives update fewer
    than MIN_UPDATES times (the run warns about those that never do). An option: the
    paper's periods leave a short fine-tune's slow negatives at their initialisation, yet
    measured no worse there (docs/evidence.md)."""
    f = max(min(1.0, iters / (MIN_UPDATES * max(paper))), MIN_PERIOD / min(paper))
    return tuple(round(s * f) for s in paper)


def parse_steps(text: str) -> tuple[int, ...] | str:
    """'100,500,1000,2000' -> (100, 500, 1000, 2000); 'auto' (fitted to the run's length)
    and 'paper' (100,500,1000,2000) are kept as words for make_config to resolve."""
    if text.strip() in ("auto", "paper"):
        return text.strip()
    try:
        steps = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise McirError(f"--negative-steps must be comma-separated positive integers, auto or paper (got {text!r})") from None
    if not steps or any(s < 1 for s in steps):
        raise McirError(f"--negative-steps must be comma-separated positive integers, auto or paper (got {text!r})")
    return steps


def fine_tune_lr(recipe: Any) -> tuple[float, str]:
    """(lr, explanation): the learning rate where a from-scratch recipe ends -- the rate
    its pretrained weights converged at. Multistep: lr x gamma^(milestones before the
    last step); cosine: its floor eta_min, but at least 1 % of the peak (a cosine that
    decays to ~0 would leave nothing to fine-tune with); constant: lr."""
    if recipe.schedule == "multistep":
        k = sum(m < recipe.iterations for m in recipe.milestones)
        lr = recipe.lr * recipe.gamma**k
        return lr, f"lr {lr:.3g}, where its multistep schedule ends ({recipe.lr:g} x {recipe.gamma:g}^{k})"
    if recipe.schedule == "cosine":
        lr = max(recipe.eta_min, recipe.lr * 0.01)
        return lr, f"lr {lr:.3g}, the end of its cosine schedule from {recipe.lr:g} (at least 1 % of it)"
    return recipe.lr, f"its constant lr {recipe.lr:g}"


# SPNSettings fields whose TrainConfig field has another name (a Recipe's Hyperparameters
# are TrainConfig's own; its iterations apply only from scratch)
_SPN_AS = {"lam": "lam", "weight": "negative_weight", "steps": "negative_steps", "embedding": "embedding",
           "negative_init": "negative_init", "negative_mix": "negative_mix"}


def _defaults(preset: Any, task: str | None, scale: int | None) -> tuple[Recipe, SPNSettings]:
    if preset:
        return preset.recipe, preset.spn
    sr = (scale or 1) > 1 or task in (None, "sr")
    return Recipe(lr=1e-5, betas=(0.9, 0.99), batch=16, patch=48 if sr else 128, schedule="constant", loss="l1"), \
        SPNSettings()


def _resolve_steps(base: dict[str, Any]) -> None:
    """--negative-steps auto (fitted to this run's length) or paper, as numbers."""
    if base.get("negative_steps") == "auto":
        base["negative_steps"] = fitted_steps(base["iters"])
    elif base.get("negative_steps") == "paper":
        base["negative_steps"] = PAPER_STEPS


def make_config(
    data: list[str | Path],
    output: str | Path,
    *,
    checkpoint: str | Path | None = None,
    model: str | None = None,
    scale: int | None = None,
    **overrides: Any,
) -> TrainConfig:
    """A run's configuration: the preset's recipe and [spn] values when `model` names a
    preset, else fine-tuning defaults for a bare checkpoint (Adam 1e-5, constant lr, L1)
    and the paper's SPN values; every override that is not None wins.

    A preset's recipe is a from-scratch schedule. Starting from its pretrained weights
    (the usual case), the run fine-tunes at the learning rate where that schedule ends,
    held constant (`fine_tune_lr`): the recipe's initial rate (5e-4 for DCTLSA) knocked
    DCTLSA x4 from 32.52 to 31.88 dB on Set5 in two steps. With allow_random_init (from
    scratch) the whole recipe applies, its iteration count included."""
    found = preset_scale(model, scale, data)
    scale_note = f"; x{found}: the one scale of the training data" if scale is None and found is not None else ""
    scale = found
    preset = get_preset(model, scale) if model else None
    task = overrides.get("task") or (preset.task if preset else None)
    recipe, spn = _defaults(preset, task, scale or (preset.scale if preset else None))
    base: dict[str, Any] = {"task": task, "iters": 1000}
    base.update({f.name: getattr(recipe, f.name) for f in dataclasses.fields(Hyperparameters)})
    base.update({_SPN_AS[f.name]: getattr(spn, f.name) for f in dataclasses.fields(SPNSettings)})
    note = "bare checkpoint: fine-tuning defaults (Adam, lr 1e-5 constant, L1)"
    if preset and overrides.get("allow_random_init"):
        base.update(iters=recipe.iterations)
        note = f"{preset.name}: the full from-scratch recipe ({recipe.iterations} steps)"
        if overrides.get("iters") not in (None, recipe.iterations) and overrides.get("schedule") is None:
            base.update(_scaled_schedule(recipe, int(overrides["iters"])))
            note = (f"{preset.name}: the from-scratch recipe with its lr schedule scaled from "
                    f"{recipe.iterations} to {overrides['iters']} steps (milestones and warm-up as fractions)")
    elif preset:
        lr, why = fine_tune_lr(recipe)
        base.update(lr=lr, schedule="constant", milestones=(), warmup=0)
        note = f"{preset.name}: fine-tuning from pretrained weights at {why}, constant"
    if any(overrides.get(k) is not None for k in ("lr", "schedule", "iters", "warmup")):
        note += "; where given, --lr/--schedule/--iters/--warmup as given"  # one text: a run file round-trips
    base["recipe_note"] = note + scale_note
    base.update({k: v for k, v in overrides.items() if v is not None})
    _resolve_steps(base)
    resolve_degradation(base, preset)
    # absolute paths: config.json must let a resume (or a reader) find them from any folder
    if base.get("val"):  # one folder or several
        vals = [base["val"]] if isinstance(base["val"], (str, Path)) else list(base["val"])
        base["val"] = tuple(absolute(v) for v in vals)
    if base.get("embedding_weights"):
        base["embedding_weights"] = absolute(base["embedding_weights"])
    return TrainConfig(
        data=[absolute(d) for d in data], output=absolute(output),
        checkpoint=absolute(checkpoint) if checkpoint else None, model=model, scale=scale, **base,
    )


def _scaled_schedule(recipe: Recipe, iters: int) -> dict[str, Any]:
    """A from-scratch recipe's schedule at another length, its shape kept: milestones and
    warm-up at the same fractions of the run (a cosine follows `iters` by itself)."""
    f = iters / recipe.iterations
    milestones = tuple(max(1, round(m * f)) for m in recipe.milestones)  # a coinciding pair still decays twice
    return {"milestones": milestones, "warmup": round(recipe.warmup * f)}


def absolute(path: str | Path) -> str:
    """Absolute and normalised ("a/../b" -> "b"): the folder it was given from may be gone
    when the run is resumed."""
    return os.path.normpath(Path(path).expanduser().absolute())


def load_run_config(run_dir: str | Path, iters: int | None = None, **settings: Any) -> TrainConfig:
    """A run's configuration from its config.json, with --iters and RESUME_SETTINGS
    changed where given (anything else would change the run: refused by the CLI)."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.exists():
        raise McirError("not a run folder (no config.json)", run_dir)
    try:
        data = json.loads(path.read_text())["config"]
        data.setdefault("schedule_iters", data.get("iters"))  # runs from before the field existed
        cfg = TrainConfig.from_json(data)
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise McirError(f"config.json is damaged ({type(exc).__name__}: {str(exc)[:100]}); "
                        "the run cannot be resumed from it", path) from None
    changes: dict[str, Any] = {"output": str(run_dir)}
    if iters is not None:
        changes["iters"] = iters
    for key, value in settings.items():
        if key not in RESUME_SETTINGS:
            raise ValueError(f"a resume cannot change {key}")
        if value is not None:
            changes[key] = value
    return dataclasses.replace(cfg, **changes)


def parse_lambda(text: str) -> tuple[float | None, bool]:
    """'1e-4' -> (1e-4, False); 'auto' -> (None, True): the preset's or the paper's λ as
    the start of --lambda auto."""
    if text.strip() == "auto":
        return None, True
    try:
        return float(text), False
    except ValueError:
        raise McirError(f"--lambda must be a number or 'auto' (got {text!r})") from None


def parse_band(text: str) -> tuple[float, float]:
    """'0.01,0.10' -> (0.01, 0.10)."""
    try:
        band = tuple(float(x) for x in text.split(","))
    except ValueError:
        band = ()
    if len(band) != 2:
        raise McirError(f"--ratio-band must be two numbers low,high such as 0.01,0.10 (got {text!r})")
    return band  # type: ignore[return-value]


# keys a run file may not set: derived by make_config, or the identity of another run
_DERIVED = ("schedule_iters", "recipe_note", "output")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """`retrain --config FILE`: a run.toml (TrainConfig's field names or the flags' names,
    top level; a preset's [recipe] and [spn] tables with its key names) or a finished
    run's config.json (to repeat it elsewhere). Returns TrainConfig field values; an
    unknown key is a one-line error naming it and the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            raw = json.loads(text)
            raw = raw.get("config", raw) if isinstance(raw, dict) else raw
        else:
            raw = tomllib.loads(text)
    except (OSError, ValueError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise McirError(f"cannot read the run file ({type(exc).__name__}: {str(exc)[:120]})", path) from None
    if not isinstance(raw, dict):
        raise McirError("a run file holds a table of settings", path)
    flat: dict[str, Any] = {}
    for key, value in (raw.pop("recipe", None) or {}).items():
        flat[key] = value
    for key, value in (raw.pop("spn", None) or {}).items():  # a preset's [spn] names, "lambda" too
        name = lam_key(key)
        flat[_SPN_AS.get(name, name)] = value
    if isinstance(raw.get("degradation"), dict):  # the [degradation] table: its settings, checked here
        flat["degradation"], flat["degradation_settings"] = split_table(raw.pop("degradation"), path)
    for key, value in raw.items():
        flat[lam_key(key.replace("-", "_"))] = value
    fields = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if key in _DERIVED:
            continue
        if key == "iterations":  # a preset's [recipe] name
            key = "iters"
        if key not in fields:
            raise McirError(f"unknown key {key!r} (the keys are retrain's flags, e.g. iters, lr, lam, "
                            "negative_steps)", path)
        if key == "lam" and value == "auto":
            out["lam_auto"] = True
            continue
        if key == "degradation_settings":
            out[key] = value
            continue
        out[key] = _typed(key, value, fields[key], path)
    return out


def _typed(key: str, value: Any, annotation: str, path: Path) -> Any:
    """A run file's value checked against its field's type (one line naming the key)."""
    def bad(what: str) -> McirError:
        return McirError(f"key {key!r} must be {what} (got {value!r})", path)

    if value is None:
        return None
    if key in ("data", "val"):  # one folder or several
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise bad("a folder or a list of folders")
        return items if key == "data" else tuple(items)
    if key == "negative_steps" and value in ("auto", "paper"):
        return value
    if annotation.startswith("tuple"):
        if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise bad("a list of numbers")
        return tuple(value)
    if annotation.startswith("bool"):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if annotation.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if annotation.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if "str" in annotation and not isinstance(value, str):
        raise bad("a string")
    return value
