"""Models: presets (`presets/*.toml`), loading checkpoints, and the `LoadedModel` descriptor.

Architectures come from spandrel where it has them and from `mcir_cli.models.archs` otherwise;
both are detected from a bare state dict by spandrel's registry. Everything outside this
module sees a model through `Restorer`, which maps [0, 1] images to the network's own
I/O convention ([0, 255], [-1, 1], mean/std) and back.
"""


import copy
import importlib
import importlib.resources
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mcir_cli.errors import McirError
from mcir_cli.models.checkpoint import Checkpoint, match_keys, read_checkpoint

log = logging.getLogger("mcir")

from mcir_cli.models.presets import IOSpec, Preset, get_preset

# --------------------------------------------------------------------------- labels

_GENERIC_STEMS = {"model", "best", "latest", "last", "final", "checkpoint", "net_g_latest"}
# stems that name only a scale or a step (DCTLSA's `X4.pt`, BasicSR's `net_g_5000.pth`)
_UNINFORMATIVE = re.compile(r"[xX]?\d+[xX]?|net_g_\d+|(model|checkpoint|ckpt|epoch|iter)[_-]?\d+", re.I)
_CONTAINERS = {"models", "weights", "checkpoints", "ckpt", "ckpts"}  # BasicSR: experiments/<name>/models/


def checkpoint_label(path: str | Path) -> str:
    """A display label for a checkpoint: its stem when that says something, else with the
    folder that does (DCTLSA/X4.pt -> "DCTLSA/X4", experiments/EDSR_Mx4/models/
    net_g_5000.pth -> "EDSR_Mx4/net_g_5000", RUN/model.safetensors -> "RUN", RUN/best.pth
    -> "RUN/best")."""
    path = Path(path)
    stem = path.stem
    if stem.lower() not in _GENERIC_STEMS and not _UNINFORMATIVE.fullmatch(stem):
        return stem
    folder = path.resolve().parent
    if folder.name.lower() in _CONTAINERS and folder.parent.name:
        folder = folder.parent
    if not folder.name:
        return stem
    return folder.name if stem.lower() == "model" else f"{folder.name}/{stem}"


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

    def forward(self, x: Tensor, side: bool = False) -> Tensor | tuple[Tensor, Tensor | None]:
        """The restored image; with `side`, (image, the network's side output or None):
        FBCNN's predicted quality factor, which its training loss needs."""
        if self.io.is_identity:
            y, extra = _split(self.net(x))
            return (y, extra) if side else y
        if self.io.in_range != (0.0, 1.0) or self.io.mean is not None:
            x = x * self.in_a + self.in_b  # a new tensor: the caller's input is safe
        elif self.io.clone_input:
            x = x.clone()
        y, extra = _split(self.net(x))
        if self.io.out_range != (0.0, 1.0):
            y = (y - self.out_lo) / self.out_span
        return (y, extra) if side else y


def _split(out: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, Tensor | None]:
    """(restored image, side output) of a network: FBCNN returns the image and its
    predicted quality factor (spandrel's call_fn keeps `model(x)[0]`); others, the image."""
    if isinstance(out, (tuple, list)):
        return out[0], (out[1] if len(out) > 1 else None)
    return out, None


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
    tags: tuple[str, ...] = ()  # the detector's: variant name, width, depth, layout

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

    def implied_task(self, task: str | None, noise_sigma: float | None, jpeg_quality: object) -> str | None:
        """The task: --task, else the model's, else what the flags say of an x1 model of
        unknown task (DnCNN, FBCNN): --noise-sigma denoising, --jpeg-quality JPEG; None
        leaves it to the data's layout."""
        if task or self.task:
            return task or self.task
        if self.scale == 1 and noise_sigma is not None:
            return "denoise"
        if self.scale == 1 and jpeg_quality:
            return "jpeg"
        return None

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    @property
    def label(self) -> str:
        if self.checkpoint is not None and self.checkpoint.path is not None:
            return checkpoint_label(self.checkpoint.path)
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

    from mcir_cli.models import archs  # lazy: spandrel (slow import) only when a network is built

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
        tags=tuple(getattr(desc, "tags", ()) or ()),
    )


