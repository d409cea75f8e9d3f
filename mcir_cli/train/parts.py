"""Building what one run trains with, as a plain value: the target model, its data, the
EMA negatives and SPN loss, the optimizer and schedule, the EMA of the weights, and the
speed decisions (precision, memory layout, compile)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mcir_cli.data.datasets import Dataset, PatchDataset, discover_all, overlapping
from mcir_cli.data.jpeg import QUALITY_ARCHITECTURES, benchmark_qualities, parse_quality, with_qualities
from mcir_cli.data.limits import check_batch_memory, check_image_sizes
from mcir_cli.data.realesrgan.pipeline import Degrader
from mcir_cli.data.realesrgan.settings import RealESRGANSettings, settings_from_dict
from mcir_cli.errors import McirError
from mcir_cli.evaluate.benchmarks import conventions_for
from mcir_cli.losses.embeddings import make_embedding
from mcir_cli.losses.reconstruction import make_rec_loss
from mcir_cli.losses.spn import SPNLoss
from mcir_cli.models.inference import fixed_input_size
from mcir_cli.models.loading import LoadedModel, Restorer, load_model
from mcir_cli.negatives.bank import NegativeBank
from mcir_cli.train.config import TrainConfig
from mcir_cli.train.ema import ema_init
from mcir_cli.train.speed import (
    channels_last_decision,
    compile_decision,
    compile_training,
    precision_decision,
    true_fp32,
)

log = logging.getLogger("mcir")


@dataclass
class Parts:
    """Everything a step needs, built once per process (a resume rebuilds it and loads
    the saved state into it)."""

    loaded: LoadedModel
    model: Restorer  # the target; model.net's parameter names match the checkpoint's
    wrapped: nn.Module  # what the step calls: `model`, DDP-wrapped and/or compiled
    task: str | None
    device: torch.device
    patches: PatchDataset
    vals: list[Dataset]
    rec_loss: Callable[[Tensor, Tensor], Tensor]
    optimizer: torch.optim.Optimizer  # its lr is set before each step (schedule.learning_rate)
    bank: NegativeBank | None = None
    spn: SPNLoss | None = None
    degrader: Degrader | None = None  # --degradation: makes each batch's inputs on the device
    ema: dict[str, Tensor] | None = None
    amp_dtype: torch.dtype | None = None  # the target's autocast dtype (None: fp32)
    spn_dtype: torch.dtype | None = None  # the negatives' and embedding's
    channels_last: bool = False
    n_bn: int = 0
    qf_loss: float = 0.0  # FBCNN's quality-factor loss weight (step._reconstruction)
    notes: dict[str, str] = field(default_factory=dict)  # embedding, precision, layout, compile

    def state_dict(self) -> dict[str, Any]:
        """What training changes in the parts: weights, optimizer, negatives, the EMA of
        the weights and the RNG (state.pt's keys of these)."""
        state: dict[str, Any] = {"model": self.model.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                                 "rng_cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        if self.bank is not None:
            state["negatives"] = self.bank.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load state.pt's keys of the parts (a state of the LambdaLR era also holds a
        "scheduler": the lr is now a function of the step, so it is not needed)."""
        self.model.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_cpu"])
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"], self.device)
        if self.bank is not None:
            self.bank.load_state_dict(state["negatives"])
        if self.ema is not None:
            with torch.no_grad():
                for k, v in self.ema.items():
                    v.copy_(state["ema"][k])


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


def _model(cfg: TrainConfig, start: str | None, device: torch.device) -> tuple[LoadedModel, str | None]:
    loaded = load_model(start, cfg.model, cfg.scale, allow_random=cfg.allow_random_init, seed=cfg.seed,
                        res_scale=cfg.res_scale)
    loaded.check_task(cfg.task)
    out_patch = cfg.patch * loaded.scale
    if cfg.negative_init != "none" and cfg.embedding in ("vgg16", "vgg19") and out_patch < 16:
        raise McirError(f"--patch {cfg.patch} gives {out_patch} x {out_patch} outputs: too small for the "
                        "VGG embedding, whose third block needs at least 16 x 16 pixels")
    fixed = fixed_input_size(loaded.restorer)
    if fixed and cfg.patch != fixed:
        raise McirError(f"{loaded.architecture} takes {fixed} x {fixed} inputs only: give --patch {fixed}")
    loaded.restorer.to(device)
    set_train_mode(loaded.restorer, cfg.train_bn)
    return loaded, cfg.task or loaded.task or None


def _data(cfg: TrainConfig, loaded: LoadedModel, task: str | None) -> tuple[PatchDataset, list[Dataset], str | None]:
    scale = loaded.scale if loaded.scale > 1 else None
    task = loaded.implied_task(task, cfg.noise_sigma, cfg.jpeg_quality)
    datasets = discover_all(cfg.data, scale, task)
    task = task or datasets[0].task
    for d in datasets:
        if d.scale != loaded.scale:
            raise McirError(f"the model is x{loaded.scale}, but the training data is x{d.scale}", d.root)
    patches = PatchDataset(
        datasets, cfg.patch, length=2**62, seed=cfg.seed, channels=loaded.in_channels,  # indices come from the loop
        noise_sigma=cfg.noise_sigma, cache={"on": True, "off": False}.get(cfg.cache, "auto"),
        jpeg_quality=parse_quality(cfg.jpeg_quality) if cfg.jpeg_quality else None,
        quality_target=_quality_loss(cfg, loaded, task) > 0,
        degradation=degradation_settings(cfg),
    )
    # after the patch check (no image large enough), before any work: the batch must fit
    check_batch_memory(cfg.batch, cfg.patch, loaded.scale, loaded.in_channels, next(loaded.restorer.parameters()).device)
    vals = [cfg.val] if isinstance(cfg.val, str) else list(cfg.val or ())  # config.json of older runs: one path
    for train, val in overlapping([cfg.data] if isinstance(cfg.data, str) else list(cfg.data), vals):
        log.warning("--val %s overlaps --data %s: validation on training images says nothing about "
                    "held-out ones", val, train)
    val_sets = discover_all(vals, scale, task) if vals else []
    if cfg.jpeg_quality:  # clean validation images at the quality (a range: its low end)
        val_sets = with_qualities(val_sets, benchmark_qualities(cfg.jpeg_quality))
    for v in val_sets:  # fail now, not after training
        if v.scale != loaded.scale:
            raise McirError(f"the model is x{loaded.scale}, but the validation data is x{v.scale}", v.root)
    if val_sets:
        check_image_sizes(val_sets, conventions_for(task, loaded.scale))
    return patches, val_sets, task


def _quality_loss(cfg: TrainConfig, loaded: LoadedModel, task: str | None) -> float:
    """The weight of FBCNN's quality-factor loss for this run: the recipe's for a JPEG
    model that predicts a quality (FBCNN), else 0 (a note says it is left out)."""
    if not cfg.qf_loss:
        return 0.0
    if task == "jpeg" and loaded.architecture in QUALITY_ARCHITECTURES:
        return cfg.qf_loss
    log.warning("qf_loss %g left out: %s predicts no JPEG quality factor", cfg.qf_loss, loaded.architecture)
    return 0.0


def degradation_settings(cfg: TrainConfig) -> RealESRGANSettings | None:
    """The run's on-the-fly degradation, from config.json's complete settings."""
    return settings_from_dict(cfg.degradation_settings) if cfg.degradation else None


def first_input(patches: PatchDataset, degrader: Degrader | None, device: torch.device) -> Tensor:
    """The input of the run's first sample, as a batch of one on `device`."""
    if degrader is None:
        return patches[0][0].unsqueeze(0).to(device)
    draws, hr = torch.utils.data.default_collate([patches[0]])
    return degrader(draws, hr)[0]


def _negatives(cfg: TrainConfig, loaded: LoadedModel, device: torch.device) -> tuple[NegativeBank, SPNLoss, str]:
    fresh, io = loaded.fresh_network, loaded.restorer.io
    bank = NegativeBank(
        loaded.restorer, cfg.negative_steps, cfg.negative_weight, cfg.negative_init, cfg.negative_mix,
        seed=cfg.seed, random_model=lambda: Restorer(fresh(), io),
        # vmap batches the N negatives into one launch: a GPU win; on CPU the plain loop
        # measured faster (benchmarks/negatives_vmap.py), so auto = loop there
        batched={"auto": "auto" if device.type == "cuda" else False, "on": True, "off": False}[cfg.batched_negatives],
    ).to(device)
    embedding = make_embedding(cfg.embedding, cfg.embedding_weights, cfg.embedding_init, cfg.seed)
    if channels_last_decision(embedding, device, cfg.channels_last)[0]:  # a plain conv stack
        embedding.to(memory_format=torch.channels_last)
    return bank, SPNLoss(embedding).to(device), embedding.description


def build_parts(cfg: TrainConfig, start: str | None, device: torch.device, dist: Any) -> Parts:
    """The parts of a run, in the order data flows: model, data, layout, negatives and SPN,
    optimizer and schedule, precision, EMA of the weights. `start` is the file the
    architecture (and, for a new run, the weights) comes from."""
    true_fp32(device)
    torch.manual_seed(cfg.seed)
    loaded, task = _model(cfg, start, device)
    model = loaded.restorer
    patches, vals, task = _data(cfg, loaded, task)
    degrader = Degrader(patches.degradation, loaded.scale, cfg.patch, device) if patches.degradation else None
    # memory layout, decided on a real patch before the negatives copy the weights
    probe = cfg.channels_last == "auto" and device.type == "cuda"
    sample = first_input(patches, degrader, device) if probe else None
    channels_last, layout_note = channels_last_decision(model, device, cfg.channels_last, sample)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    bank, spn, embedding_note = None, None, "none (plain fine-tuning)"
    if cfg.negative_init != "none":
        bank, spn, embedding_note = _negatives(cfg, loaded, device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    amp_dtype, spn_dtype, precision_note = precision_decision(cfg.amp, device, loaded.supports_bf16)
    return Parts(
        loaded=loaded, model=model, wrapped=dist.wrap(model), task=task, device=device, patches=patches,
        vals=vals, rec_loss=make_rec_loss(cfg.loss), optimizer=optimizer, bank=bank,
        spn=spn, degrader=degrader, ema=ema_init(model) if cfg.ema_decay > 0 else None, amp_dtype=amp_dtype, spn_dtype=spn_dtype,
        channels_last=channels_last, n_bn=count_batchnorm(model), qf_loss=_quality_loss(cfg, loaded, task),
        notes={"embedding": embedding_note, "precision": precision_note, "layout": layout_note},
    )


def compile_parts(parts: Parts, cfg: TrainConfig, steps_left: int, kept: bool | None) -> bool:
    """torch.compile the target, the batched negatives and the embedding, or none.

    "auto" is decided once per run: a resume passes the decision of the run's start as
    `kept` (a flip would change the numerics mid-run and break bit-exact resume)."""
    mode = cfg.compile
    if mode == "auto" and kept is not None:
        mode = "on" if kept else "off"
    compiled, note = compile_decision(parts.device, steps_left, mode)
    if cfg.compile == "auto" and kept is not None:
        note = f"torch.compile {'on' if compiled else 'off'}: --compile auto's decision, kept from the run's start"
    parts.notes["compile"] = note
    if compiled:
        parts.wrapped = compile_training(parts.wrapped, parts.bank, parts.spn, cfg.compile_backend)
    return compiled
