"""The retraining loop: L = L_rec − λ·L_neg with EMA negatives, observable and resumable.

A run lives in one folder (`--output RUN`): `config.json` (everything needed to rerun),
`log.jsonl` (every logged step and event), `state.pt` (full resume state), and the
retrained weights (`model.safetensors`, plus `model.pth` in the input checkpoint's own
wrapper and key layout). The input checkpoint is only ever read.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import signal
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mcir_cli import __version__
from mcir_cli.checkpoint import save_like, save_safetensors
from mcir_cli.data import PatchDataset, discover_all
from mcir_cli.errors import McirError
from mcir_cli.fsutil import atomic_write, atomic_write_text, sha256_file, writable_target
from mcir_cli.inference import autocast, resolve_device
from mcir_cli.models import LoadedModel, check_noise_sigma, check_task_name, load_model

log = logging.getLogger("mcir")

NEGATIVE_INITS = ("mix", "copy", "random", "frozen", "none")
STATE_FILE = "state.pt"


@dataclass
class TrainConfig:
    """Everything a run depends on; saved as config.json and reused by --resume."""

    data: list[str]
    output: str
    checkpoint: str | None = None
    model: str | None = None
    scale: int | None = None
    task: str | None = None
    val: tuple[str, ...] | str | None = None  # validation folders (a str in older config.json)
    iters: int = 1000
    batch: int = 16
    patch: int = 48
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
    ema_decay: float = 0.0  # > 0: an EMA of the weights is validated and written (KAIR E_decay)
    loss: str = "l1"
    lam: float = 1e-4
    lam_auto: bool = False
    ratio_band: tuple[float, float] = (0.01, 0.10)
    negative_steps: tuple[int, ...] = (100, 500, 1000, 2000)
    negative_weight: float = 0.1
    negative_init: str = "mix"
    negative_mix: float = 0.1
    batched_negatives: str = "auto"
    embedding: str = "vgg16"
    embedding_weights: str | None = None
    embedding_init: str = "pretrained"
    seed: int = 0
    device: str = "auto"
    amp: str | None = None  # auto (None): target fp32, negatives + embedding bf16 on CUDA (speed.py)
    train_bn: bool = False
    noise_sigma: float | None = None
    val_every: int = 0  # 0: only at the end
    save_every: int = 0  # 0: only at the end
    log_every: int = 1
    workers: int = 0
    cache: str = "auto"
    collapse_factor: float = 10.0
    max_collapses: int = 3
    tensorboard: bool = False
    allow_random_init: bool = False
    recipe_note: str = ""  # where lr/schedule/iters came from (make_config), logged at start
    tile: int | None = None
    compile: str = "auto"  # auto: CUDA runs long enough to repay compile time (speed.py)
    compile_backend: str = "inductor"  # API only: "aot_eager" checks tracing without codegen
    channels_last: str = "auto"  # auto: CUDA, convolution-dominated networks (speed.py)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: tuple(v) if isinstance(v, list) and k != "data" else v for k, v in data.items() if k in names}
        return cls(**kwargs)


def validate_config(cfg: TrainConfig) -> None:
    """Bad flags are one-line errors before anything is read or written."""
    if cfg.iters < 1:
        raise McirError(f"--iters must be at least 1 (got {cfg.iters})")
    if cfg.batch < 1 or cfg.patch < 1:
        raise McirError("--batch and --patch must be positive")
    if not math.isfinite(cfg.lam) or cfg.lam < 0:
        raise McirError(f"--lambda must be a number >= 0 (got {cfg.lam}); the SPN term is subtracted already")
    if not math.isfinite(cfg.lr) or cfg.lr <= 0:
        raise McirError(f"--lr must be a positive number (got {cfg.lr})")
    if cfg.grad_clip is not None and not (math.isfinite(cfg.grad_clip) and cfg.grad_clip > 0):
        raise McirError(f"--grad-clip must be a positive number (got {cfg.grad_clip}); leave it out for no clipping")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise McirError(f"--ema-decay must be in [0, 1) (got {cfg.ema_decay}); 0 turns the EMA off")
    if not 0.0 <= cfg.negative_mix <= 1.0:
        raise McirError(f"--negative-mix must be in [0, 1] (got {cfg.negative_mix})")
    check_noise_sigma(cfg.noise_sigma)
    check_task_name(cfg.task)
    if not cfg.negative_steps or any(int(s) != s or s < 1 for s in cfg.negative_steps):
        raise McirError(f"--negative-steps must be positive integers (got {list(cfg.negative_steps)})")
    if not 0.0 <= cfg.negative_weight <= 1.0:
        raise McirError(f"--negative-weight must be in [0, 1] (got {cfg.negative_weight})")
    if cfg.negative_init not in NEGATIVE_INITS:
        raise McirError(f"--negative-init must be one of {', '.join(NEGATIVE_INITS)}")
    if cfg.schedule not in ("constant", "multistep", "cosine"):
        raise McirError("--schedule must be constant, multistep or cosine")
    if cfg.log_every < 1:
        raise McirError(f"--log-every must be at least 1 (got {cfg.log_every})")
    for flag, value in (("--val-every", cfg.val_every), ("--save-every", cfg.save_every), ("--workers", cfg.workers), ("--warmup", cfg.warmup)):
        if value < 0:
            raise McirError(f"{flag} must be >= 0 (got {value})")
    if len(cfg.ratio_band) != 2 or not 0 <= cfg.ratio_band[0] < cfg.ratio_band[1]:
        raise McirError(f"--ratio-band must be two numbers low,high with 0 <= low < high (got {cfg.ratio_band})")
    if cfg.tile is not None and cfg.tile < 8:
        raise McirError(f"--tile must be at least 8 pixels (got {cfg.tile})")
    if cfg.collapse_factor <= 1:
        raise McirError(f"--collapse-factor must be above 1 (got {cfg.collapse_factor})")
    if cfg.optimizer not in ("adam", "adamw"):
        raise McirError("--optimizer must be adam or adamw")
    for flag, value, allowed in (
        ("--compile", cfg.compile, ("auto", "on", "off")),
        ("--channels-last", cfg.channels_last, ("auto", "on", "off")),
        ("--batched-negatives", cfg.batched_negatives, ("auto", "on", "off")),
        ("--cache", cfg.cache, ("auto", "on", "off")),
        ("--embedding-init", cfg.embedding_init, ("pretrained", "random")),
        ("--amp", cfg.amp, (None, "auto", "bf16", "fp32", "none")),
    ):
        if value not in allowed:
            raise McirError(f"{flag} must be one of {', '.join(a for a in allowed if a)} (got {value!r})")


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
    from mcir_cli.models import Recipe, SPNSettings, get_preset

    preset = get_preset(model, scale) if model else None
    task = overrides.get("task") or (preset.task if preset else None)
    sr = (scale or (preset.scale if preset else 1)) > 1 or task in (None, "sr")
    recipe = preset.recipe if preset else Recipe(
        lr=1e-5, betas=(0.9, 0.99), batch=16, patch=48 if sr else 128, schedule="constant", loss="l1",
    )
    spn = preset.spn if preset else SPNSettings()
    base: dict[str, Any] = {
        "task": task, "iters": 1000, "batch": recipe.batch, "patch": recipe.patch,
        "optimizer": recipe.optimizer, "lr": recipe.lr, "betas": tuple(recipe.betas),
        "weight_decay": recipe.weight_decay, "schedule": recipe.schedule,
        "milestones": tuple(recipe.milestones), "gamma": recipe.gamma, "eta_min": recipe.eta_min,
        "warmup": recipe.warmup, "grad_clip": recipe.grad_clip, "loss": recipe.loss, "ema_decay": recipe.ema_decay,
        "lam": spn.lam, "negative_steps": tuple(spn.steps), "negative_weight": spn.weight,
        "negative_init": spn.negative_init, "negative_mix": spn.negative_mix, "embedding": spn.embedding,
    }
    note = "bare checkpoint: fine-tuning defaults (Adam, lr 1e-5 constant, L1)"
    if preset and overrides.get("allow_random_init"):
        base.update(iters=recipe.iterations)
        note = f"{preset.name}: the full from-scratch recipe ({recipe.iterations} steps)"
    elif preset:
        lr, why = fine_tune_lr(recipe)
        base.update(lr=lr, schedule="constant", milestones=(), warmup=0)
        note = f"{preset.name}: fine-tuning from pretrained weights at {why}, constant"
    if any(overrides.get(k) is not None for k in ("lr", "schedule", "iters", "warmup")):
        note += "; --lr/--schedule/--iters/--warmup as given"
    base["recipe_note"] = note
    base.update({k: v for k, v in overrides.items() if v is not None})
    # absolute paths: config.json must let a resume (or a reader) find them from any folder
    if base.get("val"):  # one folder or several
        vals = [base["val"]] if isinstance(base["val"], (str, Path)) else list(base["val"])
        base["val"] = tuple(_absolute(v) for v in vals)
    if base.get("embedding_weights"):
        base["embedding_weights"] = _absolute(base["embedding_weights"])
    return TrainConfig(
        data=[_absolute(d) for d in data], output=_absolute(output),
        checkpoint=_absolute(checkpoint) if checkpoint else None, model=model, scale=scale, **base,
    )


def _absolute(path: str | Path) -> str:
    """Absolute and normalised ("a/../b" -> "b"): the folder it was given from may be gone
    when the run is resumed."""
    return os.path.normpath(Path(path).expanduser().absolute())


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


def parse_steps(text: str) -> tuple[int, ...]:
    """'100,500,1000,2000' -> (100, 500, 1000, 2000), with a clear error otherwise."""
    try:
        steps = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise McirError(f"--negative-steps must be comma-separated positive integers (got {text!r})") from None
    if not steps or any(s < 1 for s in steps):
        raise McirError(f"--negative-steps must be comma-separated positive integers (got {text!r})")
    return steps


# --------------------------------------------------------------------------- pieces


def lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """Learning-rate multiplier per step: warm-up, then constant, multistep or cosine."""

    def factor(step: int) -> float:
        if cfg.warmup and step < cfg.warmup:
            return (step + 1) / cfg.warmup
        if cfg.schedule == "multistep":
            return cfg.gamma ** sum(step >= m for m in cfg.milestones)
        if cfg.schedule == "cosine":
            span = max(1, cfg.iters - cfg.warmup)
            t = min(1.0, (step - cfg.warmup) / span)
            floor = cfg.eta_min / cfg.lr if cfg.lr else 0.0
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        return 1.0

    return factor


def set_train_mode(net: nn.Module, train_bn: bool) -> None:
    """Train mode, but BatchNorm running statistics stay frozen unless asked otherwise:
    small patch batches would wreck the statistics a pretrained model was built with."""
    net.train()
    if not train_bn:
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def count_batchnorm(net: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


class RunLog:
    """log.jsonl (one JSON object a line, flushed) and optional TensorBoard."""

    def __init__(self, path: Path, tensorboard: bool = False, resumed_at: int | None = None) -> None:
        self.path = path
        self.fh = open(path, "a", encoding="utf-8")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # on resume, TensorBoard drops what was logged after the saved state (as
                # truncate_log does for log.jsonl), so the curves have no doubled steps
                purge = None if resumed_at is None else resumed_at + 1
                self.tb = SummaryWriter(str(path.parent / "tensorboard"), purge_step=purge)
            except ImportError:
                log.warning("--tensorboard: tensorboard is not installed (pip install tensorboard); logging to log.jsonl only")

    def write(self, record: dict[str, Any]) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        if self.tb is None:
            return
        event = record.get("event")
        if event is None:
            group, keys = "train", [k for k in record if k != "step"]
        elif event == "val":
            group, keys = "val", ["psnr", "ssim"]
        else:
            return
        for k in keys:
            v = record.get(k)
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(f"{group}/{k}", v, record["step"])
        self.tb.flush()

    def close(self) -> None:
        self.fh.close()
        if self.tb is not None:
            self.tb.close()


def truncate_log(path: Path, step: int) -> None:
    """On resume, drop lines logged after the saved state (they will be logged again)."""
    if not path.exists():
        return
    keep = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a killed process
            continue
        if record.get("step", 0) <= step:
            keep.append(line)
    if len(keep) < len(lines):  # only rewritten when something is dropped
        atomic_write_text(path, "".join(line + "\n" for line in keep))


class RankIndices(torch.utils.data.Sampler):
    """Sample indices of one rank, made lazily: for step k of `steps` (counted from the
    start of this process) the rank takes base + (k·W + rank)·B + j, j < B."""

    def __init__(self, base: int, steps: int, batch: int, world: int, rank: int) -> None:
        self.base, self.steps, self.batch, self.world, self.rank = base, steps, batch, world, rank

    def __len__(self) -> int:
        return self.steps * self.batch

    def __iter__(self) -> Iterator[int]:
        B, W = self.batch, self.world
        for k in range(self.steps):
            start = self.base + (k * W + self.rank) * B
            yield from range(start, start + B)


@dataclass
class StepStats:
    step: int
    l_rec: float
    l_neg: float
    ratio: float
    lam: float
    lr: float
    grad_norm: float
    it_s: float


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    stopped_early: str | None = None
    best_psnr: float | None = None
    best_step: int | None = None  # 0: no step beat the starting weights
    final_psnr: float | None = None
    collapses: int = 0
    outputs: dict[str, str] = field(default_factory=dict)
    mean_ratio: float | None = None  # mean contrast ratio λ·l_neg/l_rec over logged steps
    ratio_band: tuple[float, float] = (0.01, 0.10)
    stop_kind: str | None = None  # "signal" or "collapses" when the run stopped before --iters
    val_conventions: str | None = None  # how the validation PSNR was measured


# --------------------------------------------------------------------------- trainer


class Trainer:
    """Holds the model, negatives, SPN loss, optimizer and run folder of one run."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, on_step: Callable[[StepStats], None] | None = None, dist=None) -> None:
        from mcir_cli.distributed import DistContext

        validate_config(cfg)
        self.cfg = cfg
        self.dist = dist or DistContext.single()
        self.on_step = on_step
        self.run_dir = Path(cfg.output)
        self.device = self.dist.device if self.dist.world_size > 1 else resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)

        # model (the input checkpoint is only read)
        start = self._resume_source() if resume else cfg.checkpoint
        self.loaded: LoadedModel = load_model(start, cfg.model, cfg.scale, allow_random=cfg.allow_random_init, seed=cfg.seed)
        self.loaded.check_task(cfg.task)
        self.task = cfg.task or self.loaded.task or None
        out_patch = cfg.patch * self.loaded.scale
        if cfg.negative_init != "none" and cfg.embedding in ("vgg16", "vgg19") and out_patch < 16:
            raise McirError(f"--patch {cfg.patch} gives {out_patch} x {out_patch} outputs: too small for the "
                            "VGG embedding, whose third block needs at least 16 x 16 pixels")
        self.model = self.loaded.restorer.to(self.device)
        set_train_mode(self.model, cfg.train_bn)
        self.n_bn = count_batchnorm(self.model)

        # data
        datasets = discover_all(cfg.data, self.loaded.scale if self.loaded.scale > 1 else None, self.task)
        self.task = self.task or datasets[0].task
        for d in datasets:
            if d.scale != self.loaded.scale:
                raise McirError(f"the model is x{self.loaded.scale}, but the training data is x{d.scale}", d.root)
        world = self.dist.world_size
        self.patches = PatchDataset(
            datasets, cfg.patch, length=2**62, seed=cfg.seed, channels=self.loaded.in_channels,  # indices come from batches()
            noise_sigma=cfg.noise_sigma, cache=True if cfg.cache == "on" else (False if cfg.cache == "off" else "auto"),
        )
        vals = [cfg.val] if isinstance(cfg.val, str) else list(cfg.val or ())  # config.json of older runs: one path
        self.vals = discover_all(vals, self.loaded.scale if self.loaded.scale > 1 else None, self.task) if vals else []
        for v in self.vals:  # fail now, not after training
            if v.scale != self.loaded.scale:
                raise McirError(f"the model is x{self.loaded.scale}, but the validation data is x{v.scale}", v.root)

        # memory layout, decided on a real patch before the negatives copy the weights
        from mcir_cli.speed import channels_last_decision

        probe = cfg.channels_last == "auto" and self.device.type == "cuda"
        sample = self.patches[0][0].unsqueeze(0).to(self.device) if probe else None
        self.channels_last, self.layout_note = channels_last_decision(self.model, self.device, cfg.channels_last, sample)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

        # negatives and SPN loss
        from mcir_cli.losses import SPNLoss, make_embedding, make_rec_loss
        from mcir_cli.negatives import NegativeBank

        self.rec_loss = make_rec_loss(cfg.loss)
        self.bank: NegativeBank | None = None
        self.spn: SPNLoss | None = None
        self.embedding_description = "none (plain fine-tuning)"
        if cfg.negative_init != "none":
            fresh = self.loaded.fresh_network
            io = self.loaded.restorer.io

            def random_model() -> nn.Module:
                from mcir_cli.models import Restorer

                return Restorer(fresh(), io)

            self.bank = NegativeBank(
                self.model, cfg.negative_steps, cfg.negative_weight, cfg.negative_init, cfg.negative_mix,
                seed=cfg.seed, random_model=random_model,
                # vmap batches the N negatives into one launch: a GPU win; on CPU the
                # plain loop measured faster (benchmarks/negatives_vmap.py), so auto = loop
                batched={"auto": "auto" if self.device.type == "cuda" else False, "on": True, "off": False}[cfg.batched_negatives],
            ).to(self.device)
            embedding = make_embedding(cfg.embedding, cfg.embedding_weights, cfg.embedding_init, cfg.seed)
            # the embedding is a plain convolution stack: NHWC wherever the mode allows it
            if channels_last_decision(embedding, self.device, cfg.channels_last)[0]:
                embedding.to(memory_format=torch.channels_last)
            self.spn = SPNLoss(embedding).to(self.device)
            self.embedding_description = embedding.description

        # DDP wraps the target; the bank keeps pointing at the raw module's parameters
        self.ddp_model = self.dist.wrap(self.model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(cfg))
        from mcir_cli.speed import precision_decision

        self.amp_dtype, self.spn_dtype, self.precision_note = precision_decision(cfg.amp, self.device, self.loaded.supports_bf16)

        # the EMA of the weights that is validated and written (the original recipe's, e.g.
        # SwinIR's 0.999); the negatives follow the raw weights, as in the paper
        self.ema: dict[str, Tensor] | None = None
        if cfg.ema_decay > 0:
            self.ema = {k: p.detach().clone() for k, p in self.model.named_parameters() if p.is_floating_point()}
        self.step = 0
        self.compiled: bool | None = None  # decided below; a resume keeps the run's decision
        self.rollback: dict[str, Any] | None = None  # the collapse guard's latest snapshot
        self.rollback_prev: dict[str, Any] | None = None  # and the one before it
        self.step_base = 0  # step and sample index where this process started
        self.samples_base = 0
        self.lam = cfg.lam
        self.collapses = 0
        self.rec_history: deque[float] = deque(maxlen=100)
        self.best_psnr: float | None = None
        self.best_step: int | None = None
        self.ratio_sum, self.ratio_n = 0.0, 0  # the contrast ratio over every step of the run
        self.out_of_band = 0
        self._stop_signal: str | None = None

        if resume:
            self._load_state()
        elif self.dist.is_main:
            self._start_run_dir()
        self.dist.barrier()
        self._compile()
        if self.dist.is_main and not resume:
            self._warn_at_start()
        if self.dist.is_main:
            log.info("global batch %d = %d per rank x %d rank(s); %s; %s; %s", cfg.batch * world, cfg.batch, world,
                     self.precision_note, self.compile_note, self.layout_note)

    def _warn_at_start(self) -> None:
        """What makes a run not the method the user expects, said before it starts."""
        cfg = self.cfg
        if cfg.recipe_note:
            log.info("recipe: %s", cfg.recipe_note)
        if cfg.amp == "bf16" and self.device.type != "cuda":
            log.warning("--amp bf16 is a CUDA setting: this %s run is fp32", self.device.type)
        if self.ema is not None:
            horizon = 1.0 / (1.0 - cfg.ema_decay)
            log.info("EMA of the weights (decay %g): model.* and best.* hold the EMA, validation scores it",
                     cfg.ema_decay)
            if cfg.iters < horizon:
                log.warning("EMA decay %g averages over ~%.0f steps, more than this %d-step run: the written "
                            "weights stay close to the starting ones (--ema-decay 0 turns it off)",
                            cfg.ema_decay, horizon, cfg.iters)
        if self.bank is None:
            return
        if cfg.embedding_init == "random" and cfg.embedding != "pixel":
            log.warning("SPN embedding: %s", self.embedding_description)
        idle = [s for s in cfg.negative_steps if s > cfg.iters]
        if idle and self.bank.updates_enabled:
            log.warning(
                "negatives with update periods %s never update in a %d-step run (they stay at their "
                "initialisation); give --negative-steps below --iters for a short run",
                ",".join(map(str, idle)), cfg.iters,
            )

    def _compile(self) -> None:
        """torch.compile the target, the batched negatives and the embedding, or none.

        "auto" is decided once per run: a resume keeps the decision of the run's start (a
        flip would change the numerics mid-run and break bit-exact resume)."""
        from mcir_cli.speed import compile_decision, compile_training

        cfg = self.cfg
        mode = cfg.compile
        if mode == "auto" and self.compiled is not None:
            mode = "on" if self.compiled else "off"
            kept = True
        else:
            kept = False
        self.compiled, note = compile_decision(self.device, cfg.iters - self.step, mode)
        if kept:  # not the user's flag: the decision --compile auto made when the run began
            note = f"torch.compile {'on' if self.compiled else 'off'}: --compile auto's decision, kept from the run's start"
        self.compile_note = note
        if not self.compiled:
            return
        self.ddp_model = compile_training(self.ddp_model, self.bank, self.spn, cfg.compile_backend)

    # ------------------------------------------------------------------ run folder
    def _resume_source(self) -> str | None:
        """The file that tells a resumed run its architecture (its weights come from
        state.pt): the starting checkpoint if it is still there -- also one a preset found
        through $MCIR_WEIGHTS, recorded in config.json -- else the run's own model.pth,
        written in the same layout."""
        info = {}
        with contextlib.suppress(OSError, ValueError):
            info = json.loads((self.run_dir / "config.json").read_text())
        recorded = (info.get("model") or {}).get("checkpoint_path")
        for candidate in (self.cfg.checkpoint, recorded):
            if candidate and Path(candidate).is_file():
                return str(candidate)
        own = self.run_dir / "model.pth"
        if own.is_file():
            if self.dist.is_main:
                log.info("the starting checkpoint %s is gone: the architecture comes from %s, the weights "
                         "from state.pt", self.cfg.checkpoint or recorded, own)
            return str(own)
        return self.cfg.checkpoint

    def _start_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=False)
        source = self.loaded.checkpoint.path if self.loaded.checkpoint is not None else None
        info = {
            "config": self.cfg.to_json(),
            "mcir_version": __version__,
            "torch_version": torch.__version__,
            "model": {
                "architecture": self.loaded.architecture,
                "scale": self.loaded.scale,
                # where the starting weights were found (also via a preset and $MCIR_WEIGHTS)
                "checkpoint_path": str(source.absolute()) if source else None,
                "checkpoint_sha256": sha256_file(source) if source else None,
                "params": self.loaded.num_params,
                "io": self.loaded.restorer.io.as_dict(),
            },
            "embedding": self.embedding_description,
            "task": self.task,
            "batchnorm": {"layers": self.n_bn, "running_stats": "updated" if self.cfg.train_bn else "frozen"},
            "global_batch": self.cfg.batch * self.dist.world_size,
            "world_size": self.dist.world_size,
        }
        atomic_write_text(self.run_dir / "config.json", json.dumps(info, indent=2) + "\n")

    def state_dict(self) -> dict[str, Any]:
        state = {
            "step": self.step,
            "model": self.model.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "lam": self.lam,
            "collapses": self.collapses,
            "rec_history": list(self.rec_history),
            "best_psnr": self.best_psnr,
            "best_step": self.best_step,
            "ratio_sum": self.ratio_sum,
            "ratio_n": self.ratio_n,
            "out_of_band": self.out_of_band,
            "rng_cpu": torch.get_rng_state(),
            "world_size": self.dist.world_size,
            "samples_seen": self.samples_base + (self.step - self.step_base) * self.cfg.batch * self.dist.world_size,
            "compiled": self.compiled,
        }
        if torch.cuda.is_available() and self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        if self.bank is not None:
            state["negatives"] = self.bank.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.model.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.lam = float(state["lam"])
        self.collapses = int(state["collapses"])
        self.rec_history = deque(state["rec_history"], maxlen=100)
        self.best_psnr = state["best_psnr"]
        self.best_step = state.get("best_step")
        self.ratio_sum, self.ratio_n = float(state.get("ratio_sum", 0.0)), int(state.get("ratio_n", 0))
        self.out_of_band = int(state.get("out_of_band", 0))
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        if self.bank is not None:
            self.bank.load_state_dict(state["negatives"])
        if self.ema is not None:
            with torch.no_grad():
                for k, v in self.ema.items():
                    v.copy_(state["ema"][k])

    def _load_state(self) -> None:
        path = self.run_dir / STATE_FILE
        if not path.exists():
            raise McirError(f"no {STATE_FILE} to resume from", self.run_dir)
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - truncated (killed while copying), not a torch file
            raise McirError(f"{STATE_FILE} is damaged ({type(exc).__name__}); resume needs the last "
                            "saved state, or start a new run from model.pth", path) from None
        self.load_state_dict(state)
        self.step_base = self.step
        self.samples_base = int(state.get("samples_seen", self.step * self.cfg.batch * self.dist.world_size))
        self.compiled = state.get("compiled")
        # the rollback point of the interrupted run, so a collapse soon after a resume
        # rolls back exactly where the uninterrupted run would have
        self.rollback = self._cpu_copy(state["rollback"]) if "rollback" in state else None
        if state.get("world_size", 1) != self.dist.world_size and self.dist.is_main:
            log.info("resuming a run of %d ranks on %d: data position re-derived from the step", state.get("world_size", 1), self.dist.world_size)
        if self.cfg.iters < self.step:
            raise McirError(f"--iters {self.cfg.iters} is below the {self.step} steps this run has done", self.run_dir)
        if self.dist.is_main:
            self._reconcile_best()
            truncate_log(self.run_dir / "log.jsonl", self.step)
            self._record_resume()

    def _reconcile_best(self) -> None:
        """The best validation so far, from val.json (the record best.* follows), checked
        before any training: a damaged val.json is found now, not after the run."""
        path = self.run_dir / "val.json"
        if not path.exists():
            return
        try:
            history = [h for h in json.loads(path.read_text())["history"] if int(h["step"]) <= self.step]
            best = max(history, key=lambda h: float(h["psnr"])) if history else None
        except (ValueError, KeyError, TypeError) as exc:
            raise McirError(f"val.json is damaged ({type(exc).__name__}); move it aside to resume "
                            "(best.* is then chosen anew)", path) from None
        if best is not None:
            self.best_psnr, self.best_step = float(best["psnr"]), int(best["step"])

    def _record_resume(self) -> None:
        """config.json keeps what a resume changed (--iters and the RESUME_SETTINGS), each
        change in a history, so a later plain --resume continues with it."""
        path = self.run_dir / "config.json"
        info = json.loads(path.read_text())
        changed = False
        for key in ("iters", *RESUME_SETTINGS):
            new, old = getattr(self.cfg, key), info["config"].get(key)
            if old != new:
                info.setdefault("resumes", []).append({"at_step": self.step, key: new, "was": old})
                info["config"][key] = new
                changed = True
        if changed:
            atomic_write_text(path, json.dumps(info, indent=2) + "\n")

    def save_state(self) -> None:
        if not self.dist.is_main:
            return
        state = self.state_dict()
        if self.rollback is not None and self.rollback["step"] != self.step:
            state["rollback"] = self.rollback  # only between snapshot steps (a stop, an odd --save-every)
        atomic_write(self.run_dir / STATE_FILE, lambda tmp: torch.save(state, tmp))

    def write_weights(self, stem: str = "model") -> dict[str, str]:
        """model.safetensors (+metadata) and model.pth in the input's own layout (the EMA
        weights when the run keeps an EMA)."""
        if not self.dist.is_main:
            return {}
        with self._evaluated_weights():
            sd = {k: v.detach().clone() for k, v in self.loaded.file_state_dict().items()}
        meta = {
            "architecture": self.loaded.architecture,
            "scale": str(self.loaded.scale),
            "preset": self.loaded.preset.name if self.loaded.preset else "",
            "mcir_version": __version__,
            "training": {
                "steps": self.step,
                "lambda": self.lam,
                "negative_init": self.cfg.negative_init,
                "negative_steps": list(self.cfg.negative_steps),
                "embedding": self.embedding_description,
                "source_checkpoint": self.cfg.checkpoint,
                "best_val_psnr": self.best_psnr,
                "weights": f"EMA (decay {self.cfg.ema_decay:g})" if self.ema is not None else "trained",
            },
        }
        st, pth = self.run_dir / f"{stem}.safetensors", self.run_dir / f"{stem}.pth"
        save_safetensors(sd, st, meta)
        if self.loaded.checkpoint is not None:
            save_like(self.loaded.checkpoint, sd, pth)
        else:
            atomic_write(pth, lambda tmp: torch.save({k: v.detach().cpu().contiguous() for k, v in sd.items()}, tmp))
        return {st.name: str(st), pth.name: str(pth)}

    # ------------------------------------------------------------------ loop pieces
    def batches(self, start_step: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches from `start_step` on. Sample indices depend only on the samples seen
        before and (step, rank), so a resumed run, on any number of ranks, continues the
        same stream of patches where it stopped."""
        B, W, r = self.cfg.batch, self.dist.world_size, self.dist.rank
        base = self.samples_base + (start_step - self.step_base) * W * B
        indices = RankIndices(base, max(0, self.cfg.iters - start_step), B, W, r)
        loader = torch.utils.data.DataLoader(
            self.patches,
            batch_size=B,
            sampler=indices,
            num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.cfg.workers > 0,
            drop_last=True,
            generator=torch.Generator(),  # keeps the global RNG (drop-path) untouched
        )
        yield from loader

    @staticmethod
    def _cpu_copy(obj: Any) -> Any:
        if isinstance(obj, Tensor):
            return obj.detach().to("cpu", copy=True)
        if isinstance(obj, dict):
            return {k: Trainer._cpu_copy(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(Trainer._cpu_copy(v) for v in obj)
        return obj

    def _snapshot(self) -> dict[str, Any]:
        """The last good in-memory state, for the collapse guard (CPU copies)."""
        return self._cpu_copy(self.state_dict())

    def _rollback_target(self, bad_step: int) -> dict[str, Any]:
        """The newest snapshot whose weights have produced a healthy step: a snapshot
        taken right before the bad step holds the weights that produced the bad loss, so
        the one before it is used (rolling back onto collapsed weights replays the same
        collapse). Right after a resume at a snapshot step there is no older one."""
        if self.rollback["step"] < bad_step - 1 or self.rollback_prev is None:
            return self.rollback
        return self.rollback_prev

    def _restore_snapshot(self, snap: dict[str, Any]) -> None:
        lam, collapses = self.lam, self.collapses
        # a copy: Optimizer.load_state_dict keeps the given tensors, and later steps would
        # otherwise change the snapshot that a second rollback needs
        self.load_state_dict(copy.deepcopy(snap))
        self.lam, self.collapses = lam, collapses

    def _is_collapse(self, loss: float, l_rec: float, grad_norm: float = 0.0) -> str | None:
        if not math.isfinite(loss):
            return "non-finite loss"
        if not math.isfinite(grad_norm):
            return "non-finite gradient"
        if len(self.rec_history) >= 10:
            median = statistics.median(self.rec_history)
            if l_rec > self.cfg.collapse_factor * median:
                return f"l_rec {l_rec:.4g} > {self.cfg.collapse_factor:g} x running median {median:.4g}"
        return None

    def train_step(self, lq: Tensor, gt: Tensor) -> tuple[float, float, float, float]:
        """One optimizer step. Returns (loss, l_rec, l_neg, grad_norm) as floats."""
        lq = lq.to(self.device, non_blocking=True)
        gt = gt.to(self.device, non_blocking=True)
        if self.channels_last:
            lq = lq.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, "bf16" if self.amp_dtype is not None else None):
            out = self.ddp_model(lq)
            l_rec = self.rec_loss(out.float(), gt)
        if self.bank is not None and self.spn is not None:
            neg = self.bank(lq, self.spn_dtype)
            l_neg = self.spn(out.float(), neg.float(), self.spn_dtype)
            loss = l_rec - self.lam * l_neg
        else:
            l_neg = torch.zeros((), device=self.device)
            loss = l_rec
        loss.backward()
        clip = self.cfg.grad_clip if self.cfg.grad_clip else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        values = torch.stack([loss.detach(), l_rec.detach(), l_neg.detach().float(), grad_norm.detach().float()]).tolist()
        if math.isfinite(values[0]) and math.isfinite(values[3]):
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self._update_ema()
        return values[0], values[1], values[2], values[3]

    def _adapt_lambda(self, ratio: float) -> None:
        lo, hi = self.cfg.ratio_band
        if ratio < lo:
            self.lam *= 1.05
        elif ratio > hi:
            self.lam /= 1.05

    def _watch_ratio(self, ratio: float, logger: RunLog | None) -> None:
        lo, hi = self.cfg.ratio_band
        self.out_of_band = self.out_of_band + 1 if not lo <= ratio <= hi else 0
        patience = max(50, self.cfg.iters // 10)
        if self.out_of_band == patience and self.dist.is_main:
            msg = (f"contrast ratio λ·l_neg/l_rec = {ratio:.2%} has stayed outside "
                   f"{lo:.0%}–{hi:.0%} for {patience} steps (the authors advise 1–10 %); "
                   "consider --lambda auto or another --lambda")
            log.warning(msg)
            if logger:
                logger.write({"event": "ratio_warning", "step": self.step, "ratio": ratio, "message": msg})

    @torch.no_grad()
    def _update_ema(self) -> None:
        params = dict(self.model.named_parameters())
        keys = list(self.ema)
        torch._foreach_lerp_([self.ema[k] for k in keys], [params[k].detach() for k in keys], 1.0 - self.cfg.ema_decay)

    @contextlib.contextmanager
    def _evaluated_weights(self) -> Iterator[None]:
        """The weights that are validated and written: the EMA when there is one (put in
        place for the duration, the raw weights restored after)."""
        if self.ema is None:
            yield
            return
        params = dict(self.model.named_parameters())
        raw = {k: params[k].detach().clone() for k in self.ema}
        with torch.no_grad():
            for k, v in self.ema.items():
                params[k].copy_(v)
        try:
            yield
        finally:
            with torch.no_grad():
                for k, v in raw.items():
                    params[k].copy_(v)

    def validate(self) -> tuple[float, float, Any, dict[str, dict[str, float]]] | None:
        """(PSNR, SSIM, conventions, per dataset): with several --val folders, the mean
        of the dataset means (how papers average benchmarks) decides best.*."""
        if not self.vals or not self.dist.is_main:
            return None
        with self._evaluated_weights():
            return self._validate()

    def _validate(self) -> tuple[float, float, Any, dict[str, dict[str, float]]]:
        from mcir_cli.evaluate import conventions_for, score_dataset

        conv = conventions_for(self.task, self.loaded.scale)
        per: dict[str, dict[str, float]] = {}
        try:
            for v in self.vals:
                res = score_dataset(self.loaded, v, conv, device=self.device, tile=self.cfg.tile, noise_sigma=self.cfg.noise_sigma)
                per[v.name] = {"psnr": res["psnr"], "ssim": res["ssim"]}
        except torch.cuda.OutOfMemoryError:
            raise McirError("validation ran out of CUDA memory on whole images: give --tile N "
                            f"(the weights of step {self.step} are saved in {self.run_dir})") from None
        set_train_mode(self.model, self.cfg.train_bn)
        mean = {k: sum(d[k] for d in per.values()) / len(per) for k in ("psnr", "ssim")}
        return mean["psnr"], mean["ssim"], conv, per

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        cfg = self.cfg
        main = self.dist.is_main
        resumed_at = self.step if self.step > 0 else None
        logger = RunLog(self.run_dir / "log.jsonl", cfg.tensorboard, resumed_at) if main else None
        result = TrainResult(self.run_dir, self.step, ratio_band=tuple(cfg.ratio_band))
        if self.step >= cfg.iters:  # a resume of a finished run: say so, change nothing
            if main:
                log.info("the run is already at step %d of %d: nothing to train (--iters N goes further)",
                         self.step, cfg.iters)
                logger.close()
            result.steps, result.best_psnr, result.best_step = self.step, self.best_psnr, self.best_step
            return result
        if main and self.step == 0:
            logger.write({"event": "start", "step": 0, "embedding": self.embedding_description,
                          "batchnorm_layers": self.n_bn, "batchnorm_running_stats": "updated" if cfg.train_bn else "frozen",
                          "negatives": cfg.negative_init, "global_batch": cfg.batch * self.dist.world_size,
                          "recipe": cfg.recipe_note, "compile": self.compile_note, "layout": self.layout_note,
                          "ema_decay": cfg.ema_decay,
                          "amp": self.precision_note})
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass
        if self.rollback is None:
            self.rollback = self._snapshot()
        snapshot_every = max(1, min(100, cfg.iters // 20 or 1))
        t_last, steps_since = time.perf_counter(), 0
        try:
            if self.step == 0 and cfg.val:
                # the starting weights are the first candidate: best.* is never worse than
                # the checkpoint the run began with, and val.json starts with its score
                self._validate_and_log(logger, result)
            data = self.batches(self.step)
            while self.step < cfg.iters:
                try:
                    lq, gt = next(data)
                except StopIteration:
                    break
                loss, l_rec, l_neg, gnorm = self.train_step(lq, gt)
                # every rank decides on the same (rank-averaged) numbers, or DDP ranks part ways
                loss, l_rec, l_neg = self.dist.mean([loss, l_rec, l_neg])
                reason = self._is_collapse(loss, l_rec, gnorm)
                if reason is not None:
                    self.collapses += 1
                    bad_step = self.step + 1
                    target = self._rollback_target(bad_step)
                    self._restore_snapshot(target)
                    self.rollback, self.rollback_prev = target, None  # newer snapshots are suspect
                    self.lam /= 2
                    event = {"event": "collapse", "step": bad_step, "reason": reason, "rolled_back_to": self.step,
                             "lambda": self.lam, "count": self.collapses}
                    if main:
                        logger.write(event)
                        log.warning("collapse at step %d (%s): rolled back to step %d, λ halved to %.3g",
                                    bad_step, reason, self.step, self.lam)
                    if self.collapses >= cfg.max_collapses:
                        result.stop_kind = "collapses"
                        result.stopped_early = (f"stopped after {self.collapses} collapses (last: {reason}); "
                                                f"the weights of step {self.step} were saved")
                        break
                    data = self.batches(self.step)
                    continue
                self.step += 1
                steps_since += 1
                self.rec_history.append(l_rec)
                ratio = self.lam * l_neg / l_rec if l_rec > 0 else 0.0
                if self.bank is not None:
                    self.ratio_sum, self.ratio_n = self.ratio_sum + ratio, self.ratio_n + 1
                    updated = self.bank.update(self.step, self.model)
                    if main:
                        for i in updated:
                            logger.write({"event": "negative_update", "step": self.step, "index": i,
                                          "period": cfg.negative_steps[i]})
                    self._watch_ratio(ratio, logger)
                    if cfg.lam_auto:
                        self._adapt_lambda(ratio)
                if self.step % snapshot_every == 0:
                    self.rollback_prev, self.rollback = self.rollback, self._snapshot()
                if main and (self.step % cfg.log_every == 0 or self.step == cfg.iters):
                    now = time.perf_counter()
                    it_s = steps_since / max(now - t_last, 1e-9)
                    t_last, steps_since = now, 0
                    stats = StepStats(self.step, l_rec, l_neg, ratio, self.lam, self.scheduler.get_last_lr()[0], gnorm, it_s)
                    logger.write(dataclasses.asdict(stats))
                    if self.on_step:
                        self.on_step(stats)
                checks = self.dist.check_sync(self, self.step)
                if checks is not None and main:
                    logger.write({"event": "sync_check", "step": self.step, "ranks": len(checks), "checksums": checks})
                if cfg.val_every and self.step % cfg.val_every == 0 and self.step < cfg.iters:
                    self._validate_and_log(logger, result)
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save_state()
                if self.dist.any(self._stop_signal is not None):
                    self._stop_signal = self._stop_signal or "signal on another rank"
                    result.stop_kind = "signal"
                    result.stopped_early = f"{self._stop_signal} at step {self.step}: state saved, continue with --resume {self.run_dir}"
                    break
            checks = self.dist.check_sync(self, self.step, force=True)
            if checks is not None and main:
                logger.write({"event": "sync_check", "step": self.step, "ranks": len(checks), "checksums": checks})
            # weights first: a validation that fails must not cost the training
            self.save_state()
            result.outputs.update(self.write_weights("model"))
            result.final_psnr = self._validate_and_log(logger, result)
            if result.final_psnr is not None:
                self.save_state()  # again: the state must know this validation's best
            result.steps = self.step
            result.best_psnr = self.best_psnr
            result.best_step = self.best_step
            result.collapses = self.collapses
            result.mean_ratio = self.ratio_sum / self.ratio_n if self.ratio_n else None  # the whole run, resumes included
            if main:
                logger.write({"event": "end", "step": self.step, "stopped_early": result.stopped_early,
                              "best_psnr": self.best_psnr, "collapses": self.collapses,
                              "mean_ratio": result.mean_ratio})
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if logger:
                logger.close()
        return result

    def _validate_and_log(self, logger: RunLog | None, result: TrainResult) -> float | None:
        out = self.validate()
        if out is None:
            return None
        p, s, conv, per = out
        result.val_conventions = conv.describe() + (f"; mean of {', '.join(per)}" if len(per) > 1 else "")
        if logger:
            logger.write({"event": "val", "step": self.step, "psnr": p, "ssim": s, "datasets": per,
                          "conventions": conv.describe()})
        if self.best_psnr is None or p > self.best_psnr:
            self.best_psnr, self.best_step = p, self.step
            result.outputs.update(self.write_weights("best"))
        val_path = self.run_dir / "val.json"
        if val_path.exists():
            history = json.loads(val_path.read_text())
        else:
            history = {"conventions": {**conv.as_dict(), "description": conv.describe()},
                       "data": {v.name: str(v.root) for v in self.vals}, "tile": self.cfg.tile,
                       "psnr_is": "the mean of the datasets' means" if len(self.vals) > 1 else "the dataset's mean",
                       "history": []}
            if self.cfg.noise_sigma is not None:  # validation noise: seed 0, as `mcir evaluate`
                history["noise"] = {"sigma": self.cfg.noise_sigma, "seed": 0}
        entry = {"step": self.step, "psnr": p, "ssim": s, "datasets": per}
        history["history"] = [h for h in history["history"] if h["step"] < self.step] + [entry]
        history["best"] = max(history["history"], key=lambda h: h["psnr"])
        atomic_write_text(val_path, json.dumps(history, indent=2) + "\n")
        return p

    def _on_signal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self._stop_signal is not None:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_signal = name
        log.warning("%s received: saving at the end of this step (press again to abort)", name)


def retrain(cfg: TrainConfig, on_step: Callable[[StepStats], None] | None = None, resume: bool = False, dist=None) -> TrainResult:
    """Retrain a model with MCIR (or plainly with negative_init='none')."""
    out = Path(cfg.output)
    if not resume and out.exists():
        raise McirError("output folder exists; choose a new --output (or --resume it)", out)
    writable_target(out, "run folder")
    main = dist is None or dist.is_main
    try:
        with _resume_lock(out, resume and main):
            trainer = Trainer(cfg, resume=resume, on_step=on_step, dist=dist)
            return trainer.run()
    except torch.cuda.OutOfMemoryError:
        _discard_unstarted(out, resume)
        raise McirError(f"CUDA out of memory at batch {cfg.batch} x patch {cfg.patch}: try a smaller --batch or --patch") from None
    except BaseException:
        _discard_unstarted(out, resume)
        raise


@contextlib.contextmanager
def _resume_lock(run_dir: Path, active: bool) -> Iterator[None]:
    """One process at a time in a run folder: a second `--resume` of a folder that is
    training would interleave two runs' states. A lock on the folder itself (POSIX flock
    on its descriptor: config.json is replaced on resume, the folder is not; the kernel
    drops the lock when the process dies, so a killed run leaves no stale lock). A new
    run needs none: its folder is created exclusively."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        active = False
    if not active or not run_dir.is_dir():
        yield
        return
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise McirError("another mcir process is training in this run folder; wait for it or stop it", run_dir) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _discard_unstarted(run_dir: Path, resume: bool) -> None:
    """A new run that failed before its first step leaves no folder behind (so the same
    --output works again). Only a folder this run created, without state.pt and without
    a logged step (a log of a run that got going is kept for diagnosis)."""
    import shutil

    if resume or not run_dir.is_dir() or (run_dir / STATE_FILE).exists():
        return
    log_file = run_dir / "log.jsonl"
    if log_file.exists() and '"l_rec"' in log_file.read_text(encoding="utf-8", errors="replace"):
        return
    shutil.rmtree(run_dir, ignore_errors=True)


# settings a resume may change: they decide when to log, save and validate and how data
# is loaded, never a number the training computes (patches depend on their index only)
RESUME_SETTINGS = ("workers", "save_every", "log_every", "val_every", "tensorboard")


def load_run_config(run_dir: str | Path, iters: int | None = None, **settings: Any) -> TrainConfig:
    """A run's configuration from its config.json, with --iters and RESUME_SETTINGS
    changed where given (anything else would change the run: refused by the CLI)."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.exists():
        raise McirError("not a run folder (no config.json)", run_dir)
    try:
        cfg = TrainConfig.from_json(json.loads(path.read_text())["config"])
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise McirError(f"config.json is damaged ({type(exc).__name__}: {str(exc)[:100]}); "
                        "the run cannot be resumed from it", path) from None
    cfg.output = str(run_dir)
    if iters is not None:
        cfg.iters = iters
    for key, value in settings.items():
        if key not in RESUME_SETTINGS:
            raise ValueError(f"a resume cannot change {key}")
        if value is not None:
            setattr(cfg, key, value)
    return cfg