def build_network(preset: Preset) -> nn.Module:
    """Build a preset's network from scratch (random initialisation)."""
    from mcir_cli.models import archs  # lazy: spandrel (slow import) only when a network is built

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


def settle_res_scale(loaded: LoadedModel, res_scale: float | None) -> None:
    """EDSR's res_scale is in no file's weights: `--res-scale`, else what mcir wrote in
    its safetensors metadata, else the guess from the width, said as a warning."""
    net = loaded.net
    if not hasattr(net, "set_res_scale"):
        if res_scale is not None:
            raise McirError(f"--res-scale applies to EDSR only; this model is {loaded.architecture}")
        return
    meta = loaded.checkpoint.metadata if loaded.checkpoint is not None else {}
    if res_scale is None and "res_scale" in meta:
        try:
            res_scale = float(meta["res_scale"])
        except ValueError:
            raise McirError(f"the metadata's res_scale is not a number ({meta['res_scale'][:40]!r})",
                            loaded.checkpoint.path if loaded.checkpoint else None) from None
    if res_scale is not None:
        if not (res_scale > 0 and res_scale <= 10):
            raise McirError(f"--res-scale must be in (0, 10] (got {res_scale})")
        net.set_res_scale(res_scale)
        loaded.hyperparameters["res_scale"] = float(res_scale)
        return
    guess, why = net.res_scale_guess()
    where = loaded.checkpoint.path if loaded.checkpoint is not None else loaded.label
    log.warning("%s: EDSR's res_scale is not stored in the weights; guessed res_scale %g from the width (%s); "
                "give --res-scale if it was trained with another", where, guess, why)


def load_checkpoint_model(
    path: str | Path, preset: Preset | None = None, scale: int | None = None, res_scale: float | None = None
) -> LoadedModel:
    """Load a checkpoint with its architecture detected from the file alone (`res_scale`:
    EDSR's, which no file stores; see `settle_res_scale`)."""
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
    if preset is not None and int(desc.scale) != preset.scale:  # its recipe and paper rows are another model's
        raise McirError(f"checkpoint is x{desc.scale}, but preset {preset.name} is x{preset.scale}", ckpt.path)
    if scale is not None and int(desc.scale) != scale:
        raise McirError(f"checkpoint is x{desc.scale}, but --scale {scale} was given", ckpt.path)
    loaded = _from_descriptor(desc, ckpt, preset)
    settle_res_scale(loaded, res_scale)
    return loaded


def load_model(
    checkpoint: str | Path | None = None,
    model: str | None = None,
    scale: int | None = None,
    allow_random: bool = False,
    seed: int = 0,
    res_scale: float | None = None,
) -> LoadedModel:
    """`--checkpoint FILE` and/or `--model PRESET`: the one way every command gets a model.
    `allow_random` (from scratch) means random weights whenever no checkpoint is named,
    even when $MCIR_WEIGHTS holds the preset's pretrained file; `res_scale`: `--res-scale`,
    EDSR checkpoints only."""
    preset = get_preset(model, scale) if model else None
    if checkpoint is None and preset is not None and not allow_random:
        checkpoint = resolve_weights(preset)
        if checkpoint is None:
            where = f" (download: {preset.weights_url})" if preset.weights_url else ""
            raise McirError(
                f"preset {preset.name} needs pretrained weights: pass --checkpoint FILE"
                f"{where}, or put {preset.weights_file or 'the file'} under a folder "
                "listed in $MCIR_WEIGHTS"
            )
    if checkpoint is not None:
        return load_checkpoint_model(checkpoint, preset, scale, res_scale)
    if preset is None:
        raise McirError("give a model: --checkpoint FILE or --model PRESET")
    log.warning("preset %s: no pretrained weights, starting from a random initialisation", preset.name)
    loaded = from_preset(preset, seed)
    if res_scale is not None:
        settle_res_scale(loaded, res_scale)
    return loaded


def count_parameters(net: nn.Module, include_buffers: bool = False) -> int:
    if include_buffers:
        return sum(t.numel() for t in net.state_dict().values() if t.is_floating_point())
    return sum(p.numel() for p in net.parameters())


ModelFactory = Callable[[], nn.Module]
