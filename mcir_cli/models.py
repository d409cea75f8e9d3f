"""Models: presets (`presets/*.toml`), loading checkpoints, and the `LoadedModel` descriptor.

Architectures come from spandrel where it has them and from `mcir_cli.archs` otherwise;
both are detected from a bare state dict by spandrel's registry. Everything outside this
module sees a model through `Restorer`, which maps [0, 1] images to the network's own
I/O convention ([0, 255], [-1, 1], mean/std) and back.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import importlib.resources
import logging
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mcir_cli.checkpoint import Checkpoint, match_keys, read_checkpoint
from mcir_cli.errors import McirError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger("mcir")

TASKS = ("sr", "dehaze", "derain", "deblur", "denoise")


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
class Recipe:
    """The original training recipe of a preset (what its paper/repository used)."""

    optimizer: str = "adam"
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    batch: int = 16
    patch: int = 48  # LR patch for SR, image patch otherwise
    iterations: int = 500_000
    schedule: str = "multistep"  # multistep | cosine | constant
    milestones: tuple[int, ...] = ()
    gamma: float = 0.5
    eta_min: float = 0.0
    warmup: int = 0
    loss: str = "l1"
    grad_clip: float | None = None
    ema_decay: float = 0.0  # EMA of the weights (KAIR's E_decay, BasicSR's ema_decay); 0: none


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


def presets_dir() -> Path:
    """The shipped presets: inside the installed package, or `presets/` in a checkout."""
    packaged = Path(str(importlib.resources.files("mcir_cli"))) / "presets"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[1] / "presets"


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


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
        spn = {("lam" if k == "lambda" else k): _tuple(v) for k, v in data.get("spn", {}).items()}
        weights = data.get("weights", {})
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
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise McirError(f"malformed preset ({type(exc).__name__}: {exc})", path) from None
    _check_preset(preset)
    return preset


OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("multistep", "cosine", "constant")
REC_LOSS_NAMES = ("l1", "charbonnier", "mse", "psnr", "ssim")
EMBEDDINGS = ("vgg16", "vgg19", "pixel")


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
        ("recipe.loss", r.loss, REC_LOSS_NAMES),
        ("spn.embedding", preset.spn.embedding, EMBEDDINGS),
    ):
        if value not in allowed:
            raise bad(f"{field_name} {value!r} is not one of {', '.join(allowed)}")
    if len(r.betas) != 2:
        raise bad(f"recipe.betas needs two values, got {list(r.betas)}")
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
    return [load_preset_file(p) for p in sorted(presets_dir().glob("*.toml"))]


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
                    raise McirError(
                        f"preset {name!r} comes in several scales ({have}): add --scale"
                    )
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


# --------------------------------------------------------------------------- networks


class Restorer(nn.Module):
    """A network seen through [0, 1] images: normalises inputs, de-normalises outputs."""

    def __init__(self, net: nn.Module, io: IOSpec) -> None:
        super().__init__()
        self.net = net
        self.io = io
        lo, hi = io.in_range
        mean = torch.tensor(io.mean or (0.0,)).view(1, -1, 1, 1)
        std = torch.tensor(io.std or (1.0,)).view(1, -1, 1, 1)
        # native = (x * (hi - lo) + lo - mean) / std  ==  x * a + b
        self.register_buffer("in_a", (hi - lo) / std, persistent=False)
        self.register_buffer("in_b", (lo - mean) / std, persistent=False)
        olo, ohi = io.out_range
        self.out_lo, self.out_span = olo, ohi - olo

    def forward(self, x: Tensor) -> Tensor:
        if self.io.is_identity:
            return self.net(x)
        if self.io.in_range != (0.0, 1.0) or self.io.mean is not None:
            x = x * self.in_a + self.in_b  # a new tensor: the caller's input is safe
        elif self.io.clone_input:
            x = x.clone()
        y = self.net(x)
        if self.io.out_range != (0.0, 1.0):
            y = (y - self.out_lo) / self.out_span
        return y


@dataclass
class LoadedModel:
    """What mcir knows about a model: the network and the facts needed to use it."""

    restorer: Restorer
    architecture: str
    scale: int
    in_channels: int
    out_channels: int
    min_size: int = 0
    multiple_of: int = 1
    square: bool = False
    supports_bf16: bool = True
    task: str | None = None
    checkpoint: Checkpoint | None = None
    preset: Preset | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    @property
    def net(self) -> nn.Module:
        return self.restorer.net

    def check_task(self, task: str | None) -> None:
        """Refuse a --task the model contradicts: an upscaling model is SR, and a
        preset's task is known (scoring conventions follow the task)."""
        if task is None:
            return
        if self.scale > 1 and task != "sr":
            raise McirError(f"--task {task} for an x{self.scale} super-resolution model; leave --task out")
        if self.scale == 1 and task == "sr":
            raise McirError(f"--task sr for a model that does not upscale ({self.label}, x1)")
        if self.task is not None and task != self.task:
            raise McirError(f"--task {task} for a {self.task} model ({self.label}); leave --task out")

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    @property
    def label(self) -> str:
        if self.checkpoint is not None and self.checkpoint.path is not None:
            return self.checkpoint.path.stem
        return self.preset.name if self.preset else self.architecture

    def file_state_dict(self) -> dict[str, Tensor]:
        """The network's weights under the input checkpoint's key names."""
        sd = self.net.state_dict()
        if self.checkpoint is None:
            return dict(sd)
        mapping = match_keys(sd, self.checkpoint.state_dict)
        if mapping is None:
            log.warning("could not map %s keys back to the checkpoint's naming", self.architecture)
            return dict(sd)
        return {mapping[k]: v for k, v in sd.items()}

    def fresh_network(self) -> nn.Module:
        """A newly initialised network of the same architecture (random weights)."""
        net = self.net
        hp = getattr(net, "hyperparameters", None) or self.hyperparameters
        if hp:
            try:
                return type(net)(**hp)
            except TypeError:
                pass
        fresh = copy.deepcopy(net)
        for module in fresh.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
        return fresh


def _io_for(net: nn.Module, architecture: str, preset: Preset | None) -> IOSpec:
    if preset is not None and preset.io is not None:
        return preset.io
    if architecture == "MixDehazeNet":  # spandrel maps the output but not the input
        return IOSpec(in_range=(-1.0, 1.0), out_range=(0.0, 1.0))
    if architecture == "RCAN":  # multiplies its input in place
        return IOSpec(clone_input=True)
    io_range = tuple(getattr(net, "io_range", (0.0, 1.0)))
    mean = getattr(net, "input_mean", None)
    std = getattr(net, "input_std", None)
    return IOSpec(
        in_range=io_range,
        out_range=io_range,
        mean=tuple(mean) if mean is not None else None,
        std=tuple(std) if std is not None else None,
    )


def _descriptor_from_state_dict(state_dict: Mapping[str, Tensor], where: Path | None):
    import spandrel

    from mcir_cli import archs

    archs.register()
    try:
        return spandrel.ModelLoader("cpu").load_from_state_dict(dict(state_dict))
    except spandrel.UnsupportedModelError:
        keys = ", ".join(list(state_dict)[:3])
        raise McirError(
            f"unknown architecture: spandrel and mcir's own architectures do not recognise "
            f"these weights (first keys: {keys}); `mcir models` lists what is supported",
            where,
        ) from None
    except (RuntimeError, KeyError, ValueError, AssertionError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise McirError(f"weights do not fit the detected architecture ({first})", where) from None


def _from_descriptor(desc, checkpoint: Checkpoint | None, preset: Preset | None) -> LoadedModel:
    net = desc.model
    arch = desc.architecture.id
    req = desc.size_requirements
    task = preset.task if preset else ("sr" if desc.scale > 1 else None)
    return LoadedModel(
        restorer=Restorer(net, _io_for(net, arch, preset)),
        architecture=arch,
        scale=int(desc.scale),
        in_channels=int(desc.input_channels),
        out_channels=int(desc.output_channels),
        min_size=int(req.minimum),
        multiple_of=int(req.multiple_of),
        square=bool(req.square),
        supports_bf16=bool(desc.supports_bfloat16),
        task=task,
        checkpoint=checkpoint,
        preset=preset,
        hyperparameters=dict(getattr(net, "hyperparameters", {}) or {}),
    )


def build_network(preset: Preset) -> nn.Module:
    """Build a preset's network from scratch (random initialisation)."""
    from mcir_cli import archs

    if preset.architecture in archs.BUILDERS:
        return archs.BUILDERS[preset.architecture](**preset.kwargs)
    try:
        module = importlib.import_module(f"spandrel.architectures.{preset.architecture}")
        cls = getattr(module, preset.architecture)
    except (ImportError, AttributeError):
        raise McirError(
            f"preset {preset.name}: unknown architecture {preset.architecture!r}", preset.path
        ) from None
    return cls(**preset.kwargs)


def from_preset(preset: Preset, seed: int = 0) -> LoadedModel:
    """A preset's model with fresh (seeded) weights, described through spandrel."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = build_network(preset)
    desc = _descriptor_from_state_dict(net.state_dict(), preset.path)
    desc.model.load_state_dict(net.state_dict(), strict=True)
    return _from_descriptor(desc, None, preset)


def resolve_weights(preset: Preset) -> Path | None:
    """Find a preset's pretrained file under the folders listed in $MCIR_WEIGHTS."""
    import os

    if not preset.weights_file:
        return None
    for root in filter(None, os.environ.get("MCIR_WEIGHTS", "").split(os.pathsep)):
        candidate = Path(root) / preset.weights_file
        if candidate.is_file():
            return candidate
    return None


def load_checkpoint_model(
    path: str | Path, preset: Preset | None = None, scale: int | None = None
) -> LoadedModel:
    """Load a checkpoint with its architecture detected from the file alone."""
    ckpt = read_checkpoint(path)
    desc = _descriptor_from_state_dict(ckpt.state_dict, ckpt.path)
    if ckpt.is_ema:
        log.info("%s: using the EMA weights (%s)", ckpt.path, ckpt.wrapper_keys[-1])
    if preset is not None and desc.architecture.id != preset.architecture:
        raise McirError(
            f"checkpoint is {desc.architecture.id}, but preset {preset.name} is "
            f"{preset.architecture}",
            ckpt.path,
        )
    if scale is not None and int(desc.scale) != scale:
        raise McirError(f"checkpoint is x{desc.scale}, but --scale {scale} was given", ckpt.path)
    return _from_descriptor(desc, ckpt, preset)


def load_model(
    checkpoint: str | Path | None = None,
    model: str | None = None,
    scale: int | None = None,
    allow_random: bool = False,
    seed: int = 0,
) -> LoadedModel:
    """`--checkpoint FILE` and/or `--model PRESET`: the one way every command gets a model."""
    preset = get_preset(model, scale) if model else None
    if checkpoint is None and preset is not None:
        checkpoint = resolve_weights(preset)
        if checkpoint is None and not allow_random:
            where = f" (download: {preset.weights_url})" if preset.weights_url else ""
            raise McirError(
                f"preset {preset.name} needs pretrained weights: pass --checkpoint FILE"
                f"{where}, or put {preset.weights_file or 'the file'} under a folder "
                "listed in $MCIR_WEIGHTS"
            )
    if checkpoint is not None:
        return load_checkpoint_model(checkpoint, preset, scale)
    if preset is None:
        raise McirError("give a model: --checkpoint FILE or --model PRESET")
    log.warning("preset %s: no pretrained weights, starting from a random initialisation", preset.name)
    return from_preset(preset, seed)


def count_parameters(net: nn.Module, include_buffers: bool = False) -> int:
    if include_buffers:
        return sum(t.numel() for t in net.state_dict().values() if t.is_floating_point())
    return sum(p.numel() for p in net.parameters())


ModelFactory = Callable[[], nn.Module]
